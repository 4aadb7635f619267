"""The paper's theory on a user's own model and data (Sections 2-4).

* `bottleneck_condition`: Section 3.2's M >= sum_{i=0}^{L-1} K_i, stage by stage.
* `assumption4`: the numerical rank of [W_0 ... W_{L-1}] from the actual weights.

How a multi-stage image network maps onto the single-stage theory
-----------------------------------------------------------------
The paper's ResNEst is one stage: x_0 = W_0 v_0 with v_0 = x, then
x_i = x_{i-1} + W_i v_i, eq. (1), all in one residual space R^M. A CIFAR ResNet has
stages; each stage s is read as a ResNEst of its own:

* stage 0: v_0 is the input image (K_0 = its channels) and W_0 the expansion (the
  3x3 stem convolution); the blocks of stage 0 add W_i v_i with identity shortcuts.
* stage s > 0: its first block's projection shortcut, a 1x1 convolution of stride 2
  applied to the *pre-activated* stage input ReLU(BN(x_prev)), plays W_0 (an M_s x
  M_{s-1} matrix per pixel), and v_0 is that pre-activated input sampled at the
  stride-2 positions the shortcut reads (K_0 = M_{s-1}). This v_0 is a nonlinear
  function of the image, so the stage is a ResNEst on a learned input.
* Within a stage the inverse problem of Assumption 4 is over v_0 and the stage's
  blocks but its last one (the sum's upper limit L-1): for the final stage exactly
  the paper's condition, for an earlier stage the condition of the network
  truncated after that stage with a linear predictor on its x (Corollary 1's
  truncated networks).

What is exact and what is not: everything the paper proves about (P_phi) (eq. 3,
Proposition 2, Theorem 1, Theorem 2) holds exactly for the final stage, with phi
holding every weight before it, because the paper allows any feature-finding
network. Corollary 2 and Remark 2 (b) ("no worse than the best linear predictor of
the input") hold for the final stage's v_0, the pre-activated stage input, not for
the image, when there are several stages; the earlier stages' conditions are not
needed by any of the paper's statements about the network's output, and are
reported because they are the same statements for the truncated networks.

Necessary or sufficient
-----------------------
Assumption 4 says [W_0 ... W_{L-1}] (M x sum K_i per pixel) has full column rank.
M >= sum K_i is therefore *necessary* for Assumption 4 (Section 3.2: "to
necessarily satisfy"); it is not sufficient in the mathematical sense (W_2 = W_0
violates Assumption 4 at any width). The paper calls it sufficient in the
practical sense that, when it holds, full column rank holds for almost every
weight setting, as observed after random initialization and training.
`bottleneck_condition` checks the necessary counting condition from the layer
widths; `assumption4` checks the rank from the actual weights.
"""
import dataclasses
import math
import re

import numpy as np

_FEATURES = re.compile(r"block(\d+)_features$")


@dataclasses.dataclass(frozen=True)
class StageCondition:
    """Section 3.2's bottleneck condition on one stage (one residual space R^M).

    width: M. features: K_0..K_{n-1} of the stage's inverse problem (K_0 = what plays
    v_0: the input's channels or N_in in stage 0, the previous stage's width after).
    total: their sum. margin: M - total. required_width: the smallest M that
    satisfies it (= total). blocks: the block indices i of K_1.. (network numbering).
    """

    stage: int
    width: int
    features: tuple
    total: int
    holds: bool
    margin: int
    required_width: int
    blocks: tuple = ()


@dataclasses.dataclass(frozen=True)
class BottleneckCondition:
    """The bottleneck condition of every stage; ``bool(result)`` is whether all hold.

    holds: every stage holds. margin: the smallest M - sum K_i over the stages
    (negative: some stage violates it). required_width: per stage, the smallest M
    that satisfies it (the other stages as they are).
    """

    stages: tuple
    holds: bool = dataclasses.field(init=False)
    margin: int = dataclasses.field(init=False)
    required_width: tuple = dataclasses.field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "holds", all(s.holds for s in self.stages))
        object.__setattr__(self, "margin", min(s.margin for s in self.stages))
        object.__setattr__(self, "required_width", tuple(s.required_width for s in self.stages))

    def __bool__(self):
        return self.holds


def _stage_condition(stage, width, k0, block_features):
    """A StageCondition from M, K_0 and the (i, K_i) of the blocks in the inverse problem."""
    features = (k0,) + tuple(k for _, k in block_features)
    total = sum(features)
    return StageCondition(stage, width, features, total, width >= total, width - total, total,
                          tuple(i for i, _ in block_features))


def _no_width_condition(what):
    return ValueError(
        f"{what} is a DenseNet-family model: a DenseNEst needs no width condition (Proposition 3: any "
        "DenseNEst is no worse than the best linear predictor), and it is a wide ResNEst that satisfies "
        "the bottleneck condition and Assumption 4 by construction (Proposition 4; nestzoo.densenest_to_resnest)"
    )


def _spec_stages(spec, input_shape):
    """(stage, M, K_0, [(i, K_i)] of the inverse problem) of a ResNet spec."""
    from nestzoo import specs

    if isinstance(spec, (specs.DenseNetSpec, specs.VectorDenseNetSpec)):
        raise _no_width_condition(type(spec).__name__)
    if isinstance(spec, specs.VectorResNetSpec):
        if input_shape is None:
            raise ValueError("a VectorResNetSpec needs input_shape=(N_in,) (or N_in): K_0 = N_in")
        k0 = input_shape if isinstance(input_shape, int) else input_shape[-1]
        return [(0, spec.width, k0, [(i, spec.features) for i in range(1, spec.blocks)])]
    if not isinstance(spec, specs.ResNetSpec):
        raise ValueError(f"expected a nestzoo model or a ResNetSpec/VectorResNetSpec, got {type(spec).__name__}")
    k0 = 3 if input_shape is None else input_shape if isinstance(input_shape, int) else input_shape[-1]
    stages, first = [], 1
    for stage, (n, width, features) in enumerate(zip(spec.blocks, spec.width, spec.features)):
        stages.append((stage, width, k0, [(i, features) for i in range(first, first + n - 1)]))
        first, k0 = first + n, width
    return stages


def model_stages(model):
    """The stages of a nestzoo ResNet-family model read from its layers (their actual widths).

    Returns a list of dicts: stage, width M, the layer that plays W_0 (``expansion``
    or ``block{i}_shortcut``), K_0, the stage's blocks (i, K_i) in the inverse problem
    (all but its last block, or all blocks i < L of an A-ResNEst, whose W_L is
    deleted), and the stage's last block.
    """
    from nestzoo.heads import variant_of

    family_variant = variant_of(model)
    if family_variant is None:
        raise ValueError(f"model {model.name!r} is not a nestzoo model: it has no 'expansion' layer and no "
                         "'block{i}_features' taps (build one with nestzoo.ResNEst and friends)")
    if family_variant[0] == "densenet":
        raise _no_width_condition(f"model {model.name!r}")
    names = {layer.name for layer in model.layers}
    L = max(int(m.group(1)) for m in map(_FEATURES.match, names) if m)
    channels = lambda name: int(model.get_layer(name).output.shape[-1])  # noqa: E731
    expansion = model.get_layer("expansion")
    stages = [dict(stage=0, width=channels("expansion"), w0="expansion",
                   k0=int(expansion.input.shape[-1]), blocks=[])]
    for i in range(1, L + 1):
        if f"block{i}_shortcut" in names:
            shortcut = model.get_layer(f"block{i}_shortcut")
            stages.append(dict(stage=len(stages), width=channels(f"block{i}_shortcut"), w0=f"block{i}_shortcut",
                               k0=int(shortcut.input.shape[-1]), blocks=[]))
        elif f"block{i}_x" not in names and i > 1 and _spatial(model, i) != _spatial(model, i - 1):
            break  # an A-ResNEst's deleted W_L alone in a new stage: that stage has no residual space
        stages[-1]["blocks"].append((i, channels(f"block{i}_features")))
    for s in stages:
        last = s["blocks"][-1][0] if s["blocks"] else None
        s["last"] = last
        s["blocks"] = [(i, k) for i, k in s["blocks"] if i != last and i < L]
    return stages


def _spatial(model, i):
    return tuple(model.get_layer(f"block{i}_features").output.shape[1:-1])


def bottleneck_condition(model_or_spec, input_shape=None):
    """Section 3.2's bottleneck condition M >= sum_{i=0}^{L-1} K_i, for every stage.

    model_or_spec: a nestzoo ResNet-family ``keras.Model`` (any variant; its actual
    layer widths are read), or a ``ResNetSpec``/``VectorResNetSpec``, with
    `input_shape` giving N_in (required for a vector spec) or the image channels
    (default 3): a tuple whose last entry is used, or an int.

    Per stage (see the module docstring for the mapping of a multi-stage network):
    M, K_0..K_{n-1}, their sum, holds, margin M - sum and the smallest M that
    satisfies it. The condition is *necessary* for Assumption 4 (a counting
    argument), and sufficient only in the paper's practical sense (full column rank
    for almost every weight setting); `assumption4` checks the actual weights.
    DenseNet-family models and specs raise ValueError: Proposition 3 needs no width
    condition.
    """
    if hasattr(model_or_spec, "layers") and hasattr(model_or_spec, "get_layer"):
        if input_shape is not None:
            raise ValueError("input_shape is for specs; a model's own input gives K_0")
        stages = [(s["stage"], s["width"], s["k0"], s["blocks"]) for s in model_stages(model_or_spec)]
    else:
        stages = _spec_stages(model_or_spec, input_shape)
    return BottleneckCondition(tuple(_stage_condition(*s) for s in stages))


@dataclasses.dataclass(frozen=True)
class StageRank:
    """Assumption 4 on one stage: the numerical rank of [W_0 ... W_{n-1}].

    grid: the spatial grid of the operator whose rank was computed: "vector" (the
    matrices themselves), "per pixel" (all maps 1x1: one M x sum K matrix), or
    (h, w) (a 3x3 map: the zero-padded convolution operator on that grid).
    rows/columns: the operator's shape. smallest_singular_value: its columns'
    smallest singular value (0 when rows < columns). tolerance: singular values at
    or below it count as zero. holds: rank == columns.
    """

    stage: int
    rank: int
    rows: int
    columns: int
    smallest_singular_value: float
    tolerance: float
    grid: object
    holds: bool


@dataclasses.dataclass(frozen=True)
class Assumption4:
    """Assumption 4 on every stage; ``bool(result)`` is whether all hold.

    rank, columns, smallest_singular_value and tolerance are the final stage's, the
    one whose x_{L-1} Theorem 1 inverts (module docstring).
    """

    stages: tuple
    holds: bool = dataclasses.field(init=False)
    rank: int = dataclasses.field(init=False)
    columns: int = dataclasses.field(init=False)
    smallest_singular_value: float = dataclasses.field(init=False)
    tolerance: float = dataclasses.field(init=False)

    def __post_init__(self):
        final = self.stages[-1]
        object.__setattr__(self, "holds", all(s.holds for s in self.stages))
        for name in ("rank", "columns", "smallest_singular_value", "tolerance"):
            object.__setattr__(self, name, getattr(final, name))

    def __bool__(self):
        return self.holds


def _kernel(layer):
    """The weights of a linear map as (kh, kw, K_in, M): a Dense kernel is a 1x1 one."""
    kernel = np.asarray(layer.get_weights()[0], dtype=np.float64)
    return kernel[None, None] if kernel.ndim == 2 else kernel


def conv_operator(kernel, grid):
    """The matrix of a stride-1 zero-padded ("same") convolution on an h x w grid, eq. (1)'s W_i.

    kernel: (k, k, K, M) as Keras stores it (cross-correlation). Rows are indexed
    (pixel, output channel), columns (pixel, input channel), pixels row-major, so
    the operator applied to v.reshape(-1) is the convolution's output.reshape(-1).
    """
    k, h, w = kernel.shape[0], *grid
    r = (k - 1) // 2
    operator = 0
    for a in range(k):
        for b in range(k):
            shift = np.kron(np.eye(h, k=a - r), np.eye(w, k=b - r))  # output (p, q) reads (p+a-r, q+b-r)
            operator = operator + np.kron(shift, kernel[a, b].T)
    return operator


def _rank(stage, matrix, grid, tol):
    """StageRank of `matrix`: numpy's SVD, and numpy's default tolerance for float32 weights."""
    s = np.linalg.svd(matrix, compute_uv=False)
    rows, columns = matrix.shape
    tolerance = float(s.max(initial=0.0) * max(rows, columns) * np.finfo(np.float32).eps) if tol is None else tol
    rank = int(np.sum(s > tolerance))
    smallest = float(s[columns - 1]) if rows >= columns else 0.0
    return StageRank(stage, rank, rows, columns, smallest, tolerance, grid, rank == columns)


def assumption4(model, tol=None, max_columns=2048):
    """Assumption 4: x_{L-1} = sum_{i<L} W_i v_i has a unique solution, i.e. [W_0 ... W_{L-1}]
    has full column rank, from the model's actual weights (proof of Theorem 1, eq. 28).

    Per stage (module docstring: v_0 and W_0 of a stage). Vector family: the rank of
    the M x sum K_i matrix, exact. Image networks whose maps of the stage are all 1x1
    (pointwise blocks' W_i, projection shortcuts): the per-pixel M x sum K_i matrix,
    exact because a 1x1 convolution is that matrix at every pixel. A stage with a 3x3
    map (the stem W_0, basic blocks' W_i): the rank of the actual zero-padded
    convolution operator on the stage's own grid (the exact statement at the model's
    resolution) while it has at most `max_columns` columns; beyond that, on the
    largest n x n grid within the budget (n >= 3, so the grid has corner, edge and
    interior pixels, each of which a 3x3 kernel treats differently). The smaller grid
    is a proxy: the counting condition is the same on every grid (hw M rows, hw sum K
    columns), and the operator is block-banded Toeplitz, whose singular values
    depend on the grid size only through its border rows. `grid` says which was used.

    tol: singular values at or below it count as zero; default numpy's matrix_rank
    rule for float32 weights, sigma_max * max(shape) * eps(float32).
    """
    stages = []
    for s in model_stages(model):
        maps = [(s["w0"], s["k0"])] + [(f"block{i}_W", k) for i, k in s["blocks"]]
        kernels = [_kernel(model.get_layer(name)) for name, _ in maps]
        if len(model.input.shape) == 2:
            stages.append(_rank(s["stage"], np.concatenate([k[0, 0].T for k in kernels], axis=1), "vector", tol))
            continue
        if all(k.shape[0] == 1 for k in kernels):
            stages.append(_rank(s["stage"], np.concatenate([k[0, 0].T for k in kernels], axis=1), "per pixel", tol))
            continue
        h, w = model.get_layer(s["w0"]).output.shape[1:3]
        total = sum(k for _, k in maps)
        if h * w * total > max_columns:
            n = max(3, math.isqrt(max_columns // total))
            h, w = min(h, n), min(w, n)
        operator = np.concatenate([conv_operator(k, (h, w)) for k in kernels], axis=1)
        stages.append(_rank(s["stage"], operator, (h, w), tol))
    return Assumption4(tuple(stages))

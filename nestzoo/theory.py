"""The paper's theory on a user's own model and data (Sections 2-4).

* `bottleneck_condition`: Section 3.2's M >= sum_{i=0}^{L-1} K_i, stage by stage.
* `assumption4`: the numerical rank of [W_0 ... W_{L-1}] from the actual weights.
* `erlb`: Proposition 2's empirical-risk lower bound, R, A and epsilon = R - A.
* `block_risks` (drawn by `plot_block_risks`): the best affine predictor's risk on
  x_i and on v_0..v_i, block by block, and on the input (Corollary 2, Proposition 3).

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
`bottleneck_condition` checks the necessary counting condition from the widths;
`assumption4` checks the rank from the actual weights.
"""
import dataclasses
import math

import keras
import numpy as np

from nestzoo import basis, specs


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


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a ResNet-family network read as a ResNEst of its own (module docstring).

    width: M. k0: K_0, the width of what plays v_0. blocks: the (i, K_i) of the
    stage's inverse problem (all its blocks but the last, and only blocks i < L).
    last: the stage's last block. w0: the layer that plays W_0 (the expansion, or the
    projection shortcut of the stage's first block); None for a spec.
    """

    stage: int
    width: int
    k0: int
    blocks: tuple
    last: int
    w0: object = None


def _stage_condition(stage):
    """The StageCondition of a `Stage`."""
    features = (stage.k0,) + tuple(k for _, k in stage.blocks)
    total = sum(features)
    return StageCondition(stage.stage, stage.width, features, total, stage.width >= total, stage.width - total,
                          total, tuple(i for i, _ in stage.blocks))


def _no_width_condition(what):
    return ValueError(
        f"{what} is a DenseNet-family model: a DenseNEst needs no width condition (Proposition 3: any "
        "DenseNEst is no worse than the best linear predictor), and it is a wide ResNEst that satisfies "
        "the bottleneck condition and Assumption 4 by construction (Proposition 4; nestzoo.densenest_to_resnest)"
    )


def _spec_stages(spec, k0):
    """The `Stage`s (without W_0 layers) of a ResNet-family spec whose v_0 has K_0 = `k0`."""
    if spec.family == "densenet":
        raise _no_width_condition(type(spec).__name__)
    if isinstance(spec, specs.VectorResNetSpec):
        return [Stage(0, spec.width, k0, tuple((i, spec.features) for i in range(1, spec.blocks)), spec.blocks)]
    stages, first = [], 1
    for stage, (n, width, features) in enumerate(zip(spec.blocks, spec.width, spec.features)):
        last = first + n - 1
        stages.append(Stage(stage, width, k0, tuple((i, features) for i in range(first, last)), last))
        first, k0 = last + 1, width
    return stages


def _spec_k0(spec, input_shape):
    """K_0 of stage 0 from `input_shape` (a tuple whose last entry counts, or an int)."""
    if not isinstance(spec, (specs.ResNetSpec, specs.VectorResNetSpec, specs.DenseNetSpec, specs.VectorDenseNetSpec)):
        raise ValueError(f"expected a nestzoo model or a ResNetSpec/VectorResNetSpec, got {type(spec).__name__}")
    if input_shape is None:
        if isinstance(spec, specs.VectorResNetSpec):
            raise ValueError("a VectorResNetSpec needs input_shape=(N_in,) (or N_in): K_0 = N_in")
        return 3
    return input_shape if isinstance(input_shape, int) else input_shape[-1]


def _channels_first(model):
    """Whether the model's images are (channels, height, width) (the data format it was built with)."""
    return model.options["data_format"] == "channels_first"


def model_stages(model):
    """The `Stage`s of a nestzoo ResNet-family model, any variant, with the layers that play W_0.

    The widths are the model's spec's (``nestzoo.basis.identity``) and K_0 of stage 0
    its input's channels (N_in of a vector model). An A-ResNEst's last block, whose
    W_L is deleted, is in no inverse problem; alone in a stage of its own, that stage
    has no residual space and is not listed.
    """
    identity = basis.identity(model)
    if identity.family == "densenet":
        raise _no_width_condition(f"model {model.name!r}")
    stages = []
    channels = model.input.shape[1 if _channels_first(model) else -1]
    for stage in _spec_stages(identity.spec, int(channels)):
        first = stage.blocks[0][0] if stage.blocks else stage.last
        w0 = basis.expansion(model) if stage.stage == 0 else basis.block_layers(model, first).get("shortcut")
        if w0 is None:
            break
        stages.append(dataclasses.replace(stage, w0=w0))
    return stages


def bottleneck_condition(model_or_spec, input_shape=None):
    """Section 3.2's bottleneck condition M >= sum_{i=0}^{L-1} K_i, for every stage.

    model_or_spec: a nestzoo ResNet-family ``keras.Model`` (any variant; the widths
    of the spec it carries, K_0 from its input), or a ``ResNetSpec`` or
    ``VectorResNetSpec``, with `input_shape` giving N_in (required for a vector spec)
    or the image channels (default 3): a tuple whose last entry is used, or an int.

    Per stage (see the module docstring for the mapping of a multi-stage network):
    M, K_0..K_{n-1}, their sum, holds, margin M - sum and the smallest M that
    satisfies it. The condition is *necessary* for Assumption 4 (a counting
    argument), and sufficient only in the paper's practical sense (full column rank
    for almost every weight setting); `assumption4` checks the actual weights.
    DenseNet-family models and specs raise ValueError: Proposition 3 needs no width
    condition.
    """
    if isinstance(model_or_spec, keras.Model):
        if input_shape is not None:
            raise ValueError("input_shape is for specs; a model's own input gives K_0")
        stages = model_stages(model_or_spec)
    else:
        stages = _spec_stages(model_or_spec, _spec_k0(model_or_spec, input_shape))
    return BottleneckCondition(tuple(_stage_condition(s) for s in stages))


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
    resolution) while it has at most `max_columns` columns; beyond that, or where the
    model takes a variable input size, on the largest n x n grid within the budget
    (n >= 3, so the grid has corner, edge and interior pixels, each of which a 3x3
    kernel treats differently). The smaller grid
    is a proxy: the counting condition is the same on every grid (hw M rows, hw sum K
    columns), and the operator is block-banded Toeplitz, whose singular values
    depend on the grid size only through its border rows. `grid` says which was used.

    tol: singular values at or below it count as zero; default numpy's matrix_rank
    rule for float32 weights, sigma_max * max(shape) * eps(float32).
    """
    stages = []
    vector = basis.identity(model).spec.input_rank == 1
    for s in model_stages(model):
        kernels = [_kernel(s.w0)] + [_kernel(basis.block_layers(model, i)["W"]) for i, _ in s.blocks]
        if vector or all(k.shape[0] == 1 for k in kernels):
            matrix = np.concatenate([k[0, 0].T for k in kernels], axis=1)
            stages.append(_rank(s.stage, matrix, "vector" if vector else "per pixel", tol))
            continue
        total = s.k0 + sum(k for _, k in s.blocks)
        n = max(3, math.isqrt(max_columns // total))  # the largest n x n grid within the budget
        grid = s.w0.output.shape[2:] if _channels_first(model) else s.w0.output.shape[1:3]
        h, w = (n if size is None else size for size in grid)  # None: a variable input size
        if h * w * total > max_columns:
            h, w = min(h, n), min(w, n)
        operator = np.concatenate([conv_operator(k, (h, w)) for k in kernels], axis=1)
        stages.append(_rank(s.stage, operator, (h, w), tol))
    return Assumption4(tuple(stages))


# ---------------------------------------------------------------------------------------
# Proposition 2 and the block-by-block risks: convex fits on frozen features
# ---------------------------------------------------------------------------------------

LOSSES = ("squared_error", "cross_entropy")
_LOSS_NAMES = {"squared_error": "squared_error", "mse": "squared_error", "mean_squared_error": "squared_error",
               "cross_entropy": "cross_entropy", "categorical_crossentropy": "cross_entropy",
               "sparse_categorical_crossentropy": "cross_entropy"}
CE_TOLERANCE = 1e-9  # L-BFGS's projected-gradient tolerance for cross-entropy fits (standardized features)
CE_FTOL = 1e-12  # L-BFGS's relative-decrease tolerance
CE_MAX_ITER = 1000


class Summary(keras.layers.Layer):
    """Summarize a tapped tensor into the vector a convex fit reads (any backend).

    mode: ``flat`` flattens. Vectors pass through the others. For images, ``mean``
    is the global average pool and ``border`` the mean, the means of the first and
    last rows and columns and the four corner pixels (9 C numbers), whose span holds
    GAP(W * v) for every 3x3 zero-padded W (`erlb_taps`). stride: take first the
    pixels a strided 1x1 convolution reads. data_format: the images' layout, as Keras
    names it (None: ``keras.config.image_data_format()``).
    """

    MODES = ("mean", "border", "flat")

    def __init__(self, mode="mean", stride=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown summary {mode!r}; valid choices: {', '.join(self.MODES)}")
        self.mode, self.stride = mode, stride
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, x):
        ops = keras.ops
        if self.mode == "flat":
            return ops.reshape(x, (ops.shape(x)[0], -1))
        if len(x.shape) == 2:
            return x
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 2, 3, 1))
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride, :]
        mean = ops.mean(x, axis=(1, 2))
        if self.mode == "mean":
            return mean
        parts = [mean, ops.mean(x[:, 0], axis=1), ops.mean(x[:, -1], axis=1),
                 ops.mean(x[:, :, 0], axis=1), ops.mean(x[:, :, -1], axis=1),
                 x[:, 0, 0], x[:, 0, -1], x[:, -1, 0], x[:, -1, -1]]
        return ops.concatenate(parts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "stride": self.stride, "data_format": self.data_format}


def _probe(model, taps):
    """A keras.Model on the model's input whose outputs are {key: summary of a tapped tensor}.

    taps: {key: (tensor, mode, stride)}; ``logits`` (the predictor's output before its
    activation) is always added.
    """
    outputs = {"logits": basis.top_layers(model)["logits"].output}
    for key, (tensor, mode, stride) in taps.items():
        outputs[key] = Summary(mode, stride, model.options["data_format"], name=f"summary_{key}")(tensor)
    return keras.Model(model.input, outputs, name=f"{model.name}_probe")


def _loss_of(model, loss):
    """The loss the tools fit: given, or read from the output activation."""
    if loss is not None:
        if loss not in _LOSS_NAMES:
            raise ValueError(f"unsupported loss {loss!r}: the theory tools fit {' or '.join(LOSSES)} "
                             "(Assumption 2: convex and differentiable in the prediction)")
        return _LOSS_NAMES[loss]
    activation = basis.top_layers(model)["predictions"].get_config()["activation"]
    if activation == "softmax":
        return "cross_entropy"
    if activation == "linear":
        return "squared_error"
    raise ValueError(f"unsupported loss: model {model.name!r} ends in a {activation!r} activation; the theory tools "
                     "fit softmax classifiers (cross_entropy) and regressors with no output activation "
                     "(squared_error); pass loss= for a logits classifier")


def _with_top(model):
    """The model's `basis.Identity`, refusing a model without the predictor the tools fit."""
    identity = basis.identity(model)
    top = basis.top_layers(model)
    if "logits" not in top or "predictions" not in top:
        raise ValueError(f"model {model.name!r} has no top (it was built with include_top=False): the theory tools "
                         "fit and compare its predictor; build it with include_top=True")
    return identity


def _training_batches(data, batch_size):
    """(x, y) numpy batches of the training data, one pass, unaugmented.

    data: anything `nestzoo.data.splits` takes (its train batches; a data set name's
    unaugmented), or a finite batched tf.data dataset of (x, y), itself the batches.
    """
    import tensorflow as tf

    from nestzoo.data import splits

    train = data if isinstance(data, tf.data.Dataset) else splits(data, batch_size, augment=False).train
    if train.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the tf.data dataset is infinite (a repeat()?); give a finite one")
    if not isinstance(train.element_spec, tuple) or len(train.element_spec) != 2:
        raise ValueError(f"the tf.data dataset must yield (x, y) batches, got {train.element_spec}")
    return train.as_numpy_iterator()


def _fits(shape, expected):
    """Whether an example's shape fits the model's input (None: any size)."""
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _collect(model, probe, data, loss, batch_size):
    """Run `probe` over the data in batches: ({key: float64 array}, targets), validated."""
    expected = tuple(model.input.shape[1:])
    outputs = basis.top_layers(model)["logits"].output.shape[-1]
    parts, targets = {}, []
    for x, y in _training_batches(data, batch_size):
        if not _fits(x.shape[1:], expected):
            raise ValueError(f"data of shape {tuple(x.shape[1:])} per example does not fit model {model.name!r}, "
                             f"which takes {expected}")
        if len(x) != len(y):
            raise ValueError(f"a batch has {len(x)} inputs but {len(y)} targets")
        for key, value in probe(x.astype("float32"), training=False).items():
            parts.setdefault(key, []).append(keras.ops.convert_to_numpy(value).astype(np.float64))
        targets.append(np.asarray(y))
    if not targets or sum(len(t) for t in targets) == 0:
        raise ValueError("the data set is empty")
    y = np.concatenate(targets)
    if loss == "cross_entropy":
        if y.ndim == 2 and y.shape[1] == outputs:
            y = y.argmax(axis=1)
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= outputs:
            raise ValueError(f"cross-entropy targets must be labels in 0..{outputs - 1} (or one-hot of {outputs}); "
                             f"got shape {y.shape}")
        y = y.astype(np.int64)
    else:
        y = y.reshape(len(y), -1).astype(np.float64)
        if y.shape[1] != outputs:
            raise ValueError(f"model {model.name!r} has {outputs} outputs; the targets have {y.shape[1]}")
    return {key: np.concatenate(value) for key, value in parts.items()}, y


def risk(predictions, y, loss):
    """The empirical risk (1/N) sum_n l(y_hat^n, y^n) of eq. (3)/(5): squared error summed over
    the outputs, or the softmax cross-entropy of logits (float64, log-sum-exp)."""
    from scipy.special import logsumexp

    if loss == "squared_error":
        return float(np.mean(np.sum((predictions - y) ** 2, axis=1)))
    return float(np.mean(logsumexp(predictions, axis=1) - predictions[np.arange(len(y)), y]))


@dataclasses.dataclass(frozen=True)
class Fit:
    """A convex fit of an affine predictor (with bias) on frozen features.

    risk: its empirical risk. converged: the solver met its tolerance (always True for
    least squares). iterations: L-BFGS iterations (0 for least squares).
    """

    risk: float
    converged: bool
    iterations: int
    predictions: np.ndarray = dataclasses.field(repr=False)


def _design(features):
    """[features, 1], standardized columns (an affine change of basis: the affine class is unchanged)."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(features).max(initial=0.0)))  # constant columns add nothing to [., 1]
    z = (features[:, keep] - mean[keep]) / std[keep]
    return np.concatenate([z, np.ones((len(z), 1))], axis=1)


def fit_affine(features, y, loss, classes=None, start=None, max_iter=CE_MAX_ITER):
    """The best affine predictor on `features` for `loss`, by convex optimization (Proposition 2).

    squared_error: numpy's least squares on [features, 1] (exact up to rounding).
    cross_entropy: scipy's L-BFGS-B on the multinomial cross-entropy of `classes`
    classes with no penalty, gradient tolerance CE_TOLERANCE on standardized features,
    relative-decrease tolerance CE_FTOL, at most `max_iter` iterations, started at
    `start` (logits whose least-squares coefficients on the design start the solver;
    default zero). Where the classes are separable the infimum is not attained and
    the solver stops on CE_FTOL or `max_iter` (``converged`` False; the risk is
    then an upper bound on the optimum). L-BFGS-B's line search never
    increases the objective, so the result is at most the start's risk.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    design = _design(features)
    if loss == "squared_error":
        coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
        predictions = design @ coefficients
        return Fit(risk(predictions, y, loss), True, 0, predictions)
    onehot = np.eye(classes)[y]
    n = len(y)

    def objective(flat):
        logits = design @ flat.reshape(design.shape[1], classes)
        value = np.mean(logsumexp(logits, axis=1) - logits[np.arange(n), y])
        return value, (design.T @ (softmax(logits, axis=1) - onehot) / n).reshape(-1)

    initial = np.zeros((design.shape[1], classes)) if start is None else np.linalg.lstsq(design, start, rcond=None)[0]
    result = minimize(objective, initial.reshape(-1), jac=True, method="L-BFGS-B",
                      options=dict(maxiter=max_iter, gtol=CE_TOLERANCE, ftol=CE_FTOL, maxcor=20))
    predictions = design @ result.x.reshape(design.shape[1], classes)
    converged = bool(result.success and np.abs(result.jac).max() <= CE_TOLERANCE)
    return Fit(risk(predictions, y, loss), converged, int(result.nit), predictions)


@dataclasses.dataclass(frozen=True)
class ERLB:
    """Proposition 2's empirical-risk lower bound for one model on one data set.

    R: the model's own empirical risk (eq. 3's objective at its weights). A: the
    convex optimum over H_0..H_L (eq. 5) on the frozen features. epsilon = R - A
    (eq. 6; >= 0, and 0 at Theorem 1(b)'s local minima). loss, examples, the
    feature set (`taps`: the tapped v_i and how each is summarized), its dimension,
    the solver's convergence, and `class_residual`: the relative RMS residual of
    the least-squares fit of the model's own logits on the features (~1e-7: the
    model's predictor lies in the A-ResNEst's class, so epsilon >= 0 holds up to that
    and the solver's tolerance; larger only with ``border=False``, the measured error
    of pooled-only features on 3x3 maps).
    """

    R: float
    A: float
    epsilon: float
    loss: str
    examples: int
    taps: tuple
    dimension: int
    converged: bool
    iterations: int
    class_residual: float


def _require_linear_head(model, identity):
    """Refuse the heads Proposition 2 does not bound: the augmented one, and one with a ReLU on x_L."""
    if identity.head.augmented:
        raise ValueError(f"model {model.name!r} is an A-ResNEst: it is its own lower bound (Proposition 2), its "
                         "heads H_0..H_L being the prediction weights erlb would fit; pass the ResNEst that shares "
                         "its features, or compare its risk with block_risks")
    if identity.head.final_relu:
        raise ValueError(f"model {model.name!r} is a {identity.variant} {identity.family}: BN and ReLU on x_L make "
                         "its prediction nonlinear in the features, so Proposition 2 does not bound it; the "
                         "ResNEst, BN-ResNEst and DenseNEst heads are linear in them")


def erlb_taps(model, border=True):
    """The features of Proposition 2's A-ResNEst for `model`: {key: (tensor, summary, stride)}.

    Chosen so that the model's own predictor lies in the affine class on them:

    * ResNEst, eq. (2), and BN-ResNEst (whose BN on x_L is affine at inference): the
      final stage's v_0 and v_i (module docstring), so
      y = W_{L+1} GAP(x_L) + b = W_{L+1} sum_i GAP(W_i v_i) + b. Vector family: the
      v_i themselves, exact. Through a 1x1 map (pointwise W_i, a projection
      shortcut's W_0) GAP(W_i v_i) = W_i GAP(v_i): the pooled v_i, exact (v_0 taken
      at the stride-2 pixels the shortcut reads). Through a 3x3 zero-padded map
      (a basic block's W_i, the stem W_0), GAP(W_i * v_i) = (1/HW) sum_{a,b} W_i[a,b]
      (the sum of v_i over the grid less one row and/or column), which lies in the
      span of the pooled v_i, its first/last row and column means and its four corner
      pixels: with ``border=True`` (default) these 9 K_i numbers are the features, and
      the class holds the predictor exactly; ``border=False`` keeps the pooled v_i
      only, an approximation whose error `ERLB.class_residual` measures.
    * DenseNEst, eq. (9): the pooled x_L = concat of the features W_{L+1} reads;
      (PD_phi) is then itself the convex problem, and epsilon its optimization gap.
    """
    if _with_top(model).family == "densenet":
        return {"x_L": (basis.top_layers(model)["logits"].input, "mean", 1)}
    stage = model_stages(model)[-1]
    summary = lambda layer: "border" if border and _kernel(layer).shape[0] == 3 else "mean"  # noqa: E731
    if stage.stage == 0:  # W_0 is the expansion of the input v_0
        taps = {"v0": (basis.tap(model, "v0").output, summary(stage.w0), 1)}
    else:  # W_0 is the projection shortcut of the pre-activated stage input
        taps = {f"v0 (stage {stage.stage})": (stage.w0.input, summary(stage.w0), stage.w0.strides[0])}
    for i in [i for i, _ in stage.blocks] + [stage.last]:
        block = basis.block_layers(model, i)
        taps[f"v{i}"] = (block["features"].output, summary(block["W"]), 1)
    return taps


def erlb(model, data, loss=None, border=True, batch_size=256, max_iter=CE_MAX_ITER):
    """Proposition 2's empirical-risk lower bound: R, A and epsilon = R - A, eq. (6).

    The model's features are frozen (its weights as they are) and the A-ResNEst's
    prediction weights H_0..H_L (affine, with a bias, as nestzoo's heads) are fit by
    convex optimization for the model's loss (`fit_affine`): squared error for a
    regressor (no output activation), cross-entropy for a softmax classifier; `loss`
    overrides ("squared_error" or "cross_entropy"). The features (`erlb_taps`) are
    chosen so that the model's own predictor lies in the A-ResNEst's class, hence
    epsilon >= 0 up to rounding; for cross-entropy the solver starts from the model's
    own predictor, so the solver's tolerance cannot make A exceed R either.
    Theorem 1(b): epsilon = 0 at every local minimizer of (P_phi) when M >= N_o and
    Assumption 4 holds.

    data: the training batches of anything ``nestzoo.data.splits`` takes (a data set
    name: its training split, unaugmented; (x, y) numpy arrays; a
    ``nestzoo.data.Datasets`` or (train, test) parts: their train as given), or a
    finite batched tf.data dataset of (x, y); computed in batches of `batch_size` (a
    dataset's as they come), holding only the summarized features.
    Squared-error risk: the mean over examples of the squared error summed over the
    outputs. Cross-entropy: the mean softmax cross-entropy (nats).
    """
    _require_linear_head(model, _with_top(model))
    loss = _loss_of(model, loss)
    taps = erlb_taps(model, border)
    features, y = _collect(model, _probe(model, taps), data, loss, batch_size)
    logits = features.pop("logits")
    phi = np.concatenate([features[key] for key in taps], axis=1)
    R = risk(logits, y, loss)
    design = _design(phi)
    residual = logits - design @ np.linalg.lstsq(design, logits, rcond=None)[0]
    class_residual = float(np.sqrt(np.mean(residual ** 2) / max(np.mean(logits ** 2), np.finfo(float).tiny)))
    fit = fit_affine(phi, y, loss, classes=logits.shape[1], start=logits if loss == "cross_entropy" else None,
                     max_iter=max_iter)
    described = tuple(f"{key}: {'pooled' if mode == 'mean' else 'pooled + border'}"
                      + (f", stride {stride}" if stride > 1 else "") for key, (_, mode, stride) in taps.items())
    return ERLB(R, fit.risk, R - fit.risk, loss, len(y), described, phi.shape[1], fit.converged, fit.iterations,
                class_residual)


@dataclasses.dataclass(frozen=True)
class BlockRisks:
    """The risk of the best affine predictor, block by block (Sections 2.4 and 3.1).

    blocks: i = 0..L. residual[i]: on x_i (None where the model has no x_i: an
    A-ResNEst's x_L). augmented[i]: on v_0..v_i, the A-ResNEst of eq. (4) truncated
    after block i. linear: on the input itself (flattened), the best linear predictor
    of Corollary 2 and Proposition 3. model: the model's own risk. Image
    representations are globally average-pooled, as the heads see them (v_0: the
    pooled input).
    """

    blocks: tuple
    residual: tuple
    augmented: tuple
    linear: float
    model: float
    loss: str
    examples: int

    def rows(self):
        """The table as a list of dicts (block, residual, augmented)."""
        return [dict(block=i, residual=r, augmented=a) for i, r, a in zip(self.blocks, self.residual, self.augmented)]

    def table(self):
        """The table as text."""
        lines = [f"{'block i':>7}  {'best on x_i':>12}  {'best on v_0..v_i':>16}"]
        for i, r, a in zip(self.blocks, self.residual, self.augmented):
            lines.append(f"{i:>7}  {'-' if r is None else format(r, '.6g'):>12}  {a:>16.6g}")
        lines.append(f"best linear predictor of the input: {self.linear:.6g}; the model: {self.model:.6g} ({self.loss})")
        return "\n".join(lines)


def block_risks(model, data, loss=None, batch_size=256, max_iter=CE_MAX_ITER):
    """For i = 0..L, the risk of the best affine predictor on x_i and on v_0..v_i (eq. 4
    truncated after block i), plus on the input (Corollary 2, Proposition 3) and the
    model's own risk. Each is a convex fit (`fit_affine`) on frozen features.

    By Proposition 2 the v_0..v_i column never increases with i (up to the solver's
    tolerance for cross-entropy); Remark 2 says the x_i column is monotone too at a
    local minimizer of a ResNEst satisfying Assumptions 3 and 4. Same `data` and
    `loss` as `erlb`; `max_iter` bounds each cross-entropy fit (an unconverged fit's
    risk is an upper bound on its optimum). The flattened input is held in memory
    (N x its size).
    """
    L = _with_top(model).num_blocks
    loss = _loss_of(model, loss)
    taps = {key: (basis.tap(model, key).output, "mean", 1) for key in basis.basis_layers(model)}
    taps["input"] = (basis.tap(model, "v0").output, "flat", 1)
    features, y = _collect(model, _probe(model, taps), data, loss, batch_size)
    classes = features["logits"].shape[1]
    fit = lambda phi: fit_affine(phi, y, loss, classes=classes, max_iter=max_iter).risk  # noqa: E731
    residual = tuple(fit(features[f"x{i}"]) if f"x{i}" in features else None for i in range(L + 1))
    augmented = tuple(fit(np.concatenate([features[f"v{j}"] for j in range(i + 1)], axis=1)) for i in range(L + 1))
    return BlockRisks(tuple(range(L + 1)), residual, augmented, fit(features["input"]),
                      risk(features["logits"], y, loss), loss, len(y))


def plot_block_risks(result, path, title=None):
    """Draw a `BlockRisks` as a PNG: one line per quantity, the block index i on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    blocks = np.array(result.blocks)
    ax.plot(blocks, result.augmented, "o-", label="best affine on v_0..v_i (A-ResNEst, eq. 4)")
    known = [(i, r) for i, r in zip(result.blocks, result.residual) if r is not None]
    if known:
        ax.plot(*zip(*known), "s--", label="best affine on x_i")
    ax.axhline(result.linear, color="gray", linestyle=":", label="best linear predictor of the input")
    ax.axhline(result.model, color="black", linestyle="-.", label="the model")
    ax.set_xlabel("block i")
    ax.set_ylabel("training risk" + (" (squared error)" if result.loss == "squared_error" else " (cross-entropy)"))
    ax.set_xticks(blocks)
    ax.set_title(title or f"block risks ({result.examples} examples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

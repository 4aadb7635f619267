"""Architecture specs: what a backbone is, in the paper's terms (pure Python, no Keras).

The words mean one thing each, in every family (README, "Terms"):

* ``blocks``: L, the number of blocks; for a network of stages, blocks per stage.
* ``width``: M, the width of the residual space x_i (one per stage).
* ``features``: K_i, the width of each block's feature v_i (a DenseNet's growth rate k,
  the paper's D_i).
* ``layers``: the total number of weighted layers (He et al.'s "ResNet-20" counting).
* ``block``: the residual block's G_i, "basic" (3x3) or "pointwise" (1x1-3x3-1x1, He
  et al.'s bottleneck block); ``pointwise`` in a DenseNet is DenseNet-B's 1x1 first.

"Bottleneck" is kept for the paper's bottleneck condition (``nestzoo.theory``).
"""
import dataclasses
import math

BLOCK_TYPES = ("basic", "pointwise")
# Weighted layers per block: basic 3x3-3x3, pointwise 1x1-3x3-1x1 (pre-activation).
LAYERS_PER_BLOCK = {"basic": 2, "pointwise": 3}


def positive_int(name, value):
    """`value` if it is an integer >= 1, else a ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_ints(name, values, stages=None):
    """A tuple of positive integers; an int is one stage, or repeated over `stages`."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,) * (stages or 1)
    if not isinstance(values, (tuple, list)) or not values:
        raise ValueError(f"{name} must be a positive integer or a non-empty list of them, got {values!r}")
    for value in values:
        positive_int(name, value)
    return tuple(values)


def _blocks_per_stage(layers, per_stage, fixed, layout):
    """n of a network of per_stage * n + fixed layers, or a ValueError naming the valid counts."""
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < per_stage + fixed or (layers - fixed) % per_stage:
        valid = ", ".join(str(per_stage * n + fixed) for n in range(1, 6))
        raise ValueError(f"{layout} has {per_stage}n+{fixed} layers ({valid}, ...); got layers={layers!r}")
    return (layers - fixed) // per_stage


class _Stages:
    """What the image specs share: stages of blocks, each stage after the first at half resolution."""

    input_rank = 3  # images (height, width, channels)

    @property
    def num_blocks(self):
        """L, the number of blocks (residual blocks, or dense layers)."""
        return sum(self.blocks)

    @property
    def downsampling(self):
        """Total stride: every stage after the first halves the resolution."""
        return 2 ** (len(self.blocks) - 1)


@dataclasses.dataclass(frozen=True)
class ResNetSpec(_Stages):
    """A pre-activation ResNet backbone: stages of residual blocks, eq. (1).

    blocks: residual blocks per stage. width: M per stage (the expansion W_0 maps
    the input to width[0]). features: K per stage (default M for basic blocks,
    M / 4 for pointwise ones). block: "basic" or "pointwise".
    """

    blocks: tuple
    width: tuple
    features: tuple = None
    block: str = "basic"

    family = "resnet"

    def __post_init__(self):
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}; valid choices: {', '.join(BLOCK_TYPES)}")
        width = positive_ints("width (M per stage)", self.width)
        blocks = positive_ints("blocks (per stage)", self.blocks, len(width))
        if self.features is None:
            divisor = 4 if self.block == "pointwise" else 1
            features = tuple(max(1, m // divisor) for m in width)
        else:
            features = positive_ints("features (K per stage)", self.features, len(width))
        lengths = {"blocks": len(blocks), "width": len(width), "features": len(features)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-stage lists must have one entry per stage; got lengths {lengths}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "features", features)

    @classmethod
    def from_layers(cls, layers, width, features=None, block="basic"):
        """The spec of a ResNet-`layers` (He et al. counting: stem + blocks + linear)."""
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {block!r}; valid choices: {', '.join(BLOCK_TYPES)}")
        stages = len(positive_ints("width (M per stage)", width))
        layout = f"a {stages}-stage ResNet of {block} blocks"
        n = _blocks_per_stage(layers, LAYERS_PER_BLOCK[block] * stages, 2, layout)  # stem + blocks + linear
        return cls(n, width, features, block)

    def stage_blocks(self):
        """Yield (block index i, stage, width M, feature width K, stride) for i = 1..L."""
        i = 0
        for stage, (n, width, features) in enumerate(zip(self.blocks, self.width, self.features)):
            for b in range(n):
                i += 1
                yield i, stage, width, features, 2 if stage > 0 and b == 0 else 1


@dataclasses.dataclass(frozen=True)
class DenseNetSpec(_Stages):
    """A CIFAR DenseNet backbone (Huang et al.): stages of dense layers, eq. (8), joined by transitions.

    blocks: dense layers per stage (each layer is one of the paper's dense blocks i;
    DenseNet calls a stage a "dense block"). features: the growth rate k, the
    channels D_i of every feature v_i = Q_i(x_{i-1}). pointwise: DenseNet-B's 1x1
    convolution to 4k channels at the start of Q_i. compression: the fraction theta
    in (0, 1] of channels a transition keeps (DenseNet-C). stem: channels of the
    first convolution (default 2k with `pointwise`, else 16).
    """

    blocks: tuple
    features: int = 12
    pointwise: bool = False
    compression: float = 1.0
    stem: int = None

    family = "densenet"
    STAGES = 3  # the CIFAR DenseNets' dense blocks, for `from_layers`

    def __post_init__(self):
        object.__setattr__(self, "blocks", positive_ints("blocks (dense layers per stage)", self.blocks, self.STAGES))
        positive_int("features (the growth rate k)", self.features)
        if not isinstance(self.pointwise, bool):
            raise ValueError(f"pointwise must be True or False, got {self.pointwise!r}")
        c = self.compression
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"compression must be in (0, 1], got {c!r}")
        if self.stem is None:
            object.__setattr__(self, "stem", 2 * self.features if self.pointwise else 16)
        positive_int("stem", self.stem)
        if min(self.transitions(), default=1) < 1:
            raise ValueError(f"compression {c!r} leaves a transition with no channels")

    @classmethod
    def from_layers(cls, layers, features=12, pointwise=False, compression=1.0, stem=None):
        """The spec of a 3-stage DenseNet(-BC) of `layers` layers: 3n+4, or 6n+4 with `pointwise`."""
        layout = f"a {cls.STAGES}-stage " + ("DenseNet-B (pointwise)" if pointwise else "DenseNet")
        per_stage = (2 if pointwise else 1) * cls.STAGES
        n = _blocks_per_stage(layers, per_stage, cls.STAGES + 1, layout)  # stem, transitions, linear
        return cls(n, features, pointwise, compression, stem)

    def transitions(self):
        """Channels after each transition: floor(compression * channels in)."""
        widths, channels = [], self.stem
        for n in self.blocks[:-1]:
            channels = int(math.floor((channels + n * self.features) * self.compression))
            widths.append(channels)
        return tuple(widths)

    def stage_blocks(self):
        """Yield (layer index i, stage, channels of the transition after it or None) for i = 1..L."""
        i, transitions = 0, self.transitions() + (None,)
        for stage, (n, transition) in enumerate(zip(self.blocks, transitions)):
            for b in range(n):
                i += 1
                yield i, stage, transition if b == n - 1 else None


class _VectorSpec:
    """What the vector-valued specs share: inputs (N_in,), L blocks, G_i/Q_i of Dense-ReLU layers."""

    input_rank = 1  # vectors (N_in,)
    downsampling = 1

    def _validate(self, **positive):
        for name, value in positive.items():
            positive_int(name, value)
        hidden = tuple(self.hidden or ())
        object.__setattr__(self, "hidden", hidden and positive_ints("hidden", hidden))


@dataclasses.dataclass(frozen=True)
class VectorResNetSpec(_VectorSpec):
    """A vector-valued ResNet on inputs in R^{N_in}, eqs. (1)-(2).

    x_0 = W_0 x in R^M, x_i = x_{i-1} + W_i G_i(x_{i-1}) for i = 1..L. width: M.
    blocks: L. features: K, the width of every feature v_i = G_i(x_{i-1}). hidden:
    widths of extra Dense-ReLU layers at the start of G_i (default none: G_i is one
    Dense(K) with bias and ReLU).
    """

    width: int = None
    blocks: int = None
    features: int = None
    hidden: tuple = ()

    family = "resnet"

    def __post_init__(self):
        self._validate(**{"width M": self.width, "blocks L": self.blocks, "features K": self.features})


@dataclasses.dataclass(frozen=True)
class VectorDenseNetSpec(_VectorSpec):
    """A vector-valued DenseNet on inputs in R^{N_in}, eq. (8).

    x_0 = x, x_i = concat(x_{i-1}, Q_i(x_{i-1})) for i = 1..L, so M_i = N_in + i D.
    blocks: L. features: D, the width of every feature v_i = Q_i(x_{i-1}). hidden:
    widths of extra Dense-ReLU layers at the start of Q_i.
    """

    blocks: int = None
    features: int = None
    hidden: tuple = ()

    family = "densenet"

    def __post_init__(self):
        self._validate(**{"blocks L": self.blocks, "features D": self.features})


SPECS = (ResNetSpec, DenseNetSpec, VectorResNetSpec, VectorDenseNetSpec)


def spec_config(spec):
    """A spec as JSON-ready data: {"class": its class name, "config": its fields, tuples as lists}."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return {"class": type(spec).__name__,
            "config": {name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()}}


def spec_from_config(config):
    """The spec that `spec_config` wrote (validated again)."""
    classes = {cls.__name__: cls for cls in SPECS}
    if not isinstance(config, dict) or config.get("class") not in classes:
        found = config.get("class") if isinstance(config, dict) else config
        raise ValueError(f"not a nestzoo spec: {found!r}; valid classes: {', '.join(classes)}")
    return classes[config["class"]](**config["config"])

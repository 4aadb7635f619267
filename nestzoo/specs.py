"""Architecture specs and the registry of named architectures.

A spec says what the backbone is: how many residual blocks each stage has, the
width M of each stage's residual space, the width K of each block's feature v_i,
and the block type. Named architectures are registry entries (like timm's and
Keras Applications' families); custom networks are specs built from arguments.
"""
import dataclasses
import math
import re

BLOCK_TYPES = ("basic", "bottleneck")
# Weighted layers per block: basic 3x3-3x3, bottleneck 1x1-3x3-1x1 (pre-activation).
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


def _positive_ints(name, values):
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return values


def _blocks_per_stage(depth, per_stage, fixed, layout):
    """n of a network of depth per_stage * n + fixed layers, or a ValueError naming the valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < per_stage + fixed or (depth - fixed) % per_stage:
        valid = ", ".join(str(per_stage * n + fixed) for n in range(1, 6))
        raise ValueError(f"{layout} has depth {per_stage}n+{fixed} ({valid}, ...); got depth={depth!r}")
    return (depth - fixed) // per_stage


class _Stages:
    """What the image specs share: stages of blocks, each stage after the first at half resolution."""

    input_rank = 3  # images (height, width, channels)

    @property
    def num_blocks(self):
        """L, the number of blocks (residual blocks, or dense layers)."""
        return sum(self.depths)

    @property
    def downsampling(self):
        """Total stride: every stage after the first halves the resolution."""
        return 2 ** (len(self.depths) - 1)


@dataclasses.dataclass(frozen=True)
class ResNetSpec(_Stages):
    """A pre-activation ResNet backbone: stages of residual blocks, eq. (1).

    depths: residual blocks per stage. widths: M per stage (the residual space of
    the stage; the expansion W_0 maps the input to widths[0]). features: K per
    stage, the channels of each block's feature v_i (default M for basic blocks,
    M / 4 for bottleneck blocks). block: "basic" or "bottleneck".
    """

    depths: tuple
    widths: tuple
    features: tuple = None
    block: str = "basic"

    family = "resnet"

    def __post_init__(self):
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}; valid choices: {', '.join(BLOCK_TYPES)}")
        depths = _positive_ints("depths", self.depths)
        widths = _positive_ints("widths", self.widths)
        if self.features is None:
            divisor = 4 if self.block == "bottleneck" else 1
            features = tuple(max(1, m // divisor) for m in widths)
        else:
            features = _positive_ints("features", self.features)
        lengths = {"depths": len(depths), "widths": len(widths), "features": len(features)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-stage lists must have one entry per stage; got lengths {lengths}")
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "features", features)

    @classmethod
    def from_depth(cls, depth, widths, features=None, block="basic"):
        """The spec of a ResNet-`depth` (He et al. counting: stem + blocks + linear)."""
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {block!r}; valid choices: {', '.join(BLOCK_TYPES)}")
        stages = len(_positive_ints("widths", widths))
        layout = f"a {stages}-stage ResNet of {block} blocks"
        n = _blocks_per_stage(depth, LAYERS_PER_BLOCK[block] * stages, 2, layout)  # stem + blocks + linear
        return cls((n,) * stages, tuple(widths), features, block)

    def stage_blocks(self):
        """Yield (block index i, stage, width M, feature width K, stride) for i = 1..L."""
        i = 0
        for stage, (n, width, features) in enumerate(zip(self.depths, self.widths, self.features)):
            for b in range(n):
                i += 1
                yield i, stage, width, features, 2 if stage > 0 and b == 0 else 1

    def bottleneck_condition(self, input_channels=3):
        """Section 3.2's bottleneck condition M >= sum_{i=0}^{L-1} K_i, stage by stage.

        Within a stage the residual space has width M and the stage's input plays the
        role of v_0 (K_0 = its channels); the network's last block is excluded, as in
        the sum's upper limit L-1. Returns a list of (M, sum of K, holds) per stage.
        """
        result = []
        stage_input = input_channels
        for stage, (n, width, features) in enumerate(zip(self.depths, self.widths, self.features)):
            last_stage = stage == len(self.depths) - 1
            total = stage_input + features * (n - 1 if last_stage else n)
            result.append((width, total, width >= total))
            stage_input = width
        return result


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DenseNetSpec(_Stages):
    """A CIFAR DenseNet backbone (Huang et al.): stages of dense layers, eq. (8), joined by transitions.

    depths: dense layers per stage (a "dense block" in DenseNet's words; each layer
    is one of the paper's dense blocks i). growth: the growth rate k, the channels
    D_i of every feature v_i = Q_i(x_{i-1}). bottleneck: DenseNet-B's 1x1
    convolution to 4k channels at the start of Q_i. compression: the fraction
    theta in (0, 1] of channels a transition keeps (DenseNet-C). stem: channels of
    the first convolution (default 2k with the bottleneck, else 16).
    """

    depths: tuple
    growth: int = 12
    bottleneck: bool = False
    compression: float = 1.0
    stem: int = None

    family = "densenet"
    STAGES = 3  # the CIFAR DenseNets' dense blocks, for `from_depth`

    def __post_init__(self):
        object.__setattr__(self, "depths", _positive_ints("depths (dense layers per stage)", self.depths))
        _positive_int("growth rate", self.growth)
        if not isinstance(self.bottleneck, bool):
            raise ValueError(f"bottleneck must be True or False, got {self.bottleneck!r}")
        c = self.compression
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"compression must be in (0, 1], got {c!r}")
        if self.stem is None:
            object.__setattr__(self, "stem", 2 * self.growth if self.bottleneck else 16)
        _positive_int("stem", self.stem)
        if min(self.transitions(), default=1) < 1:
            raise ValueError(f"compression {c!r} leaves a transition with no channels")

    @classmethod
    def from_depth(cls, depth, growth=12, bottleneck=False, compression=1.0, stem=None):
        """The spec of a 3-stage DenseNet(-BC) of `depth` layers: 3n+4, or 6n+4 with the bottleneck."""
        layout = f"a {cls.STAGES}-stage " + ("DenseNet-BC (bottleneck)" if bottleneck else "DenseNet (no bottleneck)")
        per_stage = (2 if bottleneck else 1) * cls.STAGES
        n = _blocks_per_stage(depth, per_stage, cls.STAGES + 1, layout)  # stem, transitions, linear
        return cls((n,) * cls.STAGES, growth, bottleneck, compression, stem)

    def transitions(self):
        """Channels after each transition: floor(compression * channels in)."""
        widths, channels = [], self.stem
        for n in self.depths[:-1]:
            channels = int(math.floor((channels + n * self.growth) * self.compression))
            widths.append(channels)
        return tuple(widths)

    def stage_blocks(self):
        """Yield (layer index i, stage, channels of the transition after it or None) for i = 1..L."""
        i, transitions = 0, self.transitions() + (None,)
        for stage, (n, transition) in enumerate(zip(self.depths, transitions)):
            for b in range(n):
                i += 1
                yield i, stage, transition if b == n - 1 else None


VECTOR_ARCH = "mlp"  # the arch name that selects the vector-valued family


class _VectorSpec:
    """What the vector-valued specs share: inputs (N_in,), L = depth blocks, G_i/Q_i of Dense-ReLU layers."""

    input_rank = 1  # vectors (N_in,)
    downsampling = 1

    def _validate(self, **positive):
        for name, value in positive.items():
            _positive_int(name, value)
        hidden = tuple(self.hidden or ())
        object.__setattr__(self, "hidden", hidden and _positive_ints("hidden", hidden))

    @property
    def num_blocks(self):
        """L, the number of blocks."""
        return self.depth


@dataclasses.dataclass(frozen=True)
class VectorResNetSpec(_VectorSpec):
    """A vector-valued ResNet on inputs in R^{N_in}, eqs. (1)-(2).

    x_0 = W_0 x in R^M, x_i = x_{i-1} + W_i G_i(x_{i-1}) for i = 1..L. width: M.
    depth: L, the number of blocks (not layers). bottleneck: K, the width of every
    feature v_i = G_i(x_{i-1}). hidden: widths of extra Dense-ReLU layers at the
    start of G_i (default none: G_i is one Dense(K) with bias and ReLU).
    """

    width: int = None
    depth: int = None
    bottleneck: int = None
    hidden: tuple = ()

    family = "resnet"

    def __post_init__(self):
        self._validate(**{"width M": self.width, "depth L": self.depth, "bottleneck K": self.bottleneck})

    def bottleneck_condition(self, input_dim):
        """Section 3.2: M >= sum_{i=0}^{L-1} K_i with K_0 = N_in; returns (M, the sum, holds)."""
        total = input_dim + self.bottleneck * (self.depth - 1)
        return self.width, total, self.width >= total


@dataclasses.dataclass(frozen=True)
class VectorDenseNetSpec(_VectorSpec):
    """A vector-valued DenseNet on inputs in R^{N_in}, eq. (8).

    x_0 = x, x_i = concat(x_{i-1}, Q_i(x_{i-1})) for i = 1..L, so M_i = N_in + i D.
    depth: L. growth: D, the width of every feature v_i = Q_i(x_{i-1}). hidden:
    widths of extra Dense-ReLU layers at the start of Q_i.
    """

    depth: int = None
    growth: int = None
    hidden: tuple = ()

    family = "densenet"

    def __post_init__(self):
        self._validate(**{"depth L": self.depth, "growth D": self.growth})


_DENSENET_NAME = re.compile(r"densenet-?(bc)?-?\(?(?:l=)?(\d+)[-,]*(?:k=)?(\d+)\)?")


def canonical(name):
    """Lower-case a typed name and drop the dash between letters and digits.

    "WRN-40-4" -> "wrn40-4", "ResNet_110" -> "resnet110", "A-ResNEst" -> "a-resnest",
    "DenseNet-BC-100-12" or "DenseNet-BC (L=100, k=12)" -> "densenet-bc100-12".
    """
    name = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    dense = _DENSENET_NAME.fullmatch(name)  # "DenseNet-BC (L=100, k=12)" -> "densenet-bc100-12"
    if dense:
        return f"densenet{'-bc' if dense.group(1) else ''}{dense.group(2)}-{dense.group(3)}"
    return re.sub(r"([a-z])-(?=\d)", r"\1", name)


ARCHS = {
    "resnet20": ResNetSpec(depths=(3, 3, 3), widths=(16, 32, 64)),
    "resnet110": ResNetSpec(depths=(18, 18, 18), widths=(16, 32, 64)),
    "wrn16-8": ResNetSpec(depths=(2, 2, 2), widths=(128, 256, 512)),
    "wrn40-4": ResNetSpec(depths=(6, 6, 6), widths=(64, 128, 256)),
    # DenseNet paper, Table 2 (CIFAR): DenseNet (L=40, k=12) and DenseNet-BC (L, k)
    "densenet40-12": DenseNetSpec.from_depth(40, growth=12),
    "densenet-bc100-12": DenseNetSpec.from_depth(100, growth=12, bottleneck=True, compression=0.5),
    "densenet-bc250-24": DenseNetSpec.from_depth(250, growth=24, bottleneck=True, compression=0.5),
    "densenet-bc190-40": DenseNetSpec.from_depth(190, growth=40, bottleneck=True, compression=0.5),
}


def get_spec(arch, family=None):
    """The registered spec of a named architecture, accepting common spellings.

    With `family` ("resnet", "densenet") an unknown name is reported with that
    family's choices and arch="mlp".
    """
    spec = ARCHS.get(canonical(arch))
    if spec is None:
        if family is None:
            raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
        choices = [name for name, known in ARCHS.items() if known.family == family] + [VECTOR_ARCH]
        title = {"resnet": "ResNet", "densenet": "DenseNet"}[family]
        raise ValueError(f"unknown {title} arch {arch!r}; valid choices: {', '.join(choices)}")
    return spec

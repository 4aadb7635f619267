"""Architecture specs and the registry of named architectures.

A spec says what the backbone is: how many residual blocks each stage has, the
width M of each stage's residual space, the width K of each block's feature v_i,
and the block type. Named architectures are registry entries (like timm's and
Keras Applications' families); custom networks are specs built from arguments.
"""
import dataclasses
import re

BLOCK_TYPES = ("basic", "bottleneck")
# Weighted layers per block: basic 3x3-3x3, bottleneck 1x1-3x3-1x1 (pre-activation).
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


def _positive_ints(name, values):
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return values


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
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
        per_stage = LAYERS_PER_BLOCK[block] * stages
        if not isinstance(depth, int) or depth < per_stage + 2 or (depth - 2) % per_stage:
            valid = ", ".join(str(per_stage * n + 2) for n in range(1, 6))
            raise ValueError(
                f"a {stages}-stage ResNet of {block} blocks has depth {per_stage}n+2 "
                f"({valid}, ...); got depth={depth!r}"
            )
        n = (depth - 2) // per_stage
        return cls((n,) * stages, tuple(widths), features, block)

    @property
    def num_blocks(self):
        """L, the number of residual blocks."""
        return sum(self.depths)

    @property
    def downsampling(self):
        """Total stride: every stage after the first starts with a stride-2 block."""
        return 2 ** (len(self.depths) - 1)

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


def canonical(name):
    """Lower-case a typed name and drop the dash between letters and digits.

    "WRN-40-4" -> "wrn40-4", "ResNet_110" -> "resnet110", "A-ResNEst" -> "a-resnest".
    """
    name = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    return re.sub(r"([a-z])-(?=\d)", r"\1", name)


ARCHS = {
    "resnet20": ResNetSpec(depths=(3, 3, 3), widths=(16, 32, 64)),
    "resnet110": ResNetSpec(depths=(18, 18, 18), widths=(16, 32, 64)),
    "wrn16-8": ResNetSpec(depths=(2, 2, 2), widths=(128, 256, 512)),
    "wrn40-4": ResNetSpec(depths=(6, 6, 6), widths=(64, 128, 256)),
}


def get_spec(arch):
    """The registered spec of a named architecture, accepting common spellings."""
    spec = ARCHS.get(canonical(arch))
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
    return spec

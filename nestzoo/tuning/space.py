"""What a width sweep searches and what it keeps fixed, and the names a sweep accepts.

Imports neither TensorFlow nor Keras, so ``nestzoo tune`` checks its arguments at once.
"""
import dataclasses
import json
import math

from nestzoo import registry, specs

INPUTS = ("image", "vector")
TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss")


def check_choice(kind, value, choices):
    """`value` if it is one of `choices`, else a ValueError naming the valid choices."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
    return value


def _range(name, value, kind=int):
    """(min, max) of finite positive numbers, or a ValueError saying what is wrong."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
    ):
        raise ValueError(f"{name} must be a (min, max) pair of finite positive numbers, got {value!r}")
    low, high = (kind(v) for v in value)
    if low > high:
        raise ValueError(f"{name}: min > max ({low} > {high})")
    return low, high


@dataclasses.dataclass(frozen=True)
class WidthSpace:
    """What a width sweep searches, and what it keeps fixed.

    inputs: "image" (stages of residual blocks) or "vector" (``arch="mlp"``).
    variant: standard, resnest, bn-resnest or a-resnest. blocks: blocks per stage
    (image) or L (vector). block: "basic" or "pointwise" (image).
    width: the M range (min, max); image: one M, stage s getting ``M * ratios[s]``,
        or one (min, max) per stage to search every stage's M.
    ratios: image only: stage multipliers of M, and of a searched K.
    features: a fixed K (image: an int or one per stage), or None with feature_range.
    feature_range: (min, max) of K to search (image: K of stage s is ``K * ratios[s]``).
    learning_rate: (min, max) to search on a log scale; None keeps the recipe's.
    allow_violations: keep the M ranges as given, so violating trials train (marked).
    """

    inputs: str = "image"
    variant: str = "a-resnest"
    blocks: object = (1, 1, 1)
    block: str = "basic"
    width: tuple = (4, 32)
    ratios: tuple = (1, 2, 4)
    features: object = None
    feature_range: tuple = None
    learning_rate: tuple = None
    allow_violations: bool = False

    def __post_init__(self):
        check_choice("inputs", self.inputs, INPUTS)
        object.__setattr__(self, "variant", registry.canonical_variant(self.variant, "resnet"))
        check_choice("block type", self.block, specs.BLOCK_TYPES)
        if (self.features is None) == (self.feature_range is None):
            raise ValueError("give features (a fixed K) or feature_range (min, max) to search K, not both or neither")
        if self.feature_range is not None:
            object.__setattr__(self, "feature_range", _range("feature_range (K)", self.feature_range))
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", _range("learning_rate", self.learning_rate, float))
        if self.inputs == "vector":
            specs.positive_int("blocks (L)", self.blocks)
            object.__setattr__(self, "width", _range("width (M)", self.width))
            if self.features is not None:
                specs.positive_int("features (K)", self.features)
            return
        blocks = specs.positive_ints("blocks (per stage)", self.blocks, len(self.ratios or (1, 1, 1)))
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "ratios", specs.positive_ints("ratios (per stage)", self.ratios, len(blocks)))
        if len(self.ratios) != len(blocks):
            raise ValueError(f"ratios need one entry per stage ({len(blocks)}), got {self.ratios!r}")
        if self.per_stage:
            if len(self.width) != len(blocks):
                raise ValueError(f"per-stage width ranges need one (min, max) per stage ({len(blocks)})")
            object.__setattr__(self, "width", tuple(_range(f"width (M) of stage {s}", w)
                                                    for s, w in enumerate(self.width)))
        else:
            object.__setattr__(self, "width", _range("width (M)", self.width))
        if self.features is not None:
            features = specs.positive_ints("features (K per stage)", self.features, len(blocks))
            object.__setattr__(self, "features", features)

    @property
    def per_stage(self):
        """Whether every stage's M is searched (image, one range per stage)."""
        return self.inputs == "image" and isinstance(self.width[0], (tuple, list))

    def stage_features(self, k=None):
        """K of each stage (image) or K (vector), for a searched `k` or the fixed features."""
        if k is None:
            return self.features
        return k if self.inputs == "vector" else tuple(k * r for r in self.ratios)

    def stage_widths(self, m):
        """Widths of the stages for one M (image) or M itself (vector)."""
        return m if self.inputs == "vector" else tuple(m * r for r in self.ratios)

    def spec(self, widths, features):
        """The backbone spec of one point of the space."""
        if self.inputs == "vector":
            return specs.VectorResNetSpec(width=widths, blocks=self.blocks, features=features)
        return specs.ResNetSpec(self.blocks, widths, features, self.block)

    def to_dict(self):
        """The space as JSON data (sweep.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

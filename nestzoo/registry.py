"""The one registry: named architectures, each family's variants and their heads.

Models are named ``"{arch}.{variant}"``, as timm's ``create_model`` names them;
`parse_name` is the one reader of such names. Pure data (it imports no model code
and no Keras), so the ``nestzoo`` command lists models instantly;
``nestzoo.builders.create_model`` is the factory above it.

Every variant of a family shares the backbone (the expansion W_0 and the blocks);
the variants differ only in their head, how the final representation reaches the
predictor (docs/reference.md, "Heads"):

========== ============================================ ===================
variant    head                                         paper
========== ============================================ ===================
standard   BN, ReLU, global average pool, linear        pre-activation ResNet
resnest    global average pool, linear W_{L+1}          eq. (2)
bn-resnest BN, global average pool, linear              appendix B.2
a-resnest  sum of linear heads H_i on pooled v_0..v_L   eq. (4)
densenest  global average pool, linear W_{L+1}          eq. (9)
========== ============================================ ===================
"""
import dataclasses
import fnmatch
import re

from nestzoo.specs import DenseNetSpec, ResNetSpec

ARCHS = {
    "resnet20": ResNetSpec(blocks=(3, 3, 3), width=(16, 32, 64)),
    "resnet110": ResNetSpec(blocks=(18, 18, 18), width=(16, 32, 64)),
    "wrn16-8": ResNetSpec(blocks=(2, 2, 2), width=(128, 256, 512)),
    "wrn40-4": ResNetSpec(blocks=(6, 6, 6), width=(64, 128, 256)),
    # DenseNet paper, Table 2 (CIFAR): DenseNet (L=40, k=12) and DenseNet-BC (L, k)
    "densenet40-12": DenseNetSpec.from_layers(40, features=12),
    "densenet-bc100-12": DenseNetSpec.from_layers(100, features=12, pointwise=True, compression=0.5),
    "densenet-bc250-24": DenseNetSpec.from_layers(250, features=24, pointwise=True, compression=0.5),
    "densenet-bc190-40": DenseNetSpec.from_layers(190, features=40, pointwise=True, compression=0.5),
}
VECTOR_ARCH = "mlp"  # the arch name that selects the vector-valued family
FAMILIES = ("resnet", "densenet")  # the specs' `family`


@dataclasses.dataclass(frozen=True)
class Head:
    """How the last representation x_L reaches the predictor; `families`: those that have this variant
    (not part of a head's equality: the DenseNEst's head is the ResNEst's)."""

    final_bn: bool = False
    final_relu: bool = False
    augmented: bool = False  # eq. (4): the predictor reads every feature v_i
    families: tuple = dataclasses.field(default=("resnet",), compare=False)


# A new variant is one entry here (and its builder in nestzoo.builders).
HEADS = {
    "standard": Head(final_bn=True, final_relu=True, families=FAMILIES),
    "resnest": Head(),
    "bn-resnest": Head(final_bn=True),
    "a-resnest": Head(augmented=True),
    "densenest": Head(families=("densenet",)),  # eq. (9): x_L reaches W_{L+1} with no BN and no ReLU
}
FAMILY_VARIANTS = {family: tuple(v for v, head in HEADS.items() if family in head.families) for family in FAMILIES}

_DENSENET_NAME = re.compile(r"densenet-?(bc)?-?\(?(?:l=)?(\d+)[-,]*(?:k=)?(\d+)\)?")


def canonical(name):
    """Lower-case a typed name and drop the dash between letters and digits.

    "WRN-40-4" -> "wrn40-4", "ResNet_110" -> "resnet110", "A-ResNEst" -> "a-resnest",
    "DenseNet-BC-100-12" or "DenseNet-BC (L=100, k=12)" -> "densenet-bc100-12".
    """
    name = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    dense = _DENSENET_NAME.fullmatch(name)
    if dense:
        return f"densenet{'-bc' if dense.group(1) else ''}{dense.group(2)}-{dense.group(3)}"
    return re.sub(r"([a-z])-(?=\d)", r"\1", name)


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


def canonical_variant(variant, family):
    """Map a typed variant name ("AResNEst", "bn_resnest", "ResNet") to its key."""
    typed = canonical(variant).replace("-", "")
    choices = {v.replace("-", ""): v for v in FAMILY_VARIANTS[family]}
    choices[family] = "standard"
    if typed not in choices:
        raise ValueError(
            f"unknown {family} variant {variant!r}; valid choices: {', '.join(FAMILY_VARIANTS[family])}"
        )
    return choices[typed]


def list_models(pattern=None):
    """Sorted names of every registered arch.variant, optionally only those matching `pattern`.

    pattern: a shell-style wildcard as timm's (``"wrn*"``, ``"*.a-resnest"``); text
    without a wildcard matches names containing it ("wrn16").
    """
    names = [f"{arch}.{variant}" for arch, spec in ARCHS.items() for variant in FAMILY_VARIANTS[spec.family]]
    if pattern is not None:
        pattern = str(pattern).lower()
        if not any(c in pattern for c in "*?["):
            pattern = f"*{canonical(pattern)}*"
        names = fnmatch.filter(names, pattern)
    return sorted(names)


def parse_name(name):
    """(family, arch, variant) of a registry name "arch.variant", accepting typed spellings."""
    arch, sep, variant = str(name).rpartition(".")
    if not sep:
        raise ValueError(f"model names are 'arch.variant'; got {name!r}; see nestzoo.list_models()")
    family = get_spec(arch).family
    return family, canonical(arch), canonical_variant(variant, family)


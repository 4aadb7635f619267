"""Models by name: ``"{arch}.{variant}"``, as timm's ``create_model``."""
from nestzoo import models, specs


def list_models(pattern=None):
    """Sorted names of every registered arch x variant, optionally containing `pattern`."""
    names = [
        f"{arch}.{variant}"
        for arch, spec in specs.ARCHS.items()
        for variant in models.FAMILY_VARIANTS[spec.family]
    ]
    if pattern is not None:
        names = [n for n in names if specs.canonical(pattern) in n]
    return sorted(names)


def create_model(name, **kwargs):
    """Build a registered model by name, e.g. ``create_model("wrn40-4.a-resnest", classes=100)``.

    Keyword arguments are those of the builders (input_shape, classes, ...).
    """
    arch, sep, variant = str(name).rpartition(".")
    if not sep:
        raise ValueError(f"model names are 'arch.variant'; got {name!r}; see nestzoo.list_models()")
    spec = specs.get_spec(arch)
    return models.build_model(spec.family, variant, arch, **kwargs)

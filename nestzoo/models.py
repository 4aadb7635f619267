"""The model builders: one backbone, several heads.

Every variant of a family shares the backbone (the expansion W_0 and the blocks);
the variants differ only in how the final representation reaches the predictor
(REFERENCE.md, "Heads"):

========== ============================================ ===================
variant    head                                         paper
========== ============================================ ===================
standard   BN, ReLU, global average pool, linear        pre-activation ResNet
resnest    global average pool, linear W_{L+1}          eq. (2)
bn-resnest BN, global average pool, linear              appendix B.2
a-resnest  sum of linear heads H_i on pooled v_0..v_L   eq. (4)
========== ============================================ ===================

The A-ResNEst deletes the last block's W_L (and with it x_L), the final BN and the
final linear layer. Head layer names: ``final_bn``, ``final_relu``, ``avg_pool``,
``logits`` (W_{L+1}, or the sum of the H_i named ``head{i}`` on ``pool{i}``) and
``predictions`` (the classifier activation, always float32).
"""
import dataclasses
import os

import h5py
import keras
from keras import layers

from nestzoo import specs
from nestzoo.blocks import residual_block
from nestzoo.layers import batch_norm, conv, linear

POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class Head:
    """How the last representation x_L reaches the predictor."""

    final_bn: bool = False
    final_relu: bool = False
    augmented: bool = False  # eq. (4): the predictor reads every feature v_i


HEADS = {
    "standard": Head(final_bn=True, final_relu=True),
    "resnest": Head(),
    "bn-resnest": Head(final_bn=True),
    "a-resnest": Head(augmented=True),
}
FAMILY_VARIANTS = {"resnet": ("standard", "resnest", "bn-resnest", "a-resnest")}


def canonical_variant(variant, family):
    """Map a typed variant name ("AResNEst", "bn_resnest", "ResNet") to its key."""
    typed = specs.canonical(variant).replace("-", "")
    choices = {v.replace("-", ""): v for v in FAMILY_VARIANTS[family]}
    choices[family] = "standard"
    if typed not in choices:
        raise ValueError(
            f"unknown {family} variant {variant!r}; valid choices: {', '.join(FAMILY_VARIANTS[family])}"
        )
    return choices[typed]


def resnet_spec(arch=None, *, depths=None, widths=None, features=None, block="basic", depth=None):
    """A named ResNet spec, or a custom one from per-stage lists or a total depth."""
    custom = {"depths": depths, "widths": widths, "features": features, "depth": depth}
    if arch is not None:
        given = [k for k, v in custom.items() if v is not None]
        if given or block != "basic":
            raise ValueError(f"give either arch={arch!r} or a custom network ({', '.join(given) or 'block'}), not both")
        return specs.get_spec(arch)
    if widths is None:
        raise ValueError(f"give arch (one of {', '.join(specs.ARCHS)}) or widths for a custom network")
    if depth is not None:
        if depths is not None:
            raise ValueError("give depths (blocks per stage) or depth (total layers), not both")
        return specs.ResNetSpec.from_depth(depth, widths, features, block)
    if depths is None:
        raise ValueError("a custom network needs depths (blocks per stage) or depth (total layers)")
    return specs.ResNetSpec(depths, widths, features, block)


def resnet_backbone(v0, spec, last_residual=True):
    """W_0 and the residual blocks; returns x_L (None without the last residual) and [v_0..v_L]."""
    x = conv(v0, spec.widths[0], 3, name="expansion")  # x_0 = W_0 x
    basis = [v0]  # v_0 = x
    for i, _, width, features, stride in spec.stage_blocks():
        residual = last_residual or i < spec.num_blocks
        x, v = residual_block(x, width, features, stride, spec.block, f"block{i}", residual)
        basis.append(v)
    return x, basis


BACKBONES = {specs.ResNetSpec: resnet_backbone}
SPEC_FACTORIES = {"resnet": resnet_spec}


def _pool(x, pooling, name):
    """Global pooling of an image representation; vectors pass through."""
    if len(x.shape) == 2:
        return x
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    return pool(name=name)(x)


def representation(x_last, basis, head):
    """The tensors that reach the predictor: the final x_L after the head's BN/ReLU, or v_0..v_L."""
    if head.augmented:
        return basis
    if head.final_bn:
        x_last = batch_norm(x_last, "final_bn")
    if head.final_relu:
        x_last = layers.ReLU(name="final_relu")(x_last)
    return [x_last]


def predictor(reps, classes, classifier_activation):
    """Linear predictor on the pooled representation: W_{L+1}, eq. (2), or sum_i H_i v_i, eq. (4)."""
    if len(reps) == 1:
        logits = linear(_pool(reps[0], "avg", "avg_pool"), classes, "logits")
    else:
        heads = [linear(_pool(v, "avg", f"pool{i}"), classes, f"head{i}") for i, v in enumerate(reps)]
        logits = layers.Add(name="logits")(heads)
    return layers.Activation(classifier_activation, dtype="float32", name="predictions")(logits)


def _check_options(spec, head, input_shape, classes, include_top, pooling, weights):
    """Validate the Keras Applications options before any layer is made."""
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be an integer >= 1, got {classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be (height, width, channels) of positive integers, got {input_shape!r}")
    least = spec.downsampling
    if shape[0] < least or shape[1] < least:
        raise ValueError(
            f"input {shape[0]}x{shape[1]} is too small: this network downsamples by {least}, "
            f"so height and width must be at least {least}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if head.augmented and not include_top and pooling is None:
        raise ValueError(
            "an A-ResNEst's representation is the set of features v_0..v_L of different sizes; "
            "without the top give pooling='avg' or 'max' (or use nestzoo.basis_model)"
        )
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights must be None or the path of a weights file; {weights!r} is not a file")
    return shape


def _load_weights(model, weights):
    """Load a weights file, refusing one whose variables do not fit the architecture.

    Keras loads mismatched files with warnings only, so the stored variables'
    shapes are compared with the model's first.
    """
    stored = []
    with h5py.File(weights, "r") as f:
        f.visititems(lambda _, obj: stored.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    expected = [tuple(w.shape) for w in model.weights]
    if sorted(stored) != sorted(expected):
        raise ValueError(
            f"weights file {weights!r} does not fit {model.name}: it holds {len(stored)} variables, "
            f"the architecture has {len(expected)}" + ("" if len(stored) != len(expected) else " of other shapes")
        )
    model.load_weights(weights)


def build_model(
    family,
    variant,
    arch=None,
    *,
    input_shape=(32, 32, 3),
    classes=10,
    include_top=True,
    pooling=None,
    classifier_activation="softmax",
    weights=None,
    name=None,
    **custom,
):
    """Build `variant` of a network of `family` (a named `arch` or a custom spec)."""
    variant = canonical_variant(variant, family)
    spec = SPEC_FACTORIES[family](arch, **custom)
    if spec.family != family:
        raise ValueError(f"{arch!r} is a {spec.family} architecture; use a {spec.family} builder")
    head = HEADS[variant]
    shape = _check_options(spec, head, input_shape, classes, include_top, pooling, weights)

    inputs = keras.Input(shape=shape, name="input")
    x_last, basis = BACKBONES[type(spec)](inputs, spec, last_residual=not head.augmented)
    reps = representation(x_last, basis, head)
    if include_top:
        outputs = predictor(reps, classes, classifier_activation)
    elif pooling is None:
        outputs = reps[0]
    else:
        pooled = [_pool(r, pooling, f"pool{i}" if len(reps) > 1 else f"{pooling}_pool") for i, r in enumerate(reps)]
        outputs = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="pooled_basis")(pooled)
    model = keras.Model(inputs, outputs, name=name or f"{specs.canonical(arch or 'custom')}_{variant}")
    if weights is not None:
        _load_weights(model, weights)
    return model


BUILDER_DOC = """Build a {title} ({paper}) as a functional ``keras.Model``.

    arch: a registered architecture ({archs}; spellings such as "WRN-40-4" or
        "ResNet-110" are accepted), or None for a custom network given by keyword:
        ``depths`` (blocks per stage) or ``depth`` (total layers, He et al. counting),
        ``widths`` (M per stage), ``features`` (K per stage), ``block``
        ("basic" or "bottleneck").
    input_shape: (height, width, channels), default (32, 32, 3).
    classes: number of outputs of the linear predictor.
    include_top: with False the model outputs the representation that reaches the
        predictor (pooled when ``pooling`` is "avg" or "max").
    pooling: None, "avg" or "max"; used only without the top.
    classifier_activation: activation of the float32 "predictions" layer, default
        "softmax"; None gives logits.
    weights: None (PyTorch-default random initialization) or the path of a
        ``.weights.h5`` file saved from the same architecture.
    name: the model's name.
    """


def _builder(family, variant, title, paper):
    def builder(arch=None, **kwargs):
        return build_model(family, variant, arch, **kwargs)

    builder.__name__ = builder.__qualname__ = title
    builder.__doc__ = BUILDER_DOC.format(title=title, paper=paper, archs=", ".join(specs.ARCHS))
    return builder


ResNet = _builder("resnet", "standard", "ResNet", "the standard pre-activation ResNet")
ResNEst = _builder("resnet", "resnest", "ResNEst", "eq. (2): no BN and no ReLU on x_L")
BNResNEst = _builder("resnet", "bn-resnest", "BNResNEst", "appendix B.2: BN and no ReLU on x_L")
AResNEst = _builder("resnet", "a-resnest", "AResNEst", "eq. (4): linear heads H_i on every feature")

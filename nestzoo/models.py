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
densenest  global average pool, linear W_{L+1}          eq. (9)
========== ============================================ ===================

The DenseNet family ("standard" is the DenseNet, "densenest" eq. (9)) shares the
heads; its backbone concatenates, eq. (8). With ``arch="mlp"`` either family is
vector-valued (inputs (N_in,), Dense layers; see ``nestzoo.specs.VectorResNetSpec``).

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
from nestzoo.blocks import (
    dense_block,
    dense_features,
    residual_block,
    transition,
    vector_features,
    vector_residual_block,
)
from nestzoo.layers import batch_norm, conv, linear, matrix

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
    "densenest": Head(),  # eq. (9): x_L reaches W_{L+1} with no BN and no ReLU
}
FAMILY_VARIANTS = {
    "resnet": ("standard", "resnest", "bn-resnest", "a-resnest"),
    "densenet": ("standard", "densenest"),
}


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
        return _named(arch, {**custom, "block": None if block == "basic" else block}, "resnet")
    if widths is None:
        names = [name for name, spec in specs.ARCHS.items() if spec.family == "resnet"] + [specs.VECTOR_ARCH]
        raise ValueError(f"give arch (one of {', '.join(names)}) or widths for a custom network")
    if depth is not None:
        if depths is not None:
            raise ValueError("give depths (blocks per stage) or depth (total layers), not both")
        return specs.ResNetSpec.from_depth(depth, widths, features, block)
    if depths is None:
        raise ValueError("a custom network needs depths (blocks per stage) or depth (total layers)")
    return specs.ResNetSpec(depths, widths, features, block)


def _named(arch, custom, family):
    """The registered spec of `arch`, refusing custom arguments given beside it."""
    given = [k for k, v in custom.items() if v is not None]
    if given:
        raise ValueError(f"give either arch={arch!r} or a custom network ({', '.join(given)}), not both")
    return specs.get_spec(arch, family)


def densenet_spec(arch=None, *, depths=None, depth=None, growth=None, bottleneck=None, compression=None, stem=None):
    """A named DenseNet spec, or a custom one from dense layers per stage or a total depth."""
    custom = {"growth": growth, "bottleneck": bottleneck, "compression": compression, "stem": stem}
    custom = {k: v for k, v in custom.items() if v is not None}
    if arch is not None:
        return _named(arch, {**custom, "depths": depths, "depth": depth}, "densenet")
    if (depths is None) == (depth is None):
        raise ValueError("a custom DenseNet needs one of depths (dense layers per stage) or depth (total layers)")
    if depth is not None:
        return specs.DenseNetSpec.from_depth(depth, **custom)
    return specs.DenseNetSpec(depths, **custom)


VECTOR_SPECS = {"resnet": specs.VectorResNetSpec, "densenet": specs.VectorDenseNetSpec}


def make_spec(family, arch, custom):
    """The spec a `family` builder makes of `arch` and the custom keywords; "mlp" is vector-valued."""
    if arch is None or specs.canonical(arch) != specs.VECTOR_ARCH:
        return SPEC_FACTORIES[family](arch, **custom)
    spec_type = VECTOR_SPECS[family]
    fields = [f.name for f in dataclasses.fields(spec_type)]
    unknown = sorted(set(custom) - set(fields))
    if unknown:
        raise ValueError(f"arch={arch!r} ({family} family) takes {', '.join(fields)}; got {', '.join(unknown)}")
    return spec_type(**custom)


def resnet_backbone(v0, spec, last_residual=True):
    """W_0 and the residual blocks; returns x_L (None without the last residual) and [v_0..v_L]."""
    x = conv(v0, spec.widths[0], 3, name="expansion")  # x_0 = W_0 x
    basis = [v0]  # v_0 = x
    for i, _, width, features, stride in spec.stage_blocks():
        residual = last_residual or i < spec.num_blocks
        x, v = residual_block(x, width, features, stride, spec.block, f"block{i}", residual)
        basis.append(v)
    return x, basis


def densenet_backbone(v0, spec, last_residual=True):
    """The stem, the dense layers of eq. (8) and the transitions; returns x_L and [v_0..v_L].

    The paper's DenseNEst has x_0 = x; the stem convolution (named ``expansion``, so
    taps read it as x_0) and the transitions between stages are the CIFAR DenseNet's
    additions: within a stage, x_i = concat(x_{i-1}, Q_i(x_{i-1})) exactly.
    """
    x = conv(v0, spec.stem, 3, name="expansion")
    basis = [v0]  # v_0 = x
    for i, stage, transition_channels in spec.stage_blocks():
        x, v = dense_block(x, dense_features(x, spec.growth, spec.bottleneck, f"block{i}"), f"block{i}")
        basis.append(v)
        if transition_channels is not None:
            x = transition(x, transition_channels, f"transition{stage + 1}")
    return x, basis


def vector_resnet_backbone(v0, spec, last_residual=True):
    """Eqs. (1)-(2) on vectors: x_0 = W_0 x (a matrix), then L blocks; returns x_L and [v_0..v_L]."""
    x = matrix(v0, spec.width, "expansion")
    basis = [v0]
    for i in range(1, spec.depth + 1):
        x, v = vector_residual_block(x, spec.bottleneck, spec.hidden, f"block{i}", last_residual or i < spec.depth)
        basis.append(v)
    return x, basis


def vector_densenet_backbone(v0, spec, last_residual=True):
    """Eq. (8) on vectors: x_0 = x, x_i = concat(x_{i-1}, Q_i(x_{i-1})); returns x_L and [v_0..v_L]."""
    x = layers.Identity(name="expansion")(v0)
    basis = [v0]
    for i in range(1, spec.depth + 1):
        x, v = dense_block(x, vector_features(x, spec.hidden, spec.growth, f"block{i}"), f"block{i}")
        basis.append(v)
    return x, basis


BACKBONES = {
    specs.ResNetSpec: resnet_backbone,
    specs.DenseNetSpec: densenet_backbone,
    specs.VectorResNetSpec: vector_resnet_backbone,
    specs.VectorDenseNetSpec: vector_densenet_backbone,
}
SPEC_FACTORIES = {"resnet": resnet_spec, "densenet": densenet_spec}


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
    if len(shape) not in (1, 3) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape must be (height, width, channels) or, with arch='mlp', (N_in,), "
            f"of positive integers; got {input_shape!r}"
        )
    if len(shape) != spec.input_rank:
        if spec.input_rank == 1:
            raise ValueError(f"arch='mlp' builds a vector-valued network: give input_shape=(N_in,), not {shape}")
        raise ValueError(
            f"this is an image network: give input_shape=(height, width, channels), not {shape}; "
            "use arch='mlp' for a vector-valued network"
        )
    least = spec.downsampling
    if len(shape) == 3 and (shape[0] < least or shape[1] < least):
        raise ValueError(
            f"input {shape[0]}x{shape[1]} is too small: this network downsamples by {least}, "
            f"so height and width must be at least {least}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if head.augmented and not include_top and pooling is None and len(shape) == 3:
        raise ValueError(
            "an A-ResNEst's representation is the set of features v_0..v_L of different sizes; "
            "without the top give pooling='avg' or 'max' (or use nestzoo.basis_model)"
        )
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights must be None or the path of a weights file; {weights!r} is not a file")
    return shape


def _outputs(classes, outputs, classifier_activation):
    """(classes, activation): ``classes`` (default 10) through the classifier activation,
    or ``outputs`` = N_o for regression, with no output activation."""
    if outputs is None:
        return (10 if classes is None else classes), classifier_activation
    if classes is not None:
        raise ValueError("give classes (a classifier) or outputs (regression, no output activation), not both")
    specs._positive_int("outputs", outputs)
    return outputs, None


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
    classes=None,
    outputs=None,
    include_top=True,
    pooling=None,
    classifier_activation="softmax",
    weights=None,
    name=None,
    **custom,
):
    """Build `variant` of a network of `family` (a named `arch` or a custom spec)."""
    variant = canonical_variant(variant, family)
    spec = make_spec(family, arch, custom)
    if spec.family != family:
        raise ValueError(f"{arch!r} is a {spec.family} architecture; use a {spec.family} builder")
    head = HEADS[variant]
    classes, classifier_activation = _outputs(classes, outputs, classifier_activation)
    shape = _check_options(spec, head, input_shape, classes, include_top, pooling, weights)

    inputs = keras.Input(shape=shape, name="input")
    x_last, basis = BACKBONES[type(spec)](inputs, spec, last_residual=not head.augmented)
    reps = representation(x_last, basis, head)
    if include_top:
        outputs = predictor(reps, classes, classifier_activation)
    elif pooling is None and len(reps) == 1:
        outputs = reps[0]
    else:
        pooled = [_pool(r, pooling, f"pool{i}" if len(reps) > 1 else f"{pooling}_pool") for i, r in enumerate(reps)]
        outputs = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="pooled_basis")(pooled)
    model = keras.Model(inputs, outputs, name=name or f"{specs.canonical(arch or 'custom')}_{variant}")
    if weights is not None:
        _load_weights(model, weights)
    return model


BUILDER_DOC = """Build a {title} ({paper}) as a functional ``keras.Model``.

    arch: a registered architecture ({archs}; {custom}
        ``arch="mlp"`` builds the vector-valued network on inputs (N_in,): {vector}
    input_shape: (height, width, channels), default (32, 32, 3); (N_in,) with "mlp".
    classes: number of classes of the linear predictor (default 10), read through
        ``classifier_activation``.
    outputs: instead of ``classes``, N_o outputs for regression: the linear
        predictor's output, with no activation.
    include_top: with False the model outputs the representation that reaches the
        predictor (pooled when ``pooling`` is "avg" or "max").
    pooling: None, "avg" or "max"; used only without the top.
    classifier_activation: activation of the float32 "predictions" layer, default
        "softmax"; None gives logits.
    weights: None (PyTorch-default random initialization) or the path of a
        ``.weights.h5`` file saved from the same architecture.
    name: the model's name.
    """


CUSTOM_DOC = {
    "resnet": """spellings such as "WRN-40-4" or
        "ResNet-110" are accepted), or None for a custom network given by keyword:
        ``depths`` (blocks per stage) or ``depth`` (total layers, He et al. counting),
        ``widths`` (M per stage), ``features`` (K per stage), ``block``
        ("basic" or "bottleneck").""",
    "densenet": """spellings such as "DenseNet-BC-100-12" or
        "DenseNet-BC (L=100, k=12)" are accepted), or None for a custom network given
        by keyword: ``depths`` (dense layers per stage) or ``depth`` (total layers:
        3n+4, or 6n+4 with the bottleneck), ``growth`` (k, default 12), ``bottleneck``
        (True for DenseNet-B), ``compression`` (in (0, 1], default 1), ``stem``.""",
}
VECTOR_DOC = {
    "resnet": """``width`` (M), ``depth``
        (L, the number of blocks), ``bottleneck`` (K, the width of each v_i) and
        ``hidden`` (widths of extra Dense-ReLU layers in G_i, default none).""",
    "densenet": """``depth`` (L, the number of
        blocks), ``growth`` (D, the width of each v_i) and ``hidden`` (widths of
        extra Dense-ReLU layers in Q_i, default none).""",
}


def _builder(family, variant, title, paper):
    def builder(arch=None, **kwargs):
        return build_model(family, variant, arch, **kwargs)

    archs = ", ".join(name for name, spec in specs.ARCHS.items() if spec.family == family)
    builder.__name__ = builder.__qualname__ = title
    builder.__doc__ = BUILDER_DOC.format(
        title=title, paper=paper, archs=archs, custom=CUSTOM_DOC[family], vector=VECTOR_DOC[family]
    )
    return builder


ResNet = _builder("resnet", "standard", "ResNet", "the standard pre-activation ResNet")
ResNEst = _builder("resnet", "resnest", "ResNEst", "eq. (2): no BN and no ReLU on x_L")
BNResNEst = _builder("resnet", "bn-resnest", "BNResNEst", "appendix B.2: BN and no ReLU on x_L")
AResNEst = _builder("resnet", "a-resnest", "AResNEst", "eq. (4): linear heads H_i on every feature")
DenseNet = _builder("densenet", "standard", "DenseNet", "the DenseNet: BN and ReLU on x_L")
DenseNEst = _builder("densenet", "densenest", "DenseNEst", "eqs. (8)-(9): concatenation, no BN and no ReLU on x_L")

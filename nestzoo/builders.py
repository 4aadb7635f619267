"""The public builders: a spec, its backbone and a head, as one functional ``keras.Model``.

``nestzoo.ResNet``, ``ResNEst``, ``BNResNEst`` and ``AResNEst`` build the ResNet
family's variants, ``nestzoo.DenseNet`` and ``DenseNEst`` the DenseNet family's; all
share `build_model`. With ``arch="mlp"`` either family is vector-valued.
"""
import dataclasses
import os

import h5py
import keras

from nestzoo import heads, optimizers, registry, specs  # optimizers: registers CoupledSGD for .keras files
from nestzoo.backbones import backbone

POOLINGS = (None, "avg", "max")
VECTOR_SPECS = {"resnet": specs.VectorResNetSpec, "densenet": specs.VectorDenseNetSpec}
IMAGE_KEYWORDS = {
    "resnet": ("blocks", "width", "features", "layers", "block"),
    "densenet": ("blocks", "features", "layers", "pointwise", "compression", "stem"),
}


def _custom_spec(family, custom):
    """An image spec from the custom keywords: per-stage `blocks`, or a total of `layers`."""
    layers = custom.pop("layers", None)
    if layers is not None and custom.get("blocks") is not None:
        raise ValueError("give blocks (per stage) or layers (in total), not both")
    if family == "resnet":
        if custom.get("width") is None:
            names = [name for name, spec in registry.ARCHS.items() if spec.family == "resnet"]
            raise ValueError(f"give arch (one of {', '.join(names + [registry.VECTOR_ARCH])}) "
                             "or width (M per stage) for a custom network")
        custom.setdefault("block", "basic")
        if layers is not None:
            return specs.ResNetSpec.from_layers(layers, **custom)
        if custom.get("blocks") is None:
            raise ValueError("a custom network needs blocks (per stage) or layers (in total)")
        return specs.ResNetSpec(**custom)
    if layers is not None:
        return specs.DenseNetSpec.from_layers(layers, **custom)
    if custom.get("blocks") is None:
        raise ValueError("a custom DenseNet needs blocks (dense layers per stage) or layers (in total)")
    return specs.DenseNetSpec(**custom)


def make_spec(family, arch, custom):
    """The spec a `family` builder makes of `arch` and the custom keywords given (not None)."""
    custom = {k: v for k, v in custom.items() if v is not None}
    if arch is not None and registry.canonical(arch) == registry.VECTOR_ARCH:
        fields = [f.name for f in dataclasses.fields(VECTOR_SPECS[family])]
        unknown = sorted(set(custom) - set(fields))
        if unknown:
            raise ValueError(f"arch={arch!r} ({family} family) takes {', '.join(fields)}; got {', '.join(unknown)}")
        return VECTOR_SPECS[family](**custom)
    if "hidden" in custom:
        raise ValueError("hidden (Dense-ReLU layers in G_i) is for vector-valued networks: give arch='mlp'")
    if arch is None:
        return _custom_spec(family, custom)
    if custom:
        raise ValueError(f"give either arch={arch!r} or a custom network ({', '.join(custom)}), not both")
    return registry.get_spec(arch, family)


def _input_shape(spec, input_shape):
    """`input_shape` as a tuple that fits `spec`, or a ValueError saying what fits."""
    wanted = "(N_in,)" if spec.input_rank == 1 else "(height, width, channels)"
    if not isinstance(input_shape, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
    ):
        raise ValueError(f"input_shape must be a tuple {wanted} of positive integers; got {input_shape!r}")
    shape = tuple(input_shape)
    if len(shape) != spec.input_rank:
        if spec.input_rank == 1:
            raise ValueError(f"arch='mlp' builds a vector-valued network: give input_shape=(N_in,), not {shape}")
        raise ValueError(f"this is an image network: give input_shape=(height, width, channels), not {shape}; "
                         "use arch='mlp' for a vector-valued network")
    least = spec.downsampling
    if len(shape) == 3 and (shape[0] < least or shape[1] < least):
        raise ValueError(f"input {shape[0]}x{shape[1]} is too small: this network downsamples by {least}, "
                         f"so height and width must be at least {least}")
    return shape


def _check_options(head, shape, include_top, pooling, weights):
    """Validate the Keras Applications options before any layer is made."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if head.augmented and not include_top and pooling is None and len(shape) == 3:
        raise ValueError("an A-ResNEst's representation is the set of features v_0..v_L of different sizes; "
                         "without the top give pooling='avg' or 'max' (or use nestzoo.basis_model)")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights must be None or the path of a weights file; {weights!r} is not a file")


def _outputs(classes, outputs, classifier_activation):
    """(units, activation): ``classes`` (default 10) through the classifier activation,
    or ``outputs`` = N_o for regression, with no output activation."""
    if outputs is None:
        classes = 10 if classes is None else classes
        specs.positive_int("classes", classes)
        return classes, classifier_activation
    if classes is not None:
        raise ValueError("give classes (a classifier) or outputs (regression, no output activation), not both")
    return specs.positive_int("outputs", outputs), None


def load_weights(model, weights):
    """Load a ``.weights.h5`` file, refusing one whose variables do not fit the architecture.

    Keras loads mismatched files with warnings only, so the shapes of the model
    variables stored (not the optimizer's, which a trainer's files also hold) are
    compared with the model's first.
    """
    stored = []
    with h5py.File(weights, "r") as f:
        for group in ("layers", "vars"):
            if group in f:
                f[group].visititems(lambda _, obj: stored.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    expected = [tuple(w.shape) for w in model.weights]
    if sorted(stored) != sorted(expected):
        raise ValueError(
            f"weights file {weights!r} does not fit {model.name}: it holds {len(stored)} model variables, "
            f"the architecture has {len(expected)}" + ("" if len(stored) != len(expected) else " of other shapes")
        )
    model.load_weights(weights)


def build_model(family, variant, arch=None, *, input_shape=(32, 32, 3), classes=None, outputs=None,
                include_top=True, pooling=None, classifier_activation="softmax", weights=None, name=None,
                **custom):
    """Build `variant` of a `family` network: a named `arch` or the custom keywords of its builder."""
    unknown = sorted(set(custom) - set(IMAGE_KEYWORDS[family]) - {"hidden", "width"})
    if unknown:
        raise ValueError(f"unknown keyword {', '.join(unknown)} for the {family} family")
    variant = registry.canonical_variant(variant, family)
    spec = make_spec(family, arch, custom)
    if spec.family != family:
        raise ValueError(f"{arch!r} is a {spec.family} architecture; use a {spec.family} builder")
    head = registry.HEADS[variant]
    units, activation = _outputs(classes, outputs, classifier_activation)
    shape = _input_shape(spec, input_shape)
    _check_options(head, shape, include_top, pooling, weights)

    inputs = keras.Input(shape=shape, name="input")
    x_last, basis = backbone(inputs, spec, head)
    reps = heads.representation(x_last, basis, head)
    top = heads.predictor(reps, units, activation) if include_top else heads.pooled(reps, pooling)
    model = keras.Model(inputs, top, name=name or f"{registry.canonical(arch or 'custom')}_{variant}")
    if weights is not None:
        load_weights(model, weights)
    return model


_OPTIONS_DOC = """
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
        ``.weights.h5`` file saved from the same architecture (a trainer's
        ``best.weights.h5`` included).
    name: the model's name (default "{{arch}}_{{variant}}").

    Returns a functional ``keras.Model``.
"""
_RESNET_DOC = """
    arch: a registered architecture ({archs}; typed spellings such as "WRN-40-4" or
        "ResNet-110" are accepted), "mlp" for the vector-valued network, or None for
        a custom network given by the keywords below.
    blocks: L, residual blocks per stage (an int: the same in every stage); with
        "mlp", the number of blocks.
    width: M, the width of the residual space per stage; with "mlp", one int.
    features: K, the width of each block's feature v_i per stage (default M, or M/4
        for ``block="pointwise"``); with "mlp", one int.
    layers: instead of ``blocks``, the total number of weighted layers (He et al.'s
        counting: 6n+2 for three stages of basic blocks, 9n+2 for pointwise ones).
    block: "basic" (G_i = conv3x3-BN-ReLU, W_i a 3x3 convolution) or "pointwise"
        (G_i = conv1x1-BN-ReLU-conv3x3-BN-ReLU, W_i a 1x1 convolution).
    hidden: "mlp" only: widths of extra Dense-ReLU layers at the start of G_i.
""" + _OPTIONS_DOC
_DENSENET_DOC = """
    arch: a registered architecture ({archs}; typed spellings such as
        "DenseNet-BC-100-12" or "DenseNet-BC (L=100, k=12)" are accepted), "mlp" for
        the vector-valued network, or None for a custom network given by the keywords
        below.
    blocks: dense layers per stage (an int: the same in each of the 3 stages); with
        "mlp", L, the number of blocks.
    features: the growth rate k, the width D_i of every feature v_i (default 12).
    layers: instead of ``blocks``, the total number of layers (3n+4, or 6n+4 with
        ``pointwise``).
    pointwise: DenseNet-B: a 1x1 convolution to 4k channels before the 3x3.
    compression: the fraction of channels a transition keeps, in (0, 1] (default 1).
    stem: channels of the first convolution (default 2k with ``pointwise``, else 16).
    hidden: "mlp" only: widths of extra Dense-ReLU layers at the start of Q_i.
""" + _OPTIONS_DOC


def ResNet(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
           input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
           classifier_activation="softmax", weights=None, name=None):
    """The standard pre-activation ResNet: BN and ReLU on x_L, then the linear predictor."""
    return build_model("resnet", "standard", **locals())


def ResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
            input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
            classifier_activation="softmax", weights=None, name=None):
    """The ResNEst, eq. (2): x_L reaches the linear predictor W_{L+1} with no BN and no ReLU."""
    return build_model("resnet", "resnest", **locals())


def BNResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
              input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
              classifier_activation="softmax", weights=None, name=None):
    """The BN-ResNEst (appendix B.2): a batch normalization on x_L, no ReLU."""
    return build_model("resnet", "bn-resnest", **locals())


def AResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
             input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
             classifier_activation="softmax", weights=None, name=None):
    """The augmented ResNEst, eq. (4): y = sum_i H_i v_i over the pooled features v_0..v_L."""
    return build_model("resnet", "a-resnest", **locals())


def DenseNet(arch=None, *, blocks=None, features=None, layers=None, pointwise=None, compression=None, stem=None,
             hidden=None, input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
             classifier_activation="softmax", weights=None, name=None):
    """The DenseNet (Huang et al.): BN and ReLU on the concatenated x_L, then the linear predictor."""
    return build_model("densenet", "standard", **locals())


def DenseNEst(arch=None, *, blocks=None, features=None, layers=None, pointwise=None, compression=None, stem=None,
              hidden=None, input_shape=(32, 32, 3), classes=None, outputs=None, include_top=True, pooling=None,
              classifier_activation="softmax", weights=None, name=None):
    """The DenseNEst, eqs. (8)-(9): the concatenated x_L reaches W_{L+1} with no BN and no ReLU."""
    return build_model("densenet", "densenest", **locals())


def _archs(family):
    return ", ".join(name for name, spec in registry.ARCHS.items() if spec.family == family)


for _builder in (ResNet, ResNEst, BNResNEst, AResNEst):
    _builder.__doc__ += "\n" + _RESNET_DOC.format(archs=_archs("resnet"))
for _builder in (DenseNet, DenseNEst):
    _builder.__doc__ += "\n" + _DENSENET_DOC.format(archs=_archs("densenet"))
del _builder

"""The public builders: a spec, its backbone and a head, as one `nestzoo.model.NestModel`.

``nestzoo.ResNet``, ``ResNEst``, ``BNResNEst`` and ``AResNEst`` build the ResNet
family's variants, ``nestzoo.DenseNet`` and ``DenseNEst`` the DenseNet family's; each
is a thin function with its own signature over the one factory, `build_model`, and
`create_model` builds a registered "arch.variant" by name. With ``arch="mlp"`` either
family is vector-valued.

They follow Keras Applications' conventions: ``input_shape`` (None for a variable
height and width), ``input_tensor``, ``include_top``, ``pooling``,
``classifier_activation`` and ``weights``; images follow
``keras.config.image_data_format()``.
"""
import dataclasses
import functools
import os

import keras

from nestzoo import heads, registry, saving, specs
from nestzoo.backbones import backbone
from nestzoo.basis import Identity
from nestzoo.model import NestInput, NestModel

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


def _input_shape(spec, input_shape, input_tensor, data_format):
    """The input shape: `input_shape`, or input_tensor's, or the default (32x32 RGB); a ValueError
    saying what fits `spec`. Images are (height, width, channels) or, under "channels_first",
    (channels, height, width); height and width may be None (a variable size)."""
    if input_tensor is not None:
        given = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != given:
            raise ValueError(f"input_shape {tuple(input_shape)} does not match input_tensor's shape {given}; "
                             "give one of them")
        input_shape = given
    first = data_format == "channels_first"
    if spec.input_rank == 1:
        wanted, example = "(N_in,)", "give input_shape=(N_in,)"
        if input_shape is None:
            raise ValueError(f"arch='mlp' builds a vector-valued network: {example}")
    else:
        wanted = "(channels, height, width)" if first else "(height, width, channels)"
        if input_shape is None:
            input_shape = (3, 32, 32) if first else (32, 32, 3)
    if not isinstance(input_shape, (tuple, list)):
        raise ValueError(f"input_shape must be a tuple {wanted}; got {input_shape!r}")
    shape = tuple(input_shape)
    if len(shape) != spec.input_rank:
        if spec.input_rank == 1:
            raise ValueError(f"arch='mlp' builds a vector-valued network: {example}, not {shape}")
        raise ValueError(f"this is an image network: give input_shape={wanted}, not {shape}; "
                         "use arch='mlp' for a vector-valued network")
    if spec.input_rank == 1:
        specs.positive_int(f"input_shape {wanted}: N_in", shape[0])
        return shape
    channels, spatial = (shape[0], shape[1:]) if first else (shape[-1], shape[:-1])
    specs.positive_int(f"input_shape {wanted}: channels", channels)
    for size in spatial:
        if size is not None:
            specs.positive_int(f"input_shape {wanted}: height and width (or None)", size)
    least = spec.downsampling
    if any(size is not None and size < least for size in spatial):
        raise ValueError(f"input {spatial[0]}x{spatial[1]} is too small: this network downsamples by {least}, "
                         f"so height and width must be at least {least}")
    return shape


@functools.cache
def _runs_channels_first(backend):
    """Whether this process's Keras `backend` runs a channels_first convolution (TensorFlow does on a
    CPU only with oneDNN, TF_ENABLE_ONEDNN_OPTS=1, which ``import nestzoo`` sets unless told otherwise)."""
    try:
        keras.ops.conv(keras.ops.zeros((1, 1, 1, 1)), keras.ops.zeros((1, 1, 1, 1)), data_format="channels_first")
    except Exception:  # noqa: BLE001 - each backend raises its own kind
        return False
    return True


def _check_data_format(data_format):
    """Refuse "channels_first" where this backend cannot run it, before any layer is made."""
    if data_format == "channels_first" and not _runs_channels_first(keras.backend.backend()):
        raise ValueError(
            f"keras.config.image_data_format() is 'channels_first', which the {keras.backend.backend()} backend "
            "cannot run here (TensorFlow runs it on a CPU only with oneDNN: TF_ENABLE_ONEDNN_OPTS=1, or on a GPU); "
            "call keras.config.set_image_data_format('channels_last') before building")


def _check_options(head, shape, include_top, pooling):
    """Validate the Keras Applications options before any layer is made."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if head.augmented and not include_top and pooling is None and len(shape) == 3:
        raise ValueError("an A-ResNEst's representation is the set of features v_0..v_L of different sizes; "
                         "without the top give pooling='avg' or 'max' (or use nestzoo.basis_model)")


def _resolve_weights(weights, arch, variant, units, outputs):
    """(file to load, preset directory or None) for ``weights=``, checked before any layer is made
    (`nestzoo.presets.resolve`: a weights file, a preset directory or URL, or a data set name)."""
    if weights is None:
        return None, None
    from nestzoo import presets

    name = f"{registry.canonical(arch)}.{variant}" if arch is not None and registry.canonical(arch) in registry.ARCHS \
        else None
    path, preset = presets.resolve(weights, name, None if outputs is not None else units)
    if preset is not None and outputs is not None:
        raise ValueError(f"the preset {preset} holds a classifier; build it with classes=, not outputs=")
    return path, preset


def _load_without_top(model, weights, family, variant, arch, shape):
    """Load a preset's weights into a model built without its top: through the full model (the preset's
    classes), layer by layer by name, as Keras Applications load ``include_top=False``."""
    from nestzoo import presets

    config, _ = presets.read_preset(os.path.dirname(weights), verify=False)
    full = build_model(family, variant, arch, input_shape=shape, classes=config["classes"], weights=None)
    saving.load_weights(full, weights)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())


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


def _input(shape, input_tensor, identity, options):
    """(source inputs, v_0): v_0 = x is the output of the `NestInput` named ``input`` (which carries
    the identity and options) on a new ``keras.Input`` named ``x``, or on `input_tensor` taken as
    Keras Applications take it (the model's inputs are then its source inputs)."""
    if input_tensor is None:
        x = keras.Input(shape=shape, name="x")
    elif not keras.backend.is_keras_tensor(input_tensor):
        x = keras.Input(tensor=input_tensor, shape=shape, name="x")
    else:
        x = input_tensor
    sources = keras.utils.get_source_inputs(x)
    return sources[0] if len(sources) == 1 else sources, NestInput(identity, options, name="input")(x)


def build_model(family, variant, arch=None, *, input_shape=None, input_tensor=None, classes=None, outputs=None,
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
    data_format = keras.config.image_data_format() if spec.input_rank == 3 else None
    shape = _input_shape(spec, input_shape, input_tensor, data_format)
    _check_options(head, shape, include_top, pooling)
    weights_file, preset = _resolve_weights(weights, arch, variant, units if include_top or classes else None,
                                            outputs)
    _check_data_format(data_format)

    arch = registry.canonical(arch) if arch is not None else None
    options = dict(input_shape=shape, classes=None if outputs else units, outputs=outputs, include_top=include_top,
                   pooling=pooling, classifier_activation=activation, dtype_policy=keras.config.dtype_policy().name,
                   data_format=data_format)
    inputs, v0 = _input(shape, input_tensor, Identity(spec, variant, arch), options)
    x_last, basis = backbone(v0, spec, head)
    reps = heads.representation(x_last, basis, head)
    top = heads.predictor(reps, units, activation) if include_top else heads.pooled(reps, pooling)
    model = NestModel(inputs, top, name=name or f"{arch or 'custom'}_{variant}")
    if preset is not None and not include_top:
        _load_without_top(model, weights_file, family, variant, arch, shape)
    elif weights_file is not None:
        saving.load_weights(model, weights_file)
    return model


def create_model(model_name, **kwargs):
    """Build a registered model by name, e.g. ``create_model("wrn40-4.a-resnest", classes=100)``.

    model_name: "arch.variant", one of `nestzoo.list_models()` (typed spellings accepted).
    Keyword arguments are those of the builders (input_shape, input_tensor, classes, ..., name).
    """
    family, arch, variant = registry.parse_name(model_name)
    return build_model(family, variant, arch, **kwargs)


_OPTIONS_DOC = """
    input_shape: (height, width, channels), or (channels, height, width) under
        ``keras.config.image_data_format() == "channels_first"``; height and width
        may be None (a model for any size at least the network's downsampling,
        checked when it is called). Default: input_tensor's shape, else 32x32 with 3
        channels. (N_in,) with "mlp".
    input_tensor: a Keras tensor (e.g. ``keras.Input(...)`` or a layer's output) to
        use as the input, as in Keras Applications; the model's inputs are its
        source inputs.
    classes: number of classes of the linear predictor (default 10), read through
        ``classifier_activation``.
    outputs: instead of ``classes``, N_o outputs for regression: the linear
        predictor's output, with no activation.
    include_top: with False the model outputs the representation that reaches the
        predictor (pooled when ``pooling`` is "avg" or "max").
    pooling: None, "avg" or "max"; used only without the top. The A-ResNEst's
        representation, features v_0..v_L of different sizes, has no unpooled
        form: it refuses pooling=None without the top on images.
    classifier_activation: activation of the float32 "predictions" layer, default
        "softmax"; None gives logits.
    weights: None (PyTorch-default random initialization); the path of a
        ``.weights.h5`` file saved from the same architecture (a trainer's
        ``best.weights.h5`` included); a data set name, "cifar10" (seed 0) or
        "cifar10:seed3", for the installed preset of this arch, variant and data
        set (``$NESTZOO_HOME/presets``, see `nestzoo.presets`); a preset directory;
        or the URL of a zipped preset with its sha256,
        ``https://.../preset.zip#sha256=<hex>`` (downloaded once, verified). A
        preset of another arch, variant or class count is refused; its weights'
        sha256 is checked before loading.
    name: the model's name (default "{{arch}}_{{variant}}").

    Returns a `nestzoo.model.NestModel`: a functional ``keras.Model`` whose
    ``identity`` (spec, variant, arch) and ``options`` survive ``.keras`` saving,
    loading and ``keras.models.clone_model``.
"""
_FAMILY_DOCS = {
    "resnet": """
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
""",
    "densenet": """
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
""",
}


def _builder(family):
    """Give a builder of `family` the docstring of its parameters (its body calls `build_model`)."""

    def document(build):
        archs = ", ".join(name for name, spec in registry.ARCHS.items() if spec.family == family)
        build.__doc__ += "\n" + _FAMILY_DOCS[family].format(archs=archs) + _OPTIONS_DOC
        return build

    return document


@_builder("resnet")
def ResNet(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
           input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True, pooling=None,
           classifier_activation="softmax", weights=None, name=None):
    """The standard pre-activation ResNet: BN and ReLU on x_L, then the linear predictor."""
    return build_model("resnet", "standard", **locals())


@_builder("resnet")
def ResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
            input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True, pooling=None,
            classifier_activation="softmax", weights=None, name=None):
    """The ResNEst, eq. (2): x_L reaches the linear predictor W_{L+1} with no BN and no ReLU."""
    return build_model("resnet", "resnest", **locals())


@_builder("resnet")
def BNResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
              input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True, pooling=None,
              classifier_activation="softmax", weights=None, name=None):
    """The BN-ResNEst (appendix B.2): a batch normalization on x_L, no ReLU."""
    return build_model("resnet", "bn-resnest", **locals())


@_builder("resnet")
def AResNEst(arch=None, *, blocks=None, width=None, features=None, layers=None, block=None, hidden=None,
             input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True, pooling=None,
             classifier_activation="softmax", weights=None, name=None):
    """The augmented ResNEst, eq. (4): y = sum_i H_i v_i over the pooled features v_0..v_L."""
    return build_model("resnet", "a-resnest", **locals())


@_builder("densenet")
def DenseNet(arch=None, *, blocks=None, features=None, layers=None, pointwise=None, compression=None, stem=None,
             hidden=None, input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True,
             pooling=None, classifier_activation="softmax", weights=None, name=None):
    """The DenseNet (Huang et al.): BN and ReLU on the concatenated x_L, then the linear predictor."""
    return build_model("densenet", "standard", **locals())


@_builder("densenet")
def DenseNEst(arch=None, *, blocks=None, features=None, layers=None, pointwise=None, compression=None, stem=None,
              hidden=None, input_shape=None, input_tensor=None, classes=None, outputs=None, include_top=True,
              pooling=None, classifier_activation="softmax", weights=None, name=None):
    """The DenseNEst, eqs. (8)-(9): the concatenated x_L reaches W_{L+1} with no BN and no ReLU."""
    return build_model("densenet", "densenest", **locals())

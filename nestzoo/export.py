"""SavedModel export for serving with TensorFlow Serving, and ONNX / LiteRT exports (TensorFlow only).

    from nestzoo import export
    export.export("runs/quick/resnet20.a-resnest/seed0")        # saved_models/resnet20_a-resnest/<next>/
    export.export(model, "saved_models", dataset="cifar10", name="mine", version=3)
    export.export_saved_model(model, "somewhere/1", dataset="digits")   # one exact directory
    export.export(run_dir, format="onnx")                  # .../<next>/model.onnx, nestzoo.json beside
    export.export(run_dir, format="litert", quantize="int8", calibration=256)   # see nestzoo.runtimes

The serving contract (``saved_models/README.md``):

* signature ``serving_default``, input ``images``: uint8 (None, H, W, C), the data
  set's storage format; the data set's standardization (x / 255 - mean) / std is in
  the graph. Outputs ``probabilities`` float32 (None, classes), ``class_ids`` int64
  (None,) and ``logits`` float32 (None, classes). The dtype is enforced: a float
  tensor is refused, not cast. A model built for any image size
  (``input_shape=(None, None, C)``) is served for any size: (None, None, None, C).
* signature ``standardized``: the same outputs from already-standardized float32
  ``inputs`` (None, H, W, C).
* regression models (``outputs=``, no classifier activation) output ``predictions``
  float32 (None, N_o) instead; vector-valued models (``arch="mlp"``) take float32
  ``inputs`` (None, N_in) as they were trained, with no standardization built in.
* mixed-precision models are served in float32 from their float32 weights.
* ``assets/nestzoo.json`` holds the metadata: registry name, variant, parameter
  count, standardization, class names, nestzoo's version, the run's test accuracy.

The graph is the model's forward pass rewritten for inference (no nestzoo or Keras
code is needed to serve it): the weights become constants and every batch
normalization that directly follows a convolution or Dense layer is folded into its
weights; the others become one multiply-add. ``fold_batch_norm=False`` exports the
Keras model's own call instead (slower, the reference the tests compare against).

An export is written into a temporary directory beside its target and renamed into
place, so a server polling ``saved_models/<name>/`` never sees a partial version; an
existing version is never overwritten, and a full disk is reported with the space
needed, leaving nothing behind. `load_export` loads a version back, naming the
damaged file of one that does not load.
"""
import dataclasses
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nestzoo import basis
from nestzoo.data.catalog import DATASETS, get_spec
from nestzoo.data.pipeline import standardizer
from nestzoo.saving import check_finite, load_model
from nestzoo.specs import positive_int

METADATA_FILE = "nestzoo.json"
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TMP_PREFIX = ".tmp-export-"
#: The tolerance within which the folded graph equals the Keras model (float32 rounding).
RTOL, ATOL = 1e-4, 1e-5
EXPORT_DIRECTORY = "an export directory (saved_models/<name> or saved_models/<name>/<version>)"


class NoSpaceError(OSError):
    """The file system holding an export's folder is full."""


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A checked nestzoo model to export (`load_source`), its identity and what is known about its run."""

    model: keras.Model
    identity: basis.Identity
    path: Path = None
    run_dir: Path = None
    config: dict = dataclasses.field(default_factory=dict)
    summary: dict = dataclasses.field(default_factory=dict)


def read_json(path):
    """The parsed JSON file `path`, None when it is missing; a file that does not parse is named."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}): it is damaged; restore or remove it") from None


def _servable_identity(model, where):
    """The model's identity; a model nestzoo did not build is refused, since its preprocessing and
    outputs would be guesses, and so is one without its predictor."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"{where} is not a Keras model")
    try:
        identity = basis.identity(model, where)
    except basis.NotNestzooModel as error:
        raise basis.NotNestzooModel(
            f"{error}. nestzoo exports only the models of its builders (the input standardization and outputs "
            "of other models are unknown); export other Keras models with keras.export.ExportArchive") from None
    if "predictions" not in basis.top_layers(model):
        raise ValueError(f"{where} is built without its top (include_top=False): it outputs features, not "
                         "predictions; export a model with its predictor")
    if model.options["data_format"] == "channels_first":
        raise ValueError(f"{where} is built channels_first; the serving signature takes images as the data set "
                         "stores them (channels last): build the same model after "
                         "keras.config.set_image_data_format('channels_last') and copy the weights into it "
                         "(twin.set_weights(model.get_weights()): they do not depend on the data format)")
    return identity


def load_source(source):
    """A checked `Source` from a keras.Model, a .keras file, a run directory (holding model.keras, config.json)
    or a preset directory (`nestzoo.presets`).

    The one gate of every export: a model nestzoo did not build, one without its top
    and one holding non-finite weights are refused here. A .keras file inside a run
    directory reads that run's config and summary too.
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, keras.Model):
        identity = _servable_identity(source, "the model")
        check_finite(source, "the model")
        return Source(source, identity)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"expected a keras.Model, a .keras file or a run directory, got {type(source).__name__}")
    path = Path(source)
    from nestzoo import presets

    if presets.is_preset(path):
        # a preset (nestzoo convert / publish): its data set and measured accuracy
        model = presets.load_preset(path)
        _, metadata = presets.read_preset(path, verify=False)  # verified as the weights were loaded
        accuracy = metadata.get("test_accuracy")
        return Source(model, _servable_identity(model, repr(str(path))), path=path,
                      config={"data": metadata.get("dataset"), "preset": metadata},
                      summary={} if accuracy is None else {"test_accuracy": accuracy / 100})
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            raise ValueError(f"{str(path)!r} is a SavedModel already; give a run directory or a .keras file")
        if not (path / "model.keras").is_file():
            found = sorted(str(p.parent) for p in path.glob("**/model.keras"))[:5]
            hint = f"; run directories below it: {', '.join(found)}" if found else (
                "; a run directory gets its model.keras when training finishes")
            raise ValueError(f"{str(path)!r} holds no model.keras: expected a run directory "
                             f"(runs/<name>/<model>/seed<k>) or a .keras file{hint}")
        run_dir, path = path, path / "model.keras"
    elif path.is_file():
        run_dir = path.parent if (path.parent / "config.json").is_file() else None
    else:
        raise ValueError(f"{str(path)!r} does not exist: expected a run directory or a .keras file")
    model = load_model(path, compile=False)  # refuses non-finite weights
    identity = _servable_identity(model, repr(str(path)))
    config = read_json(run_dir / "config.json") if run_dir else None
    summary = read_json(run_dir / "summary.json") if run_dir else None
    return Source(model, identity, path=path, run_dir=run_dir, config=config or {}, summary=summary or {})


def class_names(dataset):
    """The class names of a data set where they are known offline, else None.

    CIFAR-100's fine label names come from tensorflow-datasets' metadata when the data
    set is prepared on this machine (they are not shipped with the package).
    """
    if dataset == "cifar10":
        return list(CIFAR10_CLASS_NAMES)
    if dataset == "digits":
        return [str(i) for i in range(10)]
    if dataset == "cifar100":
        try:
            import tensorflow_datasets as tfds

            builder = tfds.builder("cifar100")
            if builder.is_prepared():
                return list(builder.info.features["label"].names)
        except Exception:  # tfds missing or not prepared: indices are shown instead
            pass
    return None


# --------------------------------------------------------------------------- the forward pass


def _inbound(layer):
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def _activation(name, x):
    if name in ("linear", None):
        return x
    if name == "relu":
        return tf.nn.relu(x)
    if name == "softmax":
        return tf.nn.softmax(x)
    if name == "sigmoid":
        return tf.sigmoid(x)
    raise ValueError(f"unsupported activation {name!r} in the folded graph; export with fold_batch_norm=False")


def _bn_affine(layer):
    """(scale, shift) of an inference-mode BatchNormalization, in float64."""
    var = np.asarray(layer.moving_variance.numpy(), np.float64)
    mean = np.asarray(layer.moving_mean.numpy(), np.float64)
    gamma = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else 1.0
    beta = np.asarray(layer.beta.numpy(), np.float64) if layer.center else 0.0
    scale = gamma / np.sqrt(var + layer.epsilon)
    return scale, beta - mean * scale


class FoldedGraph:
    """The forward pass of a functional nestzoo model as TensorFlow ops on constants.

    Batch normalizations that are the only consumer of a convolution or Dense layer
    are folded into its kernel and bias; the others become x * scale + shift. Calling
    it returns {"logits": ..., "predictions": ...} in float32 (no "logits" where the
    model has no such layer).
    """

    SIMPLE = {"ReLU", "Add", "Concatenate", "ZeroPadding2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
              "AveragePooling2D", "MaxPooling2D", "Identity", "Activation", "InputLayer", "NestInput"}

    def __init__(self, model):
        self.ops = []  # (name, kind, inputs, params)
        layers = {layer.name: layer for layer in model.layers}
        consumers = {}
        for layer in model.layers:
            if type(layer).__name__ != "InputLayer":
                for name in _inbound(layer):
                    consumers.setdefault(name, []).append(layer.name)
        folded = {}  # BN name -> the conv/dense it was folded into
        params = {}
        for layer in model.layers:
            kind = type(layer).__name__
            if kind in ("Conv2D", "Dense"):
                kernel = np.asarray(layer.kernel.numpy(), np.float64)
                bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
                after = consumers.get(layer.name, [])
                activation = layer.activation.__name__
                if (len(after) == 1 and type(layers[after[0]]).__name__ == "BatchNormalization"
                        and activation == "linear" and layers[after[0]].axis in (-1, len(layer.output.shape) - 1)):
                    scale, shift = _bn_affine(layers[after[0]])
                    kernel, bias = kernel * scale, bias * scale + shift
                    folded[after[0]] = layer.name
                params[layer.name] = (kernel, bias, activation)
        self.folded = sorted(folded)
        for layer in model.layers:
            kind = type(layer).__name__
            inputs = [] if kind == "InputLayer" else _inbound(layer)
            if kind == "BatchNormalization" and layer.name in folded:
                self.ops.append((layer.name, "Identity", inputs, None))
                continue
            if kind in ("Conv2D", "Dense"):
                kernel, bias, activation = params[layer.name]
                config = layer.get_config()
                if kind == "Conv2D" and (config["data_format"] != "channels_last" or config["groups"] != 1):
                    raise ValueError(f"layer {layer.name}: only channels_last, ungrouped convolutions fold")
                self.ops.append((layer.name, kind, inputs, dict(
                    kernel=kernel.astype(np.float32), bias=bias.astype(np.float32),
                    use_bias=bool(np.any(bias)), activation=activation,
                    strides=config.get("strides"), padding=str(config.get("padding", "valid")).upper(),
                    dilation=config.get("dilation_rate"))))
            elif kind == "BatchNormalization":
                if layer.axis not in (-1, len(layer.output.shape) - 1):
                    raise ValueError(f"layer {layer.name}: only last-axis batch normalization folds")
                scale, shift = _bn_affine(layer)
                self.ops.append((layer.name, "Affine", inputs,
                                 dict(scale=scale.astype(np.float32), shift=shift.astype(np.float32))))
            elif kind in self.SIMPLE:
                config = layer.get_config()
                if kind == "ReLU" and (config.get("max_value") is not None or config.get("negative_slope")
                                       or config.get("threshold")):
                    raise ValueError(f"layer {layer.name}: a clipped or leaky ReLU does not fold")
                if kind.startswith("Global") and config.get("keepdims"):
                    raise ValueError(f"layer {layer.name}: keepdims pooling does not fold")
                self.ops.append((layer.name, kind, inputs, config))
            else:
                raise ValueError(f"layer {layer.name} ({kind}) has no folded form; export with fold_batch_norm=False")
        self.input_name = model.layers[0].name
        self.output_name = model.layers[-1].name
        logits = basis.top_layers(model).get("logits")
        self.logits_name = logits.name if logits is not None else None

    @property
    def constant_bytes(self):
        """The bytes of the graph's constants: kernels, the biases used, the affine maps' scales and shifts."""
        total = 0
        for _, kind, _, p in self.ops:
            if kind in ("Conv2D", "Dense"):
                total += p["kernel"].nbytes + (p["bias"].nbytes if p["use_bias"] else 0)
            elif kind == "Affine":
                total += p["scale"].nbytes + p["shift"].nbytes
        return total

    def __call__(self, x):
        values = {}
        for name, kind, inputs, p in self.ops:
            args = [values[i] for i in inputs]
            if kind == "InputLayer":
                y = x
            elif kind in ("Identity", "NestInput"):  # NestInput: v_0 = x (the size is checked by the signature)
                y = args[0]
            elif kind == "Conv2D":
                y = tf.nn.conv2d(args[0], p["kernel"], p["strides"], p["padding"], dilations=p["dilation"])
                y = tf.nn.bias_add(y, p["bias"]) if p["use_bias"] else y
                y = _activation(p["activation"], y)
            elif kind == "Dense":
                y = tf.matmul(args[0], p["kernel"])
                y = tf.nn.bias_add(y, p["bias"]) if p["use_bias"] else y
                y = _activation(p["activation"], y)
            elif kind == "Affine":
                y = args[0] * p["scale"] + p["shift"]
            elif kind == "ReLU":
                y = tf.nn.relu(args[0])
            elif kind == "Activation":
                y = _activation(p["activation"], args[0])
            elif kind == "Add":
                y = tf.add_n(args)
            elif kind == "Concatenate":
                y = tf.concat(args, axis=p["axis"])
            elif kind == "ZeroPadding2D":
                (top, bottom), (left, right) = p["padding"]
                y = tf.pad(args[0], [[0, 0], [top, bottom], [left, right], [0, 0]])
            elif kind == "GlobalAveragePooling2D":
                y = tf.reduce_mean(args[0], axis=[1, 2])
            elif kind == "GlobalMaxPooling2D":
                y = tf.reduce_max(args[0], axis=[1, 2])
            elif kind in ("AveragePooling2D", "MaxPooling2D"):
                pool = tf.nn.avg_pool2d if kind == "AveragePooling2D" else tf.nn.max_pool2d
                y = pool(args[0], p["pool_size"], p["strides"] or p["pool_size"], p["padding"].upper())
            values[name] = y
        out = {"predictions": values[self.output_name]}
        if self.logits_name is not None:
            out["logits"] = values[self.logits_name]
        return out


def keras_forward(model):
    """The Keras model's own call, returning {"logits", "predictions"} in float32 (the reference)."""
    logits = basis.top_layers(model).get("logits")
    outputs = [model.output] + ([logits.output] if logits is not None else [])
    both = keras.Model(model.inputs, outputs)

    def forward(x):
        out = both(x, training=False)
        result = {"predictions": tf.cast(out[0], tf.float32)}
        if len(out) > 1:
            result["logits"] = tf.cast(out[1], tf.float32)
        return result

    forward.keras_model = both
    return forward


# --------------------------------------------------------------------------- the serving module


def _predictions_activation(model):
    """The name of the predictions layer's activation ("softmax", "linear", ...)."""
    activation = getattr(basis.top_layers(model)["predictions"], "activation", None)
    return getattr(activation, "__name__", "linear")


def _task(model, task):
    if task is not None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification', 'regression' or None (from the model), not {task!r}")
        return task
    return "regression" if model.options["outputs"] is not None else "classification"


def _outputs_of(model, forward, task):
    """x -> the signature's outputs: a classifier's {"probabilities", "class_ids", "logits"} (the
    softmax of its logits where its predictions are linear), a regressor's {"predictions"}."""
    linear = _predictions_activation(model) == "linear"

    def outputs(x):
        out = forward(x)
        if task == "regression":
            return {"predictions": out["predictions"]}
        logits = out.get("logits", out["predictions"])
        probabilities = tf.nn.softmax(logits) if linear else out["predictions"]
        return {"probabilities": probabilities, "class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
                "logits": logits}
    return outputs


def _check_shape(x, spec, least):
    """An assertion failing with the expected spec when `x` is not a batch of spec.shape[1:] (signatures
    check only the dtype); a None size (a model built for any image size) takes any size of at least
    `least` pixels (the network's downsampling)."""
    expected = list(spec.shape[1:])
    known = [i for i, size in enumerate(expected) if size is not None]
    actual = tf.shape(x)

    def fits():
        sizes = actual[1:]
        same = tf.reduce_all(tf.equal(tf.gather(sizes, known), [expected[i] for i in known]))
        return tf.logical_and(same, tf.reduce_all(sizes[:2] >= least)) if len(expected) == 3 else same

    ok = tf.cond(tf.equal(tf.size(actual), len(expected) + 1), fits, lambda: tf.constant(False))
    described = f"{spec.dtype.name} (None, {', '.join(map(str, expected))})"
    if None in expected and least > 1:
        described += f" of at least {least}x{least} pixels"
    return tf.debugging.Assert(ok, [f"{spec.name} must be {described}; got shape", actual])


def _compiled(body, spec, jit_compile, least=1):
    """`body` as a tf.function of `spec`, checking the input's shape, XLA-compiled with `jit_compile`."""
    def checked(x):
        with tf.control_dependencies([_check_shape(x, spec, least)]):  # before any op that could fail on the shape
            x = tf.identity(x)
        return body(x)

    checked.__name__ = body.__name__
    return tf.function(checked, input_signature=[spec], jit_compile=bool(jit_compile))


def dataset_of(source, dataset=None):
    """The data set whose standardization an export applies: `dataset`, else the run's (config.json;
    a run on the user's own tf.data pipelines or arrays names none of nestzoo's)."""
    trained_on = source.config.get("data")
    if trained_on not in DATASETS:
        trained_on = None
    if dataset is not None and trained_on is not None and dataset != trained_on:
        raise ValueError(f"the run was trained on {trained_on} (its config.json), not {dataset}; "
                         "leave --dataset out to use the run's")
    return dataset or trained_on


def _image_standardizer(shape, dataset):
    """The data set's standardization of uint8 images of `shape` (H and W may be None: any size)."""
    if dataset is None:
        raise ValueError("an image model's serving signature takes uint8 images and standardizes them as in "
                         "training: give the data set (--dataset, dataset=), or export a run directory, whose "
                         "config.json names it")
    spec = get_spec(dataset)
    fits = shape[-1] == spec.input_shape[-1] if None in shape[:2] else shape == spec.input_shape
    if not fits:
        raise ValueError(f"the model takes {shape} inputs, {dataset} images are {spec.input_shape}")
    return standardizer(spec.mean, spec.std, shape), {
        "dataset": dataset, "mean": list(spec.mean), "std": list(spec.std),
        "formula": "(images / 255 - mean) / std, per channel"}


def serving_module(model, *, dataset=None, task=None, fold_batch_norm=True, jit_compile=False):
    """A tf.Module whose `serve` (and, for images, `serve_standardized`) compute the serving contract.

    model: a nestzoo keras.Model, a .keras file, a run directory or a `Source`.
    dataset: the data set whose standardization the uint8 endpoint applies (required
    for image models, default the run's). task: None (the model's: regression when
    built with ``outputs=``, else classification), "classification" or "regression".
    A model built for any image size (input_shape=(None, None, C)) is served for any size.
    """
    source = load_source(model)
    model = source.model
    dataset = dataset_of(source, dataset)
    task = _task(model, task)
    shape = tuple(model.input.shape[1:])
    forward = FoldedGraph(model) if fold_batch_norm else keras_forward(model)
    outputs = _outputs_of(model, forward, task)
    module = tf.Module()
    module.source, module.task, module.input_shape, module.forward = source, task, shape, forward
    module.fold_batch_norm, module.jit_compile = bool(fold_batch_norm), bool(jit_compile)
    if fold_batch_norm is False:
        module.keras_model = forward.keras_model  # tracked: its variables are saved with the graph
    if len(shape) == 1:  # vector-valued: float features in, as trained
        if dataset is not None:
            raise ValueError(f"the model takes vectors of {shape[0]} features; a data set's image standardization "
                             f"({dataset}) does not apply: export it without a data set")

        def serve(inputs):
            return outputs(inputs)

        module.serve = _compiled(serve, tf.TensorSpec((None, *shape), tf.float32, name="inputs"), jit_compile)
        module.dataset = module.standardization = None
        return module
    standardize, module.standardization = _image_standardizer(shape, dataset)

    def serve(images):
        return outputs(standardize(images))

    def serve_standardized(inputs):
        return outputs(inputs)

    least = source.identity.spec.downsampling
    module.dataset = dataset
    module.serve = _compiled(serve, tf.TensorSpec((None, *shape), tf.uint8, name="images"), jit_compile, least)
    module.serve_standardized = _compiled(
        serve_standardized, tf.TensorSpec((None, *shape), tf.float32, name="inputs"), jit_compile, least)
    return module


def signatures(module):
    """The signatures an export of `module` serves: {"serving_default": ..., "standardized": ... (images)}."""
    found = {"serving_default": module.serve}
    if hasattr(module, "serve_standardized"):
        found["standardized"] = module.serve_standardized
    return found


def metadata(module):
    """The metadata of an export of `module` (`serving_module`), written as assets/nestzoo.json."""
    import nestzoo

    source = module.source
    model, identity = source.model, source.identity
    shape = list(module.input_shape)
    image = len(shape) == 3
    classification = module.task == "classification"
    return {
        "model": identity.name,
        "arch": identity.arch,
        "variant": identity.variant,
        "keras_name": model.name,
        "task": module.task,
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "precision": model.dtype_policy.name,
        "served_precision": "float32",
        "input": {"name": "images" if image else "inputs", "dtype": "uint8" if image else "float32",
                  "shape": [None, *shape], "range": [0, 255] if image else None},
        "outputs": ["probabilities", "class_ids", "logits"] if classification else ["predictions"],
        "classes": int(model.output.shape[-1]) if classification else None,
        "class_names": class_names(module.dataset) if classification else None,
        "standardization": module.standardization,
        "signatures": list(signatures(module)),
        "graph": {"fold_batch_norm": module.fold_batch_norm, "jit_compile": module.jit_compile,
                  "folded_batch_norms": len(getattr(module.forward, "folded", []))},
        "nestzoo_version": nestzoo.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "test_accuracy": source.summary.get("test_accuracy"),
        "run": {"directory": str(source.run_dir), "config": source.config} if source.run_dir else None,
        "source": str(source.path) if source.path else None,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(parent):
    """Remove temporary export directories left by killed exports (their process is gone)."""
    for tmp in parent.glob(TMP_PREFIX + "*"):
        try:
            pid = int(tmp.name[len(TMP_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def space_needed(module):
    """A lower bound of the bytes an export of `module` writes: a folded graph's constants once per
    signature (each holds them), else the model's float32 variables once."""
    if module.fold_batch_norm:
        return module.forward.constant_bytes * len(signatures(module))
    return 4 * int(module.source.model.count_params())


def _no_space(folder, needed, cause=None):
    free = shutil.disk_usage(folder).free
    because = f" ({type(cause).__name__})" if cause is not None else ""
    return NoSpaceError(
        f"no space left for the export in {str(folder)!r}{because}: it needs at least {needed / 2**20:.1f} MB "
        f"(its weights; its graph adds some) and {free / 2**20:.1f} MB are free; free some space or export to "
        "another --base-dir. Nothing was written")


def _is_no_space(error):
    return isinstance(error, tf.errors.ResourceExhaustedError) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT))


#: The serving graph's defaults (the README's "Serving" section gives the measurements): folding
#: is faster and equal to float32 rounding; XLA is off, since TensorFlow Serving runs it only when
#: started with --xla_cpu_compilation_enabled.
DEFAULT_FOLD_BATCH_NORM = True
DEFAULT_JIT_COMPILE = False


def export_saved_model(model, directory, *, dataset=None, task=None, fold_batch_norm=DEFAULT_FOLD_BATCH_NORM,
                       jit_compile=DEFAULT_JIT_COMPILE):
    """Write one SavedModel version into `directory`, which must not exist; returns its Path.

    model: a nestzoo keras.Model, a .keras file, a run directory (its config.json
    gives the data set; a given `dataset` must agree) or a `Source`. The contract is
    in this module's docstring. The export is written to a temporary directory beside
    `directory` and renamed into place: a failure, a full disk or a kill leaves no
    partial `directory`.
    """
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"{str(directory)!r} exists; an export never overwrites a version: choose another "
                         "directory or version")
    module = serving_module(model, dataset=dataset, task=task, fold_batch_norm=fold_batch_norm,
                            jit_compile=jit_compile)
    served = signatures(module)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(directory.parent)
    needed = space_needed(module)
    if shutil.disk_usage(directory.parent).free < needed:
        raise _no_space(directory.parent, needed)
    tmp = directory.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for function in served.values():
            function.get_concrete_function()  # trace (the longest step) with the temporary directory in place
        tf.saved_model.save(module, str(tmp), signatures=served)
        (tmp / "assets").mkdir(exist_ok=True)
        (tmp / "assets" / METADATA_FILE).write_text(json.dumps(metadata(module), indent=1))
        if directory.exists():  # taken while this export was written
            raise FileExistsError(f"{str(directory)!r} appeared during the export; it was not overwritten")
        os.rename(tmp, directory)  # atomic on one file system
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_no_space(error):
            raise _no_space(directory.parent, needed, error) from error
        raise
    return directory


def _examples(dataset):
    """(train, test) uint8 images and labels of a nestzoo data set, as arrays."""
    from nestzoo.data.sources import load_examples

    examples = load_examples(get_spec(dataset))
    arrays = []
    for split in (examples.train, examples.test):
        images, labels = zip(*split.as_numpy_iterator())
        arrays.append((np.stack(images).astype(np.uint8), np.asarray(labels)))
    return arrays


def _calibration_images(module, calibration):
    """The representative uint8 images of an int8 export: `calibration` uint8 images, or a count N of the
    first N of the run's data set's training images; refused without data to calibrate on."""
    if calibration is None or (isinstance(calibration, int) and not isinstance(calibration, bool)
                               and calibration < 1):
        raise ValueError("--quantize int8 calibrates on representative images: give --calibration N (N >= 1 "
                         "training images of the run's data set; 100-500 is typical) or calibration= an array "
                         "of uint8 images")
    if isinstance(calibration, int) and not isinstance(calibration, bool):
        if module.dataset is None:
            raise ValueError("--calibration N draws N training images of the run's data set, and this model "
                             "names none: export a run directory, give --dataset, or pass calibration= images")
        (images, _), _ = _examples(module.dataset)
        return images[:calibration]
    images = np.asarray(calibration)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(s or images.shape[i + 1] for i, s in
                                                               enumerate(module.input_shape)) or not len(images):
        raise ValueError(f"calibration images must be a non-empty uint8 array (N, "
                         f"{', '.join(map(str, module.input_shape))}), got {images.dtype} {images.shape}")
    return images


def export_converted(model, directory, *, format, quantize=None, calibration=None, dataset=None, task=None,
                     tolerance=None, threads=None):
    """Write one ONNX or LiteRT version (`<directory>/model.onnx` or `model.tflite`, `nestzoo.json` beside).

    A LiteRT file holds the signatures serving_default and standardized, an ONNX file
    the first only (`nestzoo.runtimes`). The float conversion is run in its runtime
    (onnxruntime, the ai_edge_litert interpreter), each signature on a fixed batch, and
    refused (`runtimes.ConversionMismatch`) when an output differs from the Keras
    model's by more than `tolerance` (default 1e-4) or a class id differs.
    quantize="int8": a statically quantized model calibrated on `calibration` (a count
    N of the data set's training images or uint8 images); its accuracy and the float
    model's on the data set's test set are measured and written to the metadata. The
    version is written beside `directory` and renamed into place.
    """
    from nestzoo import runtimes

    runtimes.check_format(format)
    if format == "saved_model":
        raise ValueError("export_converted writes onnx or litert; use export_saved_model for saved_model")
    if quantize not in (None, *runtimes.QUANTIZATIONS):
        raise ValueError(f"unknown quantization {quantize!r}: choose {', '.join(runtimes.QUANTIZATIONS)} or none")
    if calibration is not None and not quantize:
        raise ValueError("--calibration gives the images an int8 model is calibrated on: add --quantize int8")
    runtimes.require(format)
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"{str(directory)!r} exists; an export never overwrites a version: choose another "
                         "directory or version")
    module = serving_module(model, dataset=dataset, task=task)
    if module.task != "classification" or len(module.input_shape) != 3:
        raise ValueError(f"the {format} export serves image classifiers (uint8 images in, probabilities, class_ids "
                         "and logits out); export this model as a saved_model")
    representative = _calibration_images(module, calibration) if quantize else None
    reference = serving_module(module.source, dataset=module.dataset, fold_batch_norm=False)  # the Keras model
    batch = runtimes.verification_batch(module.input_shape)
    expected = {k: v.numpy() for k, v in reference.serve(tf.constant(batch)).items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(directory.parent)
    tmp = directory.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        file = tmp / runtimes.FILES[format]
        float_file = tmp / ("float-" + file.name) if quantize else file
        if format == "onnx":
            runtimes.to_onnx(module, float_file)
        else:
            runtimes.to_litert(module, float_file)
        float_runtime = runtimes.Runtime(float_file, threads)
        record = metadata(module)
        record.update(format=format, file=file.name, quantization=quantize, signatures=float_runtime.signatures,
                      verification=runtimes.verify(float_file, expected, runtimes.entry_inputs(module, batch),
                                                   runtimes.TOLERANCE if tolerance is None else tolerance, threads))
        if quantize:
            batches = [image[None] for image in representative]
            if format == "onnx":
                runtimes.quantize_onnx(float_file, file, batches)
            else:
                runtimes.to_litert(module, file, batches)
            quantized = runtimes.Runtime(file, threads)
            worst, differing = runtimes.compare(expected, quantized(batch))
            _, (images, labels) = _examples(module.dataset)
            record["int8"] = {
                "calibration_images": len(representative),
                "calibration": "the first N training images of " + str(module.dataset)
                if isinstance(calibration, int) else "images given",
                "test_images": len(images), "dataset": module.dataset,
                "test_accuracy": runtimes.accuracy(quantized, images, labels),
                "float_test_accuracy": runtimes.accuracy(float_runtime, images, labels),
                "fixed_batch": {"max_abs_difference": worst, "class_ids_differing": differing}}
            record["int8"]["accuracy_drop_points"] = 100 * (record["int8"]["float_test_accuracy"]
                                                            - record["int8"]["test_accuracy"])
            if "standardized" in quantized.signatures:  # LiteRT: its second signature, quantized on its own
                record["int8"]["standardized_test_accuracy"] = runtimes.accuracy(
                    runtimes.Runtime(file, threads, "standardized"), runtimes.standardize(module, images), labels)
            del float_runtime
            float_file.unlink()
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=1))
        if directory.exists():
            raise FileExistsError(f"{str(directory)!r} appeared during the export; it was not overwritten")
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def versions(base):
    """The integer versions in a TF Serving model directory, sorted."""
    base = Path(base)
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir()) if base.is_dir() else []


def default_name(source):
    """saved_models/<name>: the registry name with "." as "_" (resnet20_a-resnest), else the model's name."""
    return (source.identity.name or source.model.name).replace(".", "_").replace("/", "_")


def export(model, base_dir="saved_models", *, name=None, version=None, dataset=None, task=None,
           fold_batch_norm=DEFAULT_FOLD_BATCH_NORM, jit_compile=DEFAULT_JIT_COMPILE, format="saved_model",
           quantize=None, calibration=None):
    """Export into TF Serving's layout ``base_dir/<name>/<version>/``; returns the version's Path.

    name: default the registry name ("resnet20_a-resnest"). version: default the next
    integer after the existing ones; an existing version is refused. format:
    "saved_model" (default), "onnx" or "litert" (`export_converted`, which takes
    quantize="int8" and calibration=).
    """
    from nestzoo import runtimes

    runtimes.check_format(format)
    if format == "saved_model" and (quantize or calibration is not None):
        raise ValueError("--quantize and --calibration apply to the onnx and litert formats: add --format onnx "
                         "or --format litert")
    if format != "saved_model":
        runtimes.require(format)  # before loading the model: a missing extra is said at once
    source = load_source(model)
    name = name or default_name(source)
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"name must be a plain directory name, got {name!r}")
    base = Path(base_dir) / name
    if version is None:
        version = (versions(base) or [0])[-1] + 1
    elif (base / str(positive_int("version", version))).exists():
        raise ValueError(f"{str(base / str(version))!r} exists; an export never overwrites a version: choose "
                         f"another --version or leave it out for the next ({(versions(base) or [0])[-1] + 1})")
    if format != "saved_model":
        return export_converted(source, base / str(version), format=format, quantize=quantize,
                                calibration=calibration, dataset=dataset, task=task)
    return export_saved_model(source, base / str(version), dataset=dataset, task=task,
                              fold_batch_norm=fold_batch_norm, jit_compile=jit_compile)


def export_format(version):
    """The format a version directory holds, from its files: "saved_model", "onnx", "litert" or None."""
    version = Path(version)
    if (version / "saved_model.pb").is_file():
        return "saved_model"
    for format, file in (("onnx", "model.onnx"), ("litert", "model.tflite")):
        if (version / file).is_file():
            return format
    return None


def read_metadata(export_dir):
    """The metadata dict of an export (None for one nestzoo did not write): assets/nestzoo.json of a
    SavedModel, nestzoo.json beside an ONNX or LiteRT file."""
    export_dir = Path(export_dir)
    if export_format(export_dir) in ("onnx", "litert"):
        return read_json(export_dir / METADATA_FILE)
    return read_json(export_dir / "assets" / METADATA_FILE)


def latest_version(path):
    """`path` if it is a version (SavedModel, ONNX or LiteRT), else its highest integer version (saved_models/<name>)."""
    path = Path(path)
    if export_format(path):
        return path
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist: expected {EXPORT_DIRECTORY}")
    found = versions(path)
    if not found:
        raise ValueError(f"{str(path)!r} is neither an export version (no saved_model.pb, model.onnx or "
                         "model.tflite) nor a directory of versions: "
                         f"expected {EXPORT_DIRECTORY}")
    return path / str(found[-1])


def _damaged_file(version):
    """The file of a SavedModel version that does not read back, with the reason, or None."""
    from tensorflow.core.protobuf import saved_model_pb2

    graph = version / "saved_model.pb"
    try:
        saved_model_pb2.SavedModel().ParseFromString(graph.read_bytes())
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, an unreadable file
        return graph, error
    prefix = version / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as error:  # noqa: BLE001 - a missing or damaged index
        return prefix.with_name("variables.index"), error
    try:
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 - a truncated or damaged data shard
        shards = sorted(prefix.parent.glob("variables.data-*"))
        return (shards[0] if len(shards) == 1 else prefix.parent / "variables.data-*"), error
    return None


def load_export(path):
    """(version directory, loaded SavedModel) of an export: a version, or saved_models/<name> for its latest.

    A version that does not load is refused naming the file that is damaged.
    """
    version = latest_version(path)
    try:
        return version, tf.saved_model.load(str(version))
    except Exception as error:  # noqa: BLE001 - TensorFlow fails in many ways on a damaged version
        damaged = _damaged_file(version)
        file, cause = damaged if damaged else (version, error)
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(f"version {version.name} of {str(version.parent)!r} is damaged: {str(file)!r} does not "
                         f"read back ({type(cause).__name__}: {reason}); export it again") from None

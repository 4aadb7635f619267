"""ONNX and LiteRT exports of the serving contract, their runtimes and int8 quantization (TensorFlow only).

    from nestzoo import export
    export.export("runs/quick/resnet20.a-resnest/seed0", format="onnx")          # .../<version>/model.onnx
    export.export(run_dir, format="litert", quantize="int8", calibration=256)    # .../<version>/model.tflite

The graphs converted are the SavedModel export's (`nestzoo.export.serving_module`):
uint8 ``images`` (None, H, W, C) in, standardization in the graph, ``probabilities``,
``class_ids`` and ``logits`` out; the batch dimension stays dynamic. A LiteRT file
holds both of the SavedModel's signatures: ``serving_default`` (uint8 ``images``) and
``standardized`` (already-standardized float32 ``inputs``, the same outputs). An ONNX
file holds ``serving_default`` only: an ONNX model is one graph and every graph input
without an initializer must be fed on every run (one with an initializer is an input
with a default value, not an entry point), so ONNX has no second entry; a second file
would be a second model to a server loading the version's ``model.onnx``.

Only the ecosystem's converters are used: tf2onnx (`tf2onnx.convert.from_graph_def`
on the frozen function) for ONNX, the LiteRT converter (`tf.lite.TFLiteConverter`)
for LiteRT; int8 is onnxruntime's static quantization (QDQ, uint8 activations,
per-channel int8 weights) and the LiteRT converter's full-integer quantization of
both signatures, calibrated on a representative set of the run's training images
(standardized for ``standardized``). Every export is run at export time in the
runtime that will serve it (onnxruntime, the `ai_edge_litert` interpreter), each
signature, and compared with the Keras model on a fixed batch (`verify`).
"""
import importlib
import tempfile
import warnings

import numpy as np
import tensorflow as tf

FORMATS = ("saved_model", "onnx", "litert")
QUANTIZATIONS = ("int8",)
FILES = {"onnx": "model.onnx", "litert": "model.tflite"}
#: The extras that install each format's converter and runtime (setup.cfg).
EXTRAS = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "litert": ("ai_edge_litert.interpreter",)}
#: A float export is refused when an output differs from the Keras model's by more than this.
TOLERANCE = 1e-4
ONNX_OPSET = 17
#: The fixed verification batch: VERIFY_BATCH uint8 images drawn with VERIFY_SEED.
VERIFY_BATCH, VERIFY_SEED = 16, 0
OUTPUTS = ("probabilities", "class_ids", "logits")


class ConversionMismatch(ValueError):
    """A converted model's outputs differ from the Keras model's."""


def check_format(format):
    """`format` if it is one of FORMATS; else an error naming them."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    return format


def require(format):
    """Import the modules of `format`'s converter and runtime; a missing one names the extra to install."""
    modules = {}
    for name in EXTRAS[format]:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"the {format} format needs {name.split('.')[0]} ({error}); install it with "
                              f"pip install 'nestzoo[{format}]'") from None
    return modules


def _frozen(module):
    """The frozen graph of the module's uint8 `serve` and the renaming of its tensors to the contract's names."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = module.serve.get_concrete_function()
    frozen = convert_variables_to_constants_v2(function)
    rename = {frozen.inputs[0].name: module.serve.input_signature[0].name}
    keys = sorted(function.structured_outputs)  # the order of the flattened outputs (tf.nest sorts dict keys)
    assert len(keys) == len(frozen.outputs), (keys, frozen.outputs)
    for key, tensor in zip(keys, frozen.outputs):
        rename[tensor.name] = key
    return frozen, rename


def to_onnx(module, path):
    """Convert the module's `serve` with tf2onnx into the ONNX file `path`."""
    tf2onnx = require("onnx")["tf2onnx"]
    frozen, rename = _frozen(module)
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # tf2onnx calls TensorFlow 1 graph utilities, each logging a deprecation warning
    try:
        tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs,
                                       opset=ONNX_OPSET, tensors_to_rename=rename, output_path=str(path))
    finally:
        logger.setLevel(level)
    return path


def standardize(module, images):
    """uint8 `images` standardized as the module's graph does: the inputs of its `standardized` signature."""
    from nestzoo.data.pipeline import standardizer

    given = module.standardization
    return standardizer(given["mean"], given["std"], module.input_shape)(tf.constant(images)).numpy()


def entry_inputs(module, images):
    """{signature: its input batch} of uint8 `images`, for each signature of the module's exports."""
    return {"serving_default": images, "standardized": standardize(module, images)}


def to_litert(module, path, representative=None):
    """Convert the module's signatures (`nestzoo.export.signatures`) with the LiteRT converter into `path`;
    with `representative` (uint8 image batches of one image) a full-integer int8 model, each signature
    calibrated on those images (standardized for ``standardized``)."""
    from nestzoo.export import signatures

    require("litert")
    served = signatures(module)
    holder = tf.Module()  # not the module itself: the converter takes a SavedModel with a `serve` attribute
    holder.functions = served  # for a Keras model.export() one and converts only its serving_default
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(holder, saved, signatures=served)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(served))
        if representative is not None:
            names = {key: function.input_signature[0].name for key, function in served.items()}

            def samples():  # (signature, {input: batch}): the converter calibrates each signature on its own
                for image in representative:
                    for key, batch in entry_inputs(module, image).items():
                        yield key, {names[key]: batch}

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with warnings.catch_warnings():  # its calibrator runs the deprecated tf.lite.Interpreter on such samples
            warnings.filterwarnings("ignore", "\\s*Warning: tf.lite.Interpreter is deprecated", UserWarning)
            path.write_bytes(converter.convert())
    return path


def quantize_onnx(float_path, int8_path, representative, activations="uint8"):
    """onnxruntime's static quantization of `float_path` (QDQ; per-channel int8 weights, 7-bit; `activations`
    "uint8" or "int8"), calibrated on `representative` (uint8 image batches).

    uint8 activations are the default: onnxruntime's x86 CPU kernels then run every convolution as
    QLinearConv (int8 weights x uint8 activations) in one layout, faster than float; with int8
    activations some stay float between DequantizeLinear/QuantizeLinear and the rest get layout
    transposes, no faster than float (`benchmarks/onnx_int8_profile.py`). The 7-bit weights
    (reduce_range) keep those kernels clear of saturation on x86 CPUs without VNNI (onnxruntime's
    quantization docs).
    """
    from onnxruntime import quantization

    types = {"uint8": quantization.QuantType.QUInt8, "int8": quantization.QuantType.QInt8}
    if activations not in types:
        raise ValueError(f"unknown activation type {activations!r}: choose one of {', '.join(types)}")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(representative)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantization.quantize_static(str(float_path), str(int8_path), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True, reduce_range=True,
                                 activation_type=types[activations], weight_type=quantization.QuantType.QInt8)
    return int8_path


class Runtime:
    """An ONNX or LiteRT file loaded in its runtime: calling it on a batch returns {output: array}.

    signature: the entry run, "serving_default" (uint8 images) or, in a LiteRT file, "standardized"
    (float32 inputs); `signatures` lists the file's.
    """

    def __init__(self, path, threads=None, signature="serving_default"):
        from pathlib import Path

        self.path = Path(path)
        self.format = "onnx" if self.path.suffix == ".onnx" else "litert"
        self.signature = signature
        if self.format == "onnx":
            ort = require("onnx")["onnxruntime"]
            self.signatures = ["serving_default"]  # one graph, no second entry (the module's docstring)
            self._check_signature()
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            (given,) = self.session.get_inputs()
            self.input_name = given.name
            self.shape = tuple(None if isinstance(s, str) or s is None else int(s) for s in given.shape[1:])
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.dtype = np.uint8
        else:
            interpreter = require("litert")["ai_edge_litert.interpreter"]
            self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=threads)
            listed = self.interpreter.get_signature_list()
            self.signatures = list(listed)
            self._check_signature()
            self.runner = self.interpreter.get_signature_runner(signature)
            (self.input_name, detail), = self.runner.get_input_details().items()
            self.output_names = list(listed[signature]["outputs"])
            self.shape = tuple(None if s < 0 else int(s) for s in detail["shape_signature"][1:])
            self.dtype = detail["dtype"]

    def _check_signature(self):
        if self.signature not in self.signatures:
            raise ValueError(f"{str(self.path)!r} has no signature {self.signature!r}: choose one of "
                             f"{', '.join(self.signatures)}")

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, self.dtype)
        if self.format == "onnx":
            return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: batch})))
        out = self.runner(**{self.input_name: batch})  # resizes to the batch (dynamic batch dimension)
        return {name: np.array(out[name]) for name in self.output_names}


def verification_batch(shape):
    """The fixed uint8 batch every export is checked on (H or W None: the model's size is unknown, 32)."""
    shape = tuple(32 if s is None else s for s in shape)
    return np.random.default_rng(VERIFY_SEED).integers(0, 256, (VERIFY_BATCH, *shape), dtype=np.uint8)


def compare(expected, got):
    """The largest absolute difference of the float outputs and the count of differing class ids."""
    worst = max(float(np.max(np.abs(np.asarray(got[k], np.float64) - expected[k]))) for k in ("probabilities", "logits"))
    differing = int(np.sum(np.asarray(got["class_ids"]) != expected["class_ids"]))
    return worst, differing


def verify(path, expected, inputs, tolerance=TOLERANCE, threads=None):
    """Refuse (`ConversionMismatch`) a float conversion `path` whose outputs, in any of its signatures, on
    the fixed batch (`inputs`: `entry_inputs`) differ from `expected` (the Keras model's) by more than
    `tolerance`, or whose class ids differ; returns the check's record."""
    checks, first = {}, Runtime(path, threads)
    for signature in first.signatures:
        runtime = first if signature == first.signature else Runtime(path, threads, signature)
        what = f"the {runtime.format} conversion" + (f"'s {signature} signature" if len(first.signatures) > 1 else "")
        got = runtime(inputs[signature])
        missing = [k for k in OUTPUTS if k not in got]
        if missing:
            raise ConversionMismatch(f"{what} lacks the outputs {missing}")
        worst, differing = compare(expected, got)
        if worst > tolerance or differing:
            raise ConversionMismatch(
                f"{what} differs from the Keras model on the fixed batch of {len(got['class_ids'])} images: "
                f"largest difference {worst:.3g} (allowed {tolerance:g}), {differing} class ids differ; "
                "nothing was exported")
        checks[signature] = {"max_abs_difference": worst, "class_ids_differing": differing}
    return {"runtime": runtime.format, "batch": len(inputs["serving_default"]), "seed": VERIFY_SEED,
            "max_abs_difference": max(c["max_abs_difference"] for c in checks.values()), "tolerance": tolerance,
            "class_ids_differing": sum(c["class_ids_differing"] for c in checks.values()), "signatures": checks}


def accuracy(call, images, labels, batch_size=256):
    """Top-1 accuracy (a fraction) of `call` (batch -> outputs) on `images` (its inputs)."""
    right = 0
    for i in range(0, len(images), batch_size):
        right += int(np.sum(np.asarray(call(images[i:i + batch_size])["class_ids"]) == labels[i:i + batch_size]))
    return right / len(images)

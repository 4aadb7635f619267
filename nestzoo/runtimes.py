"""ONNX and LiteRT exports of the serving contract, their runtimes and int8 quantization (TensorFlow only).

    from nestzoo import export
    export.export("runs/quick/resnet20.a-resnest/seed0", format="onnx")          # .../<version>/model.onnx
    export.export(run_dir, format="litert", quantize="int8", calibration=256)    # .../<version>/model.tflite

The graph converted is the SavedModel export's `serve` function (`nestzoo.export.serving_module`):
uint8 ``images`` (None, H, W, C) in, standardization in the graph, ``probabilities``,
``class_ids`` and ``logits`` out; the batch dimension stays dynamic. Only the
ecosystem's converters are used: tf2onnx (`tf2onnx.convert.from_graph_def` on the
frozen function) for ONNX, the LiteRT converter (`tf.lite.TFLiteConverter`) for
LiteRT; int8 is onnxruntime's static quantization (QDQ, per-channel weights) and the
LiteRT converter's full-integer quantization, both calibrated on a representative set
of the run's training images. Every export is run at export time in the runtime that
will serve it (onnxruntime, the `ai_edge_litert` interpreter) and compared with the
Keras model on a fixed batch (`verify`).
"""
import importlib

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


def to_litert(module, path, representative=None):
    """Convert the module's `serve` with the LiteRT converter into `path`; with `representative`
    (an iterable of uint8 image batches of one image) a full-integer int8 model."""
    require("litert")
    function = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(converter.convert())
    return path


def quantize_onnx(float_path, int8_path, representative):
    """onnxruntime's static int8 quantization (QDQ, per-channel weights) of `float_path`, calibrated
    on `representative` (uint8 image batches)."""
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(representative)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantization.quantize_static(str(float_path), str(int8_path), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                 activation_type=quantization.QuantType.QInt8,
                                 weight_type=quantization.QuantType.QInt8)
    return int8_path


class Runtime:
    """An ONNX or LiteRT file loaded in its runtime: calling it on a uint8 batch returns {output: array}."""

    def __init__(self, path, threads=None):
        from pathlib import Path

        self.path = Path(path)
        self.format = "onnx" if self.path.suffix == ".onnx" else "litert"
        if self.format == "onnx":
            ort = require("onnx")["onnxruntime"]
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            (given,) = self.session.get_inputs()
            self.input_name = given.name
            self.shape = tuple(None if isinstance(s, str) or s is None else int(s) for s in given.shape[1:])
            self.output_names = [o.name for o in self.session.get_outputs()]
        else:
            interpreter = require("litert")["ai_edge_litert.interpreter"]
            self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=threads)
            (detail,) = self.interpreter.get_input_details()
            signature = self.interpreter.get_signature_list()["serving_default"]
            self.input_name = signature["inputs"][0]
            self.output_names = list(signature["outputs"])
            self.shape = tuple(None if s < 0 else int(s) for s in detail["shape_signature"][1:])
            self.runner = self.interpreter.get_signature_runner("serving_default")
        self.dtype = np.uint8

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, np.uint8)
        if self.format == "onnx":
            return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: batch})))
        out = self.runner(**{self.input_name: batch})  # resizes to the batch (dynamic batch dimension)
        return {name: np.array(out[name]) for name in self.output_names}

def verification_batch(shape):
    """The fixed uint8 batch every export is checked on (H or W None: the model's size is unknown, 32)."""
    shape = tuple(32 if s is None else s for s in shape)
    return np.random.default_rng(VERIFY_SEED).integers(0, 256, (VERIFY_BATCH, *shape), dtype=np.uint8)


def compare(expected, got, tolerance=TOLERANCE):
    """The largest absolute difference of the float outputs and the count of differing class ids."""
    worst = max(float(np.max(np.abs(np.asarray(got[k], np.float64) - expected[k]))) for k in ("probabilities", "logits"))
    differing = int(np.sum(np.asarray(got["class_ids"]) != expected["class_ids"]))
    return worst, differing


def verify(runtime, expected, batch, tolerance=TOLERANCE):
    """Refuse (`ConversionMismatch`) a float conversion whose outputs on `batch` differ from `expected`
    (the Keras model's) by more than `tolerance`, or whose class ids differ; returns the check's record."""
    got = runtime(batch)
    missing = [k for k in OUTPUTS if k not in got]
    if missing:
        raise ConversionMismatch(f"the {runtime.format} conversion lacks the outputs {missing}")
    worst, differing = compare(expected, got)
    if worst > tolerance or differing:
        raise ConversionMismatch(
            f"the {runtime.format} conversion differs from the Keras model on the fixed batch of {len(batch)} "
            f"images: largest difference {worst:.3g} (allowed {tolerance:g}), {differing} class ids differ; "
            "nothing was exported")
    return {"runtime": runtime.format, "batch": len(batch), "seed": VERIFY_SEED, "max_abs_difference": worst,
            "tolerance": tolerance, "class_ids_differing": differing}


def accuracy(call, images, labels, batch_size=256):
    """Top-1 accuracy (a fraction) of `call` (uint8 batch -> outputs) on uint8 `images`."""
    right = 0
    for i in range(0, len(images), batch_size):
        right += int(np.sum(np.asarray(call(images[i:i + batch_size])["class_ids"]) == labels[i:i + batch_size]))
    return right / len(images)

"""ONNX and LiteRT exports (float and int8): checked in their runtimes, served by `nestzoo predict`, refusals."""
import json
import os

import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import data, export, runtimes
from nestzoo.predict import Predictor

NAME = "custom_a-resnest"  # the tiny model below is no registered arch


def standardize(images):
    """float32 digits standardized as in training (the data set's published mean and std)."""
    spec = data.catalog.get_spec("digits")
    return ((images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype("float32")


def digits_test_images(count):
    """The first `count` uint8 digits test images."""
    return export._examples("digits")[1][0][:count]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory of a tiny A-ResNEst (2 blocks, widths 8 and 16) trained 6 epochs on 8x8 digits
    (about 80% accuracy: int8's accuracy loss is measured on a model that has something to lose)."""
    directory = tmp_path_factory.mktemp("runs") / NAME / "seed0"
    directory.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model = nestzoo.AResNEst(blocks=(1, 1), width=(8, 16), input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    (x, y), (x_test, y_test) = export._examples("digits")
    model.fit(standardize(x), y, batch_size=64, epochs=6, verbose=0)
    _, accuracy = model.evaluate(standardize(x_test), y_test, verbose=0)
    model.save(directory / "model.keras")
    (directory / "config.json").write_text(json.dumps({"model": NAME, "data": "digits", "seed": 0}))
    (directory / "summary.json").write_text(json.dumps({"test_accuracy": accuracy}))
    assert accuracy > 0.5, accuracy
    return directory


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """{(format, quantize): version directory} of the four conversions of the run."""
    base = tmp_path_factory.mktemp("saved_models")
    return {(format, quantize): export.export(run_dir, base, name=f"{format}-{quantize or 'float'}", format=format,
                                              quantize=quantize, calibration=128 if quantize else None)
            for format in ("onnx", "litert") for quantize in (None, "int8")}


def test_float_exports_follow_the_contract_and_equal_the_keras_model(run_dir, exported):
    model = keras.models.load_model(run_dir / "model.keras")
    x = digits_test_images(37)
    expected = model.predict(standardize(x), verbose=0)
    for format in ("onnx", "litert"):
        version = exported[(format, None)]
        assert sorted(os.listdir(version)) == sorted([runtimes.FILES[format], export.METADATA_FILE])
        assert version.name == "1" and version.parent.name == f"{format}-float"
        meta = export.read_metadata(version)
        assert meta["format"] == format and meta["quantization"] is None and meta["keras_name"] == NAME
        assert meta["verification"]["max_abs_difference"] <= runtimes.TOLERANCE
        assert meta["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 8, 8, 1], "range": [0, 255]}
        runtime = runtimes.Runtime(version / runtimes.FILES[format])
        assert runtime.shape == (8, 8, 1) and runtime.input_name == "images"
        for size in (1, 37):  # the batch dimension is dynamic
            out = runtime(x[:size])
            assert sorted(out) == sorted(runtimes.OUTPUTS)
            np.testing.assert_allclose(out["probabilities"], expected[:size], atol=1e-4)
            np.testing.assert_array_equal(out["class_ids"], np.argmax(expected[:size], -1))


def test_litert_carries_the_standardized_signature_and_onnx_only_serving_default(run_dir, exported):
    from ai_edge_litert.interpreter import Interpreter

    model = keras.models.load_model(run_dir / "model.keras")
    x = digits_test_images(37)
    expected = model.predict(standardize(x), verbose=0)
    outputs = sorted(runtimes.OUTPUTS)
    for quantize in (None, "int8"):
        version = exported[("litert", quantize)]
        interpreter = Interpreter(model_path=str(version / "model.tflite"))  # as a client would
        assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["images"], "outputs": outputs},
                                                    "standardized": {"inputs": ["inputs"], "outputs": outputs}}
        run = interpreter.get_signature_runner("standardized")
        (detail,) = run.get_input_details().values()
        assert detail["dtype"] == np.float32 and detail["shape_signature"].tolist() == [-1, 8, 8, 1]
        out = run(inputs=standardize(x))
        assert sorted(out) == outputs and out["probabilities"].shape == (37, 10)
        meta = export.read_metadata(version)
        assert meta["signatures"] == ["serving_default", "standardized"]
        if quantize is None:  # the float entry equals the Keras model, checked at export too
            np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
            np.testing.assert_array_equal(out["class_ids"], np.argmax(expected, -1))
            checks = meta["verification"]["signatures"]
            assert sorted(checks) == ["serving_default", "standardized"], checks
            assert all(c["max_abs_difference"] <= runtimes.TOLERANCE for c in checks.values()), checks
        else:  # calibrated on the standardized calibration images: within the int8 bound
            q = meta["int8"]
            assert 100 * (q["float_test_accuracy"] - q["standardized_test_accuracy"]) <= 1.0, q
        assert runtimes.Runtime(version / "model.tflite").input_name == "images"  # predict's entry
    onnx = exported[("onnx", None)]
    assert export.read_metadata(onnx)["signatures"] == ["serving_default"]
    assert list(export.read_metadata(onnx)["verification"]["signatures"]) == ["serving_default"]
    with pytest.raises(ValueError, match="has no signature 'standardized': choose one of serving_default"):
        runtimes.Runtime(onnx / "model.onnx", signature="standardized")


def test_int8_accuracy_is_measured_and_within_a_point(exported):
    for format in ("onnx", "litert"):
        meta = export.read_metadata(exported[(format, "int8")])
        q = meta["int8"]
        assert meta["quantization"] == "int8" and q["calibration_images"] == 128 and q["test_images"] == 360
        assert q["float_test_accuracy"] > 0.5 and q["test_accuracy"] > 0.5, q
        assert q["accuracy_drop_points"] == pytest.approx(100 * (q["float_test_accuracy"] - q["test_accuracy"]))
        assert q["accuracy_drop_points"] <= 1.0, (format, q)
    onnx_int8 = (exported[("onnx", "int8")] / "model.onnx").read_bytes()
    assert b"QuantizeLinear" in onnx_int8 and b"DequantizeLinear" in onnx_int8


def test_predict_serves_every_format(nestzoo_cli, run_dir, exported, tmp_path):
    x = digits_test_images(5)
    np.save(tmp_path / "x.npy", x)
    model = keras.models.load_model(run_dir / "model.keras")
    expected = np.argmax(model.predict(standardize(x), verbose=0), -1)
    for format in ("onnx", "litert"):
        predictor = Predictor(exported[(format, None)].parent)  # the latest version of the name
        assert predictor.format == format and predictor.path == exported[(format, None)]
        code, out = nestzoo_cli("predict", exported[(format, None)].parent, tmp_path / "x.npy", "--json", "--top-k", 1)
        assert code == 0, out
        rows = json.loads(out[out.index("["):])
        assert [row["top"][0]["class_id"] for row in rows] == expected.tolist()
        assert rows[0]["top"][0]["class_name"] == str(expected[0])
        code, out = nestzoo_cli("predict", exported[(format, None)], tmp_path / "x.npy", "--json")
        assert code == 0, out
    np.save(tmp_path / "float.npy", x.astype(np.float32))
    code, out = nestzoo_cli("predict", exported[("onnx", None)], tmp_path / "float.npy")
    assert code == 2 and "expected uint8 images" in out, out  # the same input checks as a SavedModel's


def test_cli_export_onnx_reports_the_check(nestzoo_cli, run_dir, tmp_path):
    code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--format", "onnx")
    assert code == 0 and "model.onnx" in out and "checked in onnx against the Keras model" in out, out
    assert (tmp_path / NAME / "1" / "model.onnx").is_file()
    assert not [p for p in os.listdir(tmp_path / NAME) if p.startswith(".")]


def test_refusals(nestzoo_cli, run_dir, tmp_path, monkeypatch):
    code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--format", "coreml")
    assert code == 2 and "invalid choice: 'coreml'" in out and "onnx" in out and "litert" in out, out
    with pytest.raises(ValueError, match="unknown export format 'coreml': choose one of saved_model, onnx, litert"):
        export.export(run_dir, tmp_path, format="coreml")
    with pytest.raises(ValueError, match="give --calibration N"):
        export.export(run_dir, tmp_path, format="litert", quantize="int8")
    code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--format", "onnx", "--quantize", "int8")
    assert code == 2 and "give --calibration N" in out, out
    code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--quantize", "int8", "--calibration", 8)
    assert code == 2 and "add --format onnx or --format litert" in out, out
    code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--format", "onnx", "--calibration", 8)
    assert code == 2 and "add --quantize int8" in out, out
    assert not os.listdir(tmp_path)

    real_import = runtimes.importlib.import_module

    def no_onnxruntime(name):
        if name in ("onnxruntime", "ai_edge_litert.interpreter"):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name)

    with monkeypatch.context() as patch:
        patch.setattr(runtimes.importlib, "import_module", no_onnxruntime)
        for format in ("onnx", "litert"):
            code, out = nestzoo_cli("export", run_dir, "--base-dir", tmp_path, "--format", format)
            assert code == 2 and f"pip install 'nestzoo[{format}]'" in out, out

    real_call = runtimes.Runtime.__call__

    def perturbed(self, batch):  # a converter that changed the model: logits off by 1e-3
        out = real_call(self, batch)
        out["logits"] = out["logits"] + 1e-3
        return out

    with monkeypatch.context() as patch:
        patch.setattr(runtimes.Runtime, "__call__", perturbed)
        with pytest.raises(runtimes.ConversionMismatch, match="largest difference 0.001 .allowed 0.0001"):
            export.export(run_dir, tmp_path, format="litert")

    def standardized_perturbed(self, batch):  # only the second signature converted wrong
        return perturbed(self, batch) if self.signature == "standardized" else real_call(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(runtimes.Runtime, "__call__", standardized_perturbed)
        with pytest.raises(runtimes.ConversionMismatch, match="litert conversion's standardized signature differs"):
            export.export(run_dir, tmp_path, format="litert")
    assert not os.listdir(tmp_path / NAME)  # nothing half-written

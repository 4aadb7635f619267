"""SavedModel export: the served signatures compute what the Keras model computes.

The exports are checked in a fresh Python process that never imports nestzoo, as a
server would load them.
"""
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestzoo
from nestzoo import basis, data, export

DIGITS = dict(input_shape=(8, 8, 1))


def regressor(outputs=3):
    """A vector-valued ResNEst regressor (the one place the vector keywords are spelled)."""
    return nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=outputs)


def randomize(model, seed=0):
    """Move every batch normalization off its identity defaults, so folding it is tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.3, n))
            layer.moving_mean.assign(rng.normal(0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))
    return model


def standardized(images, dataset="digits"):
    spec = data.get_spec(dataset)
    return ((images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype("float32")


def keras_outputs(model, x):
    """The Keras model's probabilities and logits in inference mode, as float32."""
    both = keras.Model(model.inputs, [model.output, basis.top_layers(model)["logits"].output])
    probabilities, logits = both(x, training=False)
    return {"probabilities": np.asarray(probabilities, "float32"), "logits": np.asarray(logits, "float32")}


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cases = json.load(open(sys.argv[1]))
    arrays = np.load(sys.argv[2])
    for i, case in enumerate(cases):
        served = tf.saved_model.load(case["path"])
        signature = served.signatures["serving_default"]
        x = arrays[f"{i}_input"]
        out = signature(**{case["input"]: tf.constant(x)})
        assert out[case["input"] == "images" and "probabilities" or "predictions"].dtype == tf.float32
        for prefix, rtol, atol in [("", case["rtol"], case["atol"])] + case["also"]:
            for key in case["outputs"]:
                np.testing.assert_allclose(out[key].numpy(), arrays[f"{i}_{prefix}{key}"], rtol=rtol, atol=atol,
                                           err_msg=f"{case['name']}: {prefix}{key}")
        if "probabilities" in out:
            assert out["class_ids"].dtype == tf.int64
            np.testing.assert_array_equal(out["class_ids"], np.argmax(out["probabilities"].numpy(), -1))
        if "standardized" in case:
            std = served.signatures["standardized"](inputs=tf.constant(arrays[f"{i}_standardized"]))
            np.testing.assert_allclose(std["probabilities"], arrays[f"{i}_probabilities"], rtol=case["rtol"],
                                       atol=case["atol"])
        print(case["name"], "ok", sorted(out))
    assert not [m for m in sys.modules if m.startswith("nestzoo")], "nestzoo was imported"
""")


def test_exports_serve_the_keras_outputs_in_a_process_without_nestzoo(tmp_path, policy):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 8, 8, 1)).astype("uint8")
    x = standardized(images)
    cases, arrays = [], {}

    def add(name, model, inputs, expected, also=None, **options):
        """One export, its input, the outputs expected (float32 rounding) and `also` {prefix: (expected, atol)}."""
        path = export.export_saved_model(model, tmp_path / name / "1", **options)
        i = len(cases)
        also = also or {}
        cases.append({"name": name, "path": str(path), "input": "images" if inputs.dtype == np.uint8 else "inputs",
                      "outputs": sorted(expected), "rtol": export.RTOL, "atol": export.ATOL,
                      "also": [(prefix, 1e-2, atol) for prefix, (_, atol) in also.items()]})
        arrays[f"{i}_input"] = inputs
        arrays.update({f"{i}_{k}": v for k, v in expected.items()})
        for prefix, (values, _) in also.items():
            arrays.update({f"{i}_{prefix}{k}": v for k, v in values.items()})
        if inputs.dtype == np.uint8:
            cases[-1]["standardized"] = True
            arrays[f"{i}_standardized"] = x

    for builder in (nestzoo.ResNet, nestzoo.ResNEst, nestzoo.BNResNEst, nestzoo.AResNEst):
        model = randomize(builder(arch="resnet20", **DIGITS))
        add(model.name, model, images, keras_outputs(model, x), dataset="digits")
    densenest = randomize(nestzoo.DenseNEst(arch="densenet40-12", **DIGITS))
    add(densenest.name, densenest, images, keras_outputs(densenest, x), dataset="digits")

    policy("mixed_float16")
    mixed = randomize(nestzoo.AResNEst(arch="resnet20", **DIGITS))
    policy("float32")
    twin = nestzoo.AResNEst(arch="resnet20", **DIGITS)
    twin.set_weights(mixed.get_weights())  # float32 master weights, the served precision
    # served in float32: equal to a float32 twin, and to the float16 model within float16 rounding
    add("mixed_float16", mixed, images, keras_outputs(twin, x), also={"fp16_": (keras_outputs(mixed, x), 2e-2)},
        dataset="digits")

    vectors = rng.normal(size=(4, 10)).astype("float32")
    model = regressor()
    add("vector-regressor", model, vectors, {"predictions": np.asarray(model(vectors, training=False))})

    (tmp_path / "cases.json").write_text(json.dumps(cases))
    np.savez(tmp_path / "arrays.npz", **arrays)
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "cases.json"),
                           str(tmp_path / "arrays.npz")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" ok ") == len(cases), done.stdout


def test_folded_graph_folds_every_conv_batch_norm_and_equals_the_keras_call():
    model = randomize(nestzoo.ResNet(arch="resnet20", **DIGITS))
    folded = export.FoldedGraph(model)
    assert len(folded.folded) == model.identity.num_blocks  # each block's first convolution feeds a BN alone
    x = standardized(np.random.default_rng(2).integers(0, 256, size=(3, 8, 8, 1)))
    reference = export.keras_forward(model)(x)
    out = folded(x)
    for key in ("logits", "predictions"):
        np.testing.assert_allclose(out[key], reference[key], rtol=export.RTOL, atol=export.ATOL)
    images = np.random.default_rng(3).integers(0, 256, size=(2, 8, 8, 1)).astype("uint8")
    xla = export.serving_module(model, dataset="digits", jit_compile=True).serve(images)  # --jit-compile
    np.testing.assert_allclose(xla["logits"], folded(standardized(images))["logits"], rtol=export.RTOL,
                               atol=export.ATOL)
    # without folding the export calls the Keras model itself
    module = export.serving_module(model, dataset="digits", fold_batch_norm=False)
    np.testing.assert_allclose(module.serve_standardized(x)["logits"], reference["logits"], rtol=1e-6, atol=1e-6)


def test_signature_enforces_dtype_and_shape(tmp_path):
    model = nestzoo.AResNEst(arch="resnet20", **DIGITS)
    served = tf.saved_model.load(str(export.export_saved_model(model, tmp_path / "1", dataset="digits")))
    signature = served.signatures["serving_default"]
    assert {k: (v.dtype, tuple(v.shape)) for k, v in signature.structured_input_signature[1].items()} == {
        "images": (tf.uint8, (None, 8, 8, 1))}
    assert {k: v.dtype for k, v in signature.structured_outputs.items()} == {
        "probabilities": tf.float32, "class_ids": tf.int64, "logits": tf.float32}
    for batch in (1, 7):  # the batch size is dynamic
        assert served.serve(tf.zeros((batch, 8, 8, 1), tf.uint8))["probabilities"].shape == (batch, 10)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        signature(images=tf.zeros((2, 8, 8, 1), tf.float32))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match=r"\(None, 8, 8, 1\)"):
        signature(images=tf.zeros((2, 9, 9, 1), tf.uint8))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        served.serve(tf.zeros((2, 8, 8, 1), tf.float32))


def test_export_refuses_bad_input(tmp_path):
    model = nestzoo.ResNet(arch="resnet20", **DIGITS)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists; an export never overwrites a version"):
        export.export_saved_model(model, tmp_path / "taken", dataset="digits")
    with pytest.raises(ValueError, match="the model takes \\(8, 8, 1\\) inputs, cifar10 images are \\(32, 32, 3\\)"):
        export.export_saved_model(model, tmp_path / "x", dataset="cifar10")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        export.export_saved_model(model, tmp_path / "y", dataset="mnist")
    with pytest.raises(ValueError, match="give the data set"):
        export.export_saved_model(model, tmp_path / "y")
    with pytest.raises(ValueError, match="does not exist: expected a run directory or a .keras file"):
        export.export_saved_model(str(tmp_path / "missing.keras"), tmp_path / "z")
    with pytest.raises(ValueError, match="image standardization \\(digits\\) does not apply"):
        export.export_saved_model(regressor(), tmp_path / "v", dataset="digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing partial left behind


def test_one_standardizer_for_the_pipeline_and_the_serving_graph():
    from nestzoo.data.pipeline import standardizer

    spec = data.get_spec("cifar10")
    images = np.random.default_rng(4).integers(0, 256, size=(2, 5, 7, 3)).astype("uint8")
    expected = (images / 255 - np.asarray(spec.mean)) / np.asarray(spec.std)
    for shape in ((5, 7, 3), (None, None, 3)):  # a fixed size, any size
        out = standardizer(spec.mean, spec.std, shape)(images)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_a_model_for_any_image_size_is_served_for_any_size(tmp_path):
    model = randomize(nestzoo.ResNEst(arch="resnet20", input_shape=(None, None, 1)))
    path = export.export_saved_model(model, tmp_path / "1", dataset="digits")
    assert export.read_metadata(path)["input"]["shape"] == [None, None, None, 1]
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert {k: tuple(v.shape) for k, v in signature.structured_input_signature[1].items()} == {
        "images": (None, None, None, 1)}
    rng = np.random.default_rng(5)
    for size in ((8, 8), (12, 20)):
        images = rng.integers(0, 256, size=(2, *size, 1)).astype("uint8")
        out = signature(images=tf.constant(images))
        np.testing.assert_allclose(out["logits"], keras_outputs(model, standardized(images))["logits"],
                                   rtol=export.RTOL, atol=export.ATOL)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match=r"\(None, None, None, 1\)"):
        signature(images=tf.zeros((2, 8, 8, 3), tf.uint8))
    least = model.identity.spec.downsampling  # below it the network's last stage would see no pixel
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"of at least {least}x{least} pixels; got shape"):
        signature(images=tf.zeros((2, least - 1, 8, 1), tf.uint8))
    with pytest.raises(ValueError, match=r"the model takes \(None, None, 1\) inputs, cifar10 images are \(32, 32, 3\)"):
        export.export_saved_model(model, tmp_path / "2", dataset="cifar10")
    # nestzoo predict takes any size, one size per batch
    from PIL import Image

    from nestzoo.predict import Predictor, read_inputs

    predictor = Predictor(path)
    for size in ((8, 8), (12, 20)):
        Image.fromarray(rng.integers(0, 256, size=size).astype("uint8"), mode="L").save(tmp_path / f"{size[0]}.png")
    names, batch = read_inputs([tmp_path / "12.png"], predictor)
    assert batch.shape == (1, 12, 20, 1)
    np.testing.assert_allclose(predictor(batch)["logits"], keras_outputs(model, standardized(batch))["logits"],
                               rtol=export.RTOL, atol=export.ATOL)
    with pytest.raises(ValueError, match=r"the inputs have 2 sizes \(\(8, 8, 1\), \(12, 20, 1\)\); the model takes "
                                         "any size, but one batch holds one"):
        read_inputs([tmp_path / "8.png", tmp_path / "12.png"], predictor)


def test_keras_applications_options_reach_the_export(tmp_path):
    small = dict(blocks=1, width=(4, 8, 8), input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"is built without its top \(include_top=False\)"):
        export.serving_module(nestzoo.ResNet(include_top=False, pooling="avg", **small), dataset="digits")
    softmax = randomize(nestzoo.ResNet(**small))
    linear = nestzoo.ResNet(classifier_activation=None, **small)  # outputs the logits
    linear.set_weights(softmax.get_weights())
    images = np.random.default_rng(6).integers(0, 256, size=(3, 8, 8, 1)).astype("uint8")
    expected = export.serving_module(softmax, dataset="digits").serve(images)
    for fold in (True, False):
        out = export.serving_module(linear, dataset="digits", fold_batch_norm=fold).serve(images)
        for key in ("probabilities", "logits"):
            np.testing.assert_allclose(out[key], expected[key], rtol=export.RTOL, atol=export.ATOL)
    keras.config.set_image_data_format("channels_first")
    try:
        first = nestzoo.ResNet(**dict(small, input_shape=(1, 8, 8)))
    finally:
        keras.config.set_image_data_format("channels_last")
    with pytest.raises(ValueError, match=r"is built channels_first; .* copy the weights into it"):
        export.serving_module(first, dataset="digits")
    first.set_weights(softmax.get_weights())  # as the message says: the weights fit the channels_last twin
    np.testing.assert_allclose(first(standardized(images).transpose(0, 3, 1, 2), training=False),
                               expected["probabilities"], rtol=export.RTOL, atol=export.ATOL)


def test_export_checks_each_model_once_and_never_imports_training(tmp_path, monkeypatch):
    from nestzoo import saving

    calls = []

    def counted(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(basis, "identity", counted("identity", basis.identity))
    monkeypatch.setattr(saving, "check_finite", counted("check_finite", saving.check_finite))
    monkeypatch.setattr(export, "check_finite", counted("check_finite", export.check_finite))
    model = nestzoo.ResNet(blocks=1, width=(4, 8, 8), input_shape=(8, 8, 1))
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"data": "digits"}))
    for source, options in ((model, {"dataset": "digits"}), (run, {}), (run / "model.keras", {})):
        calls.clear()
        export.export(source, tmp_path / "saved_models", **options)
        assert sorted(calls) == ["check_finite", "identity"], (source, calls)
    code = ("import sys, nestzoo.export, nestzoo.predict; "
            "print(sorted(m for m in sys.modules if m.startswith('nestzoo.training')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]

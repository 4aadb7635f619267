"""SavedModel export: the served endpoint computes what the Keras model computes."""
import numpy as np
import pytest
import tensorflow as tf

import nestzoo
from nestzoo import data
from nestzoo.export import export_saved_model

TINY = dict(blocks=1, width=(4, 8, 8), input_shape=(8, 8, 1))


def test_exported_model_serves_the_same_outputs(tmp_path):
    model = nestzoo.AResNEst(**TINY)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    served = tf.saved_model.load(str(export_saved_model(model, tmp_path / "a" / "1")))
    np.testing.assert_allclose(served.serve(x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    signature = served.signatures["serving_default"]
    (output,) = signature(tf.constant(x)).values()
    np.testing.assert_allclose(output, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_export_with_standardization_takes_uint8_images(tmp_path):
    model = nestzoo.ResNet(**TINY)
    path = tmp_path / "model.keras"
    model.save(path)
    served = tf.saved_model.load(str(export_saved_model(path, tmp_path / "digits", dataset="digits")))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1)).astype("uint8")
    spec = data.get_spec("digits")
    standardized = ((images / 255.0 - np.array(spec.mean)) / np.array(spec.std)).astype("float32")
    np.testing.assert_allclose(served.serve(images), model.predict(standardized, verbose=0), rtol=1e-5, atol=1e-6)


def test_export_refuses_bad_input(tmp_path):
    model = nestzoo.ResNet(**TINY)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="is not empty"):
        export_saved_model(model, tmp_path / "taken")
    with pytest.raises(ValueError, match="the model takes \\(8, 8, 1\\) inputs, cifar10 images are \\(32, 32, 3\\)"):
        export_saved_model(model, tmp_path / "x", dataset="cifar10")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        export_saved_model(model, tmp_path / "y", dataset="mnist")
    with pytest.raises(ValueError, match="is not a .keras file"):
        export_saved_model(str(tmp_path / "missing.keras"), tmp_path / "z")

"""nestzoo under Keras's JAX and PyTorch backends: builders, .keras files and identity, basis taps, CoupledSGD.

Keras reads KERAS_BACKEND once, at import, so each backend runs this file as a
script in its own process. A backend that is not installed fails the test. The JAX
process also runs the registry's contract and channels_first
(`test_applications.under_jax`): a second JAX process would compile JAX's eager
initializers again.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = {"jax": 'pip install -e ".[test]" (jax>=0.10.2)', "torch": 'pip install -e ".[test]" (torch>=2.4,<2.14)'}
# Tiny custom networks: a registered arch (resnet20, ~70 layers) takes ~40 s to build under JAX here.
RESNET = dict(blocks=(1, 1, 1), width=(4, 8, 8), input_shape=(8, 8, 3))
DENSENET = dict(blocks=(2, 2, 2), features=4, input_shape=(8, 8, 3))
MODELS = [("ResNet", RESNET), ("ResNEst", RESNET), ("BNResNEst", RESNET), ("AResNEst", RESNET),
          ("DenseNet", DENSENET), ("DenseNEst", DENSENET)]


def coupled_sgd_reference(w, gradients, lr, momentum, decay):
    """torch.optim.SGD with Nesterov momentum and coupled weight decay, in numpy."""
    buffer = np.zeros_like(w)
    for g in gradients:
        g = g + decay * w
        buffer = momentum * buffer + g
        w = w - lr * (g + momentum * buffer)
    return w


def check_backend(backend, tmp_dir):
    """Run every check under the Keras backend this process was started with."""
    import keras

    import nestzoo
    from nestzoo import basis

    assert keras.backend.backend() == backend, f"Keras runs {keras.backend.backend()}, not {backend}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    for builder, kwargs in MODELS:
        model = getattr(nestzoo, builder)(classes=3, **kwargs)
        # off PyTorch's defaults, BN statistics included, so the reload below has something to lose
        model.set_weights([w + rng.uniform(-0.05, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
        y = model.predict(x, verbose=0)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5, err_msg=builder)  # softmax over 3 classes
        path = Path(tmp_dir) / f"{builder}.keras"
        model.save(path)
        reloaded, clone = keras.saving.load_model(path), keras.models.clone_model(model)
        np.testing.assert_array_equal(reloaded.predict(x, verbose=0), y, err_msg=builder)
        assert reloaded.identity == clone.identity == model.identity and reloaded.options == model.options, builder

    resnest = nestzoo.ResNEst(classifier_activation=None, **RESNET)
    taps = nestzoo.basis_model(resnest)(x)
    expected = {"v0": (2, 8, 8, 3), "x0": (2, 8, 8, 4)}
    for i, shape in enumerate([(2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 8)], 1):  # one block per stage
        expected[f"v{i}"] = expected[f"x{i}"] = shape
    assert {k: tuple(v.shape) for k, v in taps.items()} == expected
    kernel, bias = basis.top_layers(resnest)["logits"].get_weights()
    pooled = keras.ops.convert_to_numpy(taps["x3"]).mean(axis=(1, 2))
    np.testing.assert_allclose(resnest.predict(x, verbose=0), pooled @ kernel + bias, rtol=1e-4, atol=1e-5)  # eq. 2

    w0 = np.array([1.0, -2.0, 0.5], "float32")
    gradients = [np.array([0.3, 0.1, -0.2], "float32"), np.array([-0.1, 0.4, 0.2], "float32")]
    variable = keras.Variable(w0)
    optimizer = nestzoo.CoupledSGD(learning_rate=0.1, momentum=0.9, nesterov=True, coupled_weight_decay=0.01)
    for g in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable),
                               coupled_sgd_reference(w0, gradients, 0.1, 0.9, 0.01), rtol=1e-6)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_runs_builders_files_taps_and_optimizer(backend, tmp_path):
    assert importlib.util.find_spec(backend), f"the {backend} backend is not installed: {INSTALL[backend]}"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, __file__, backend, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


if __name__ == "__main__":
    check_backend(*sys.argv[1:])
    if sys.argv[1] == "jax":
        from test_applications import under_jax  # this file's folder is on sys.path when run as a script

        under_jax(sys.argv[2])

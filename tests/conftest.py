import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def policy():
    """Set a global dtype policy for one test and restore float32 afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def no_keras(monkeypatch):
    """Fail the test if a builder reaches Keras layers before rejecting its input."""
    from nestzoo import builders

    def reached(*args, **kwargs):
        raise AssertionError("Keras was reached before the bad input was rejected")

    monkeypatch.setattr(builders.keras, "Input", reached)


@pytest.fixture
def assert_reloads(tmp_path):
    """Fit a model one epoch (moving BN statistics off their defaults), save it as a .keras
    file, reload it without custom_objects and require equal predictions."""

    def check(model, x, y, loss):
        model.compile("sgd", loss)
        model.fit(x, y, epochs=1, verbose=0)
        model.save(tmp_path / "model.keras")
        reloaded = keras.saving.load_model(tmp_path / "model.keras")
        np.testing.assert_array_equal(model.predict(x, verbose=0), reloaded.predict(x, verbose=0))

    return check


@pytest.fixture
def nestzoo_cli(capsys):
    """Run `nestzoo argv...` in this process; returns (exit code, stdout + stderr)."""
    from nestzoo import cli

    def run(*argv):
        try:
            cli.main([str(a) for a in argv])
            code = 0
        except SystemExit as exit:
            code = exit.code
        out = capsys.readouterr()
        return code, out.out + out.err

    return run

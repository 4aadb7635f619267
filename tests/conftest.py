import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def policy():
    """Set a global dtype policy for one test and restore float32 afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")

"""Where and how the arithmetic runs: precision policies, XLA, devices.

Precision: "auto" is mixed_float16 on a GPU and float32 on a CPU. Under
mixed_float16 Keras wraps the optimizer in a ``LossScaleOptimizer`` (dynamic loss
scaling); bfloat16 has float32's range and needs none. The models' ``predictions``
layer is float32 under every policy.

XLA: on by default on GPUs, off on CPUs, where the oneDNN kernels that nestzoo
turns on (``TF_ENABLE_ONEDNN_OPTS=1``, see the README) train faster without it.

TensorFlow and Keras are imported by the functions, so `PRECISIONS` is read without them.
"""
import contextlib

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision="auto"):
    """The Keras dtype policy name of a precision choice."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return precision


def resolve_jit_compile(jit_compile=None):
    """XLA compilation: the given bool, or the faster default of this machine."""
    return has_gpu() if jit_compile is None else bool(jit_compile)


@contextlib.contextmanager
def dtype_policy(policy):
    """Build models under a global dtype policy, restoring the previous one after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)

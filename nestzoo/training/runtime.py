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
import functools
import os
import platform
import warnings

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# How many times float32's time a training step took on a CPU: resnet20.a-resnest, batch 128 of 32x32x3
# images, on an AMD EPYC (2 cores, shared), in three runs of `python benchmarks/precision.py` (README,
# "Speed"). mixed_bfloat16's is without the CPU's bfloat16 instructions (one run with
# ONEDNN_MAX_CPU_ISA=AVX512_CORE); with them (avx512_bf16) it took 0.8 to 1.0x float32's.
CPU_SLOWDOWN = {"mixed_float16": "5.6 to 13.9", "mixed_bfloat16": "3.2"}
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def cpu_flags():
    """The CPU's instruction-set flags (/proc/cpuinfo's; empty where unknown)."""
    return set(_cpuinfo("flags").split())


@functools.cache
def warn_if_slow(policy):
    """Warn (once per policy) when a 16-bit policy trains slower than float32 here: float16 on any CPU,
    bfloat16 on a CPU without bfloat16 instructions; with the factor measured (`CPU_SLOWDOWN`)."""
    if policy not in CPU_SLOWDOWN or has_gpu():
        return
    if policy == "mixed_bfloat16" and cpu_flags() & set(BFLOAT16_FLAGS):
        return
    warnings.warn(f"{policy} on a CPU without a GPU: a training step took {CPU_SLOWDOWN[policy]}x float32's on "
                  "an AMD EPYC (2 cores; resnet20.a-resnest, batch 128, 32x32x3), and CPUs without 16-bit "
                  "arithmetic can be tens of times slower. Use --precision float32 (or auto) on a CPU",
                  stacklevel=4)  # the caller of train()


def environment():
    """What bit-exact arithmetic depends on: the threads, oneDNN, the CPU model and the versions."""
    import keras
    import tensorflow as tf

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = tf.config.threading.get_intra_op_parallelism_threads() or usable
    return {"threads": threads, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "cpu": cpu_model(),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def _cpuinfo(field):
    """The first value of `field` in /proc/cpuinfo, "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model():
    """The CPU's model name (/proc/cpuinfo's, else the platform's)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


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

"""Training step time of each precision policy on this machine (the factor `nestzoo train` warns with on CPUs).

resnet20.a-resnest, batch 128 of random 32x32x3 images, the paper's optimizer
(with loss scaling under mixed_float16); the median of --steps steady-state steps
after --warmup, each policy in a fresh model, all in one process.

    python benchmarks/precision.py
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/precision.py   # oneDNN without the bfloat16 instructions
"""
import argparse
import os
import statistics
import time

import numpy as np

import nestzoo  # sets nestzoo's TensorFlow defaults before TensorFlow is imported


def step_seconds(policy, steps, warmup):
    import keras
    import tensorflow as tf

    from nestzoo.training import runtime

    with runtime.dtype_policy(policy):
        model = nestzoo.create_model("resnet20.a-resnest", input_shape=(32, 32, 3), classes=10)
    optimizer = nestzoo.get_recipe("paper").optimizer(resnest=False, steps_per_epoch=1000)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(), jit_compile=False)
    rng = np.random.default_rng(0)
    batch = (rng.random((128, 32, 32, 3), "float32"), rng.integers(0, 10, 128))
    stamps = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stamps.append(time.perf_counter()))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=warmup + steps, epochs=1,
              callbacks=[timer], verbose=0, shuffle=False)
    return statistics.median(np.diff(stamps[warmup - 1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    from nestzoo.training.runtime import cpu_model

    print(f"{cpu_model()}, {os.cpu_count()} cores, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")
    seconds = {policy: step_seconds(policy, args.steps, args.warmup) for policy in args.policies}
    for policy, value in seconds.items():
        print(f"{policy:<15} {value:.3f} s/step  {value / seconds[args.policies[0]]:.1f}x {args.policies[0]}")


if __name__ == "__main__":
    main()

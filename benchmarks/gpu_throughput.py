"""Training images/s of a nestzoo network per precision, under any Keras backend.

WRN-16-8 (the paper's largest), batch 128, random CIFAR-shaped data, the paper's
optimizer (nestzoo.CoupledSGD: Nesterov momentum 0.9, coupled decay 5e-4), XLA on;
float32, mixed_float16 and mixed_bfloat16 in turn, images/s over steady-state steps.
Imports only keras and nestzoo's builders (no TensorFlow), so it runs where only JAX
is installed; --torch also times the same network in PyTorch on the same device:

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --torch
    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --arch resnet20 --precision float32
"""
import argparse
import time

import keras
import numpy as np

import nestzoo

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def images_per_second(arch, precision, batch_size, steps, warmup):
    """Steady-state training images/s of `arch` under a dtype policy."""
    keras.mixed_precision.set_global_policy(precision)
    model = nestzoo.ResNet(arch=arch, classifier_activation=None)
    optimizer = nestzoo.get_recipe("paper").optimizer(resnest=False, steps_per_epoch=390)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 32, 32, 3), "float32")
    y = rng.integers(0, 10, batch_size)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)  # returns the loss as a number: the step has finished
    return batch_size * steps / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn16-8", help="a registered arch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--torch", action="store_true", help="also time the PyTorch network (CUDA if available)")
    args = p.parse_args()
    print(f"{args.arch}, batch {args.batch_size}, Keras {keras.__version__}, backend {keras.backend.backend()}")
    for precision in args.precision:
        rate = images_per_second(args.arch, precision, args.batch_size, args.steps, args.warmup)
        print(f"{precision:>15}: {rate:8.1f} images/s nestzoo", flush=True)
        if args.torch:
            import torch
            import torch_reference

            device = "cuda" if torch.cuda.is_available() else "cpu"
            label, torch_rate = torch_reference.images_per_second(
                args.arch, args.batch_size, args.steps, args.warmup, device, precision)
            print(f"{precision:>15}: {torch_rate:8.1f} images/s {label}; ratio {rate / torch_rate:.2f}", flush=True)


if __name__ == "__main__":
    main()

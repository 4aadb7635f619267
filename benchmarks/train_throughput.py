"""Training throughput of a nestzoo network against the same network in PyTorch.

ResNet-20 (pre-activation, as the paper's reference), batch 128, float32, random
CIFAR-shaped inputs; images/s over steady-state steps (after warm-up: tracing,
compilation, allocator growth). Both sides run one SGD step (Nesterov 0.9, coupled
weight decay 5e-4, cross-entropy) per batch. Keras runs with nestzoo's defaults
(oneDNN on, XLA off on CPUs); set TF_ENABLE_ONEDNN_OPTS=0 or --jit-compile to compare.

    python benchmarks/train_throughput.py                      # nestzoo's default path
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/train_throughput.py --jit-compile
"""
import argparse
import os
import time

import numpy as np

import nestzoo  # sets nestzoo's TensorFlow defaults before TensorFlow is imported


def keras_images_per_second(args):
    import keras
    import tensorflow as tf

    from nestzoo import training

    model = nestzoo.ResNet(arch=args.arch, classifier_activation=None)
    jit_compile = training.resolve_jit_compile(args.jit_compile)
    model.compile(training.get_recipe("paper").optimizer(resnest=False, steps_per_epoch=1000),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    batch = (rng.random((args.batch_size, 32, 32, 3), "float32"), rng.integers(0, 10, args.batch_size))
    stamps = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stamps.append(time.perf_counter()))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=args.warmup + args.steps, epochs=1,
              callbacks=[timer], verbose=0)
    steady = stamps[args.warmup - 1:]
    label = f"Keras {keras.__version__} / TF {tf.__version__} (oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, " \
            f"XLA {'on' if jit_compile else 'off'})"
    return label, args.batch_size * args.steps / (steady[-1] - steady[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet20", help="a registered arch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                   help="XLA (default: nestzoo's, on with a GPU only)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch network")
    args = p.parse_args()
    label, keras_rate = keras_images_per_second(args)
    print(f"{label}: {keras_rate:.1f} images/s")
    if args.no_torch:
        return
    try:
        import torch_reference
    except ImportError:
        print("PyTorch is not installed; pip install torch to compare")
        return
    torch_label, torch_rate = torch_reference.images_per_second(args.arch, args.batch_size, args.steps, args.warmup)
    print(f"{torch_label}: {torch_rate:.1f} images/s")
    print(f"ratio nestzoo / PyTorch: {keras_rate / torch_rate:.2f}")


if __name__ == "__main__":
    main()

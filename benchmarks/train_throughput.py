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
from nestzoo import specs


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


def torch_images_per_second(args):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        """The pre-activation basic block of nestzoo (and of the paper's reference)."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            y = F.relu(self.bn1(x))
            shortcut = x if self.shortcut is None else self.shortcut(y)
            return self.conv2(F.relu(self.bn2(self.conv1(y)))) + shortcut

    spec = specs.get_spec(args.arch)
    layers, width_in = [nn.Conv2d(3, spec.widths[0], 3, 1, 1, bias=False)], spec.widths[0]
    for _, _, width, _, stride in spec.stage_blocks():
        layers.append(Block(width_in, width, stride))
        width_in = width
    net = nn.Sequential(*layers, nn.BatchNorm2d(width_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(width_in, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    stamps = []
    for _ in range(args.warmup + args.steps):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    steady = stamps[args.warmup - 1:]
    return f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)", \
        args.batch_size * args.steps / (steady[-1] - steady[0])


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
        torch_label, torch_rate = torch_images_per_second(args)
    except ImportError:
        print("PyTorch is not installed; pip install torch to compare")
        return
    print(f"{torch_label}: {torch_rate:.1f} images/s")
    print(f"ratio nestzoo / PyTorch: {keras_rate / torch_rate:.2f}")


if __name__ == "__main__":
    main()

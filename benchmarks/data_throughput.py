"""Throughput of nestzoo's CIFAR training pipeline, augmentation included.

Serves 50,000 synthetic CIFAR-shaped uint8 images through `nestzoo.data.load`
(in-memory source: the same shuffle, batch, augment and standardize code as tfds or
local files once cached) and prints images/second per epoch (wall clock; images per
CPU-second, all threads, shows the cost when other processes share the cores):

    python benchmarks/data_throughput.py [--epochs 4] [--batch-size 128]
"""
import argparse
import time

import numpy as np

from nestzoo import data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-images", type=int, default=50_000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.num_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.num_images)
    train, _ = data.load("cifar10", args.batch_size, source=((images, labels), (images[:1], labels[:1])))

    rates = []
    for epoch in range(1, args.epochs + 1):
        start, cpu_start, count = time.perf_counter(), time.process_time(), 0
        for batch, _ in train:
            count += batch.shape[0]
        rates.append(count / (time.perf_counter() - start))
        cpu_rate = count / (time.process_time() - cpu_start)
        print(f"epoch {epoch}: {count} images, {rates[-1]:,.0f} images/s "
              f"({cpu_rate:,.0f} images per CPU-second)")
    steady = rates[1:] or rates
    print(f"training pipeline (shuffle, batch {args.batch_size}, pad-crop-flip, standardize): "
          f"{np.mean(steady):,.0f} images/s (mean of epochs {args.epochs - len(steady) + 1}..{args.epochs})")


if __name__ == "__main__":
    main()

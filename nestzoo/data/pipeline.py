"""Batched tf.data pipelines: shuffle, batch, augment and standardize whole batches."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from nestzoo.data.catalog import DatasetSpec, get_spec
from nestzoo.data.sources import load_examples

STANDARDIZE_CHOICES = ("published", "computed")


def _reflect(index, size):
    """Indices of a reflect-padded axis (edge not repeated) mapped into 0..size-1."""
    index = tf.abs(index)
    return tf.where(index > size - 1, 2 * (size - 1) - index, index)


def augment_batch(images, seed, *, pad: int, flip_probability: float):
    """Random crops of reflect-padded images, mirrored left-right with `flip_probability`.

    `images` is a uint8 batch (B, H, W, C); `seed` a stateless seed of shape (2,).
    Equals padding every image by `pad` pixels with `tf.pad(mode="REFLECT")`, cropping
    a random H x W window and flipping it, done as one gather over the whole batch.
    """
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    draws = tf.random.stateless_uniform([3, batch], seed)
    offsets = tf.cast(draws[:2] * (2 * pad + 1), tf.int32) - pad
    rows = _reflect(offsets[0][:, None] + tf.range(height), height)
    cols = _reflect(offsets[1][:, None] + tf.range(width), width)
    cols = tf.where((draws[2] < flip_probability)[:, None], tf.reverse(cols, [1]), cols)
    pixels = rows[:, :, None] * width + cols[:, None, :] + (tf.range(batch) * height * width)[:, None, None]
    return tf.reshape(tf.gather(tf.reshape(images, [-1, channels]), tf.reshape(pixels, [-1])), shape)


def channel_stats(examples: tf.data.Dataset):
    """Per-channel (mean, std) of the images of `examples`, on the [0, 1] scale."""
    def accumulate(totals, batch):
        pixels = tf.cast(tf.reshape(batch[0], [-1, tf.shape(batch[0])[-1]]), tf.float64) / 255
        return (totals[0] + tf.cast(tf.shape(pixels)[0], tf.float64),
                totals[1] + tf.reduce_sum(pixels, 0), totals[2] + tf.reduce_sum(pixels ** 2, 0))

    channels = examples.element_spec[0].shape[-1]
    zeros = tf.zeros([channels], tf.float64)
    count, total, squares = examples.batch(1024).reduce((tf.constant(0, tf.float64), zeros, zeros), accumulate)
    mean = total / count
    std = tf.sqrt(squares / count - mean ** 2)
    return tuple(mean.numpy().tolist()), tuple(std.numpy().tolist())


@dataclass(frozen=True)
class Datasets:
    """The batched pipelines of one data set and what a model needs to know about them.

    `train` yields shuffled, augmented, standardized (float32 image, int32 label)
    batches; `validation` and `test` standardized batches in stored order.
    `validation` is the test set (the paper's protocol) unless `load` held out part
    of the training set; `validation_split` says which. Unpacks as (train, test).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    spec: DatasetSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_validation: int
    num_test: int
    validation_split: str

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def __iter__(self):
        return iter((self.train, self.test))


def _held_out_count(validation, num_train: int) -> int:
    """Number of training examples `validation` (None, a fraction or a count) holds out."""
    if validation is None:
        return 0
    if isinstance(validation, float) and 0 < validation < 1:
        count = round(validation * num_train)
    elif isinstance(validation, numbers.Integral) and not isinstance(validation, bool):
        count = int(validation)
    else:
        raise ValueError(f"validation must be None (use the test set), a fraction in (0, 1) "
                         f"or a count of training examples, not {validation!r}")
    if not 0 < count < num_train:
        raise ValueError(f"validation={validation!r} holds out {count} of {num_train} "
                         "training examples; it must leave both parts non-empty")
    return count


def _standardizer(mean, std, image_shape):
    """(uint8 images, labels) -> (float32 (x / 255 - mean) / std, int32 labels)."""
    # Constants of the full image shape broadcast over the batch only: several times
    # faster than broadcasting a per-channel vector over the innermost axis.
    scale = tf.constant(np.broadcast_to(1 / (255 * np.asarray(std)), image_shape), tf.float32)
    offset = tf.constant(np.broadcast_to(-np.asarray(mean) / np.asarray(std), image_shape), tf.float32)

    def standardize(images, labels):
        return tf.cast(images, tf.float32) * scale + offset, tf.cast(labels, tf.int32)
    return standardize


def _evaluation(examples, standardize, batch_size):
    return examples.batch(batch_size).map(standardize, tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def load(name: str, batch_size: int = 128, *, source=None, data_dir=None, download: bool = True,
         validation=None, standardize: str = "published", augment: bool = True, cache: bool = True,
         shuffle_buffer: int | None = None, seed: int = 0, drop_remainder: bool = False) -> Datasets:
    """Batched train/validation/test pipelines of "cifar10", "cifar100" or "digits".

    source: None (CIFAR through `tfds.load`, digits from scikit-learn), a path to local
        CIFAR files (see `nestzoo.data.cifar_files`), or in-memory uint8 arrays
        `((x_train, y_train), (x_test, y_test))` as `keras.datasets` returns them.
    data_dir, download: passed to `tfds.load`.
    validation: None uses the test set (as the paper did); a fraction in (0, 1) or a
        count holds out the last examples of the training set's stored order.
    standardize: "published" (the spec's per-channel constants) or "computed" (from
        the training examples, after the hold-out).
    augment: reflect-pad, random crop and flip the training batches (the spec's
        parameters); evaluation batches are never augmented.
    cache: keep tfds's decoded uint8 images in memory after the first epoch.
    shuffle_buffer: default the whole training set. drop_remainder: train only.
    seed: fixes the shuffling order and the augmentation of every epoch.
    """
    spec = get_spec(name)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if standardize not in STANDARDIZE_CHOICES:
        raise ValueError(f"standardize must be one of {STANDARDIZE_CHOICES}, not {standardize!r}")
    examples = load_examples(spec, source, data_dir=data_dir, download=download)
    num_train = int(examples.train.cardinality())
    held_out = _held_out_count(validation, num_train)
    num_train -= held_out
    splits = examples.train.take(num_train), examples.train.skip(num_train), examples.test
    if cache and not examples.in_memory:
        splits = tuple(split.cache() for split in splits)
    train, validation_examples, test = splits
    mean, std = (spec.mean, spec.std) if standardize == "published" else channel_stats(train)

    standardize_batch = _standardizer(mean, std, spec.input_shape)
    batches = train.shuffle(shuffle_buffer or num_train, seed=seed).batch(batch_size, drop_remainder)
    if augment:
        # one stateless seed per batch, from a stream that is itself seeded and
        # redrawn every epoch: the same `seed` gives the same augmentations
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        batches = tf.data.Dataset.zip(batches, seeds).map(
            lambda batch, key: standardize_batch(
                augment_batch(batch[0], key, pad=spec.pad, flip_probability=spec.flip_probability), batch[1]),
            tf.data.AUTOTUNE)
    else:
        batches = batches.map(standardize_batch, tf.data.AUTOTUNE)
    test_batches = _evaluation(test, standardize_batch, batch_size)
    return Datasets(
        train=batches.prefetch(tf.data.AUTOTUNE),
        validation=_evaluation(validation_examples, standardize_batch, batch_size) if held_out else test_batches,
        test=test_batches, spec=spec, mean=tuple(mean), std=tuple(std), num_train=num_train,
        num_validation=held_out or int(test.cardinality()), num_test=int(test.cardinality()),
        validation_split=f"held out: last {held_out} training examples" if held_out else "test",
    )

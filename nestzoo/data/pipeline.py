"""Batched tf.data pipelines: shuffle, batch, augment and standardize whole batches."""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from nestzoo.data.catalog import DatasetSpec, get_spec
from nestzoo.data.sources import load_examples
from nestzoo.specs import positive_int

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
    steps_per_epoch: int | None = None
    epoch_batches: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def __iter__(self):
        return iter((self.train, self.test))

    def epochs(self, start: int = 0, stop: int | None = None) -> tf.data.Dataset:
        """The training batches of epochs start..stop-1 (0-based; stop None: endless) in one stream.

        Epoch e's shuffle and augmentation are a function of (seed, e) only: a run
        resumed at epoch e in a new process sees the batches an uninterrupted run saw.
        Use with ``model.fit(d.epochs(), steps_per_epoch=d.steps_per_epoch, epochs=n)``.
        """
        if self.epoch_batches is None:
            raise ValueError("these Datasets were not made by nestzoo.data.load; use .train")
        epochs = tf.data.Dataset.counter(start) if stop is None else tf.data.Dataset.range(start, stop)
        return epochs.flat_map(self.epoch_batches).prefetch(tf.data.AUTOTUNE)


def _describe(source) -> str:
    return "default" if source is None else repr(str(source)) if isinstance(source, (str, bytes)) or hasattr(
        source, "__fspath__") else "arrays"


def held_out_count(validation, num_train: int) -> int:
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


def standardizer(mean, std, image_shape):
    """images -> float32 (images / 255 - mean) / std, per channel: the one standardization of
    training, evaluation and the serving graph (`nestzoo.export`).

    image_shape: (H, W, C); H and W may be None (images of any size).
    """
    # Constants of the full image shape broadcast over the batch only: several times
    # faster than broadcasting a per-channel vector over the innermost axis.
    shape = tuple(image_shape)
    if None in shape:  # any image size: per-channel constants
        shape = shape[-1:]
    scale = tf.constant(np.broadcast_to(1 / (255 * np.asarray(std)), shape), tf.float32)
    offset = tf.constant(np.broadcast_to(-np.asarray(mean) / np.asarray(std), shape), tf.float32)

    def standardize(images):
        return tf.cast(images, tf.float32) * scale + offset
    return standardize


def _labelled(standardize):
    """(uint8 images, labels) -> (standardized images, int32 labels)."""
    return lambda images, labels: (standardize(images), tf.cast(labels, tf.int32))


def epoch_batches_of(examples, epoch, *, seed, buffer, batch_size, drop_remainder, standardize, augment):
    """The batches of one training epoch; called by flat_map with an int64 epoch tensor.

    The shuffle seed and the per-batch augmentation seeds are drawn statelessly from
    (seed, epoch), so an epoch is the same in every process, whatever TensorFlow's
    global seed (the traced function's graph-level seed is cleared for that).
    """
    tf.compat.v1.get_default_graph().seed = None
    key = tf.random.stateless_uniform([2], tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
                                      minval=None, maxval=None, dtype=tf.int64)
    batches = examples.shuffle(buffer, seed=key[0], reshuffle_each_iteration=False).batch(batch_size, drop_remainder)
    if augment is None:
        return batches.map(standardize, tf.data.AUTOTUNE)
    return tf.data.Dataset.zip(batches, tf.data.Dataset.counter()).map(
        lambda batch, index: standardize(augment(batch[0], tf.stack([key[1], index])), batch[1]),
        tf.data.AUTOTUNE)


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
    seed: fixes the shuffling order and the augmentation of every epoch: `epochs()`
        makes epoch e's a function of (seed, e) alone, which resuming relies on.
    """
    spec = get_spec(name)
    positive_int("batch_size", batch_size)
    if standardize not in STANDARDIZE_CHOICES:
        raise ValueError(f"standardize must be one of {STANDARDIZE_CHOICES}, not {standardize!r}")
    examples = load_examples(spec, source, data_dir=data_dir, download=download)
    num_train = int(examples.train.cardinality())
    for split, count in (("training", num_train), ("test", int(examples.test.cardinality()))):
        if count == 0:
            raise ValueError(f"{spec.name}: the {split} split of the source holds no examples "
                             f"(source={_describe(source)}); give a non-empty data set")
    held_out = held_out_count(validation, num_train)
    num_train -= held_out
    splits = examples.train.take(num_train), examples.train.skip(num_train), examples.test
    if cache and not examples.in_memory:
        splits = tuple(split.cache() for split in splits)
    train, validation_examples, test = splits
    mean, std = (spec.mean, spec.std) if standardize == "published" else channel_stats(train)

    standardize_batch = _labelled(standardizer(mean, std, spec.input_shape))
    epoch_batches = functools.partial(
        epoch_batches_of, train, seed=seed, buffer=shuffle_buffer or num_train, batch_size=batch_size,
        drop_remainder=drop_remainder, standardize=standardize_batch,
        augment=functools.partial(augment_batch, pad=spec.pad, flip_probability=spec.flip_probability)
        if augment else None)
    steps = num_train // batch_size if drop_remainder else -(-num_train // batch_size)
    if steps < 1:
        raise ValueError(f"{spec.name}: {num_train} training examples make no batch of {batch_size} "
                         "with drop_remainder=True; lower the batch size")
    # one pass per iteration, each from another epoch key drawn from the seed's stream
    # (what a plain model.fit(d.train, epochs=...) sees); `epochs()` is the (seed, epoch) one
    passes = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(epoch_batches)
    test_batches = _evaluation(test, standardize_batch, batch_size)
    return Datasets(
        train=passes.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE),
        validation=_evaluation(validation_examples, standardize_batch, batch_size) if held_out else test_batches,
        test=test_batches, spec=spec, mean=tuple(mean), std=tuple(std), num_train=num_train,
        num_validation=held_out or int(test.cardinality()), num_test=int(test.cardinality()),
        validation_split=f"held out: last {held_out} training examples" if held_out else "test",
        steps_per_epoch=steps, epoch_batches=epoch_batches,
    )

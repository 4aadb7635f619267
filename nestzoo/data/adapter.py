"""One adapter from every form of data nestzoo takes to the splits a run needs (TensorFlow only).

    from nestzoo import data
    s = data.splits("digits", 64, validation=0.1)            # a data set name (nestzoo.data.load)
    s = data.splits(data.load("cifar10"))                     # nestzoo.data.Datasets
    s = data.splits((train_ds, test_ds))                      # batched tf.data: (train, [validation,] test)
    s = data.splits((x, y), 32, validation=0.2)               # numpy arrays, as model.fit takes them
    s = data.splits(((x, y), (x_test, y_test)), 32)           # array pairs, keras.datasets' layout

Training, tuning, the theory and the experiments all read their data through `splits`.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from nestzoo.data.pipeline import Datasets, epoch_batches_of, held_out_count, load
from nestzoo.specs import positive_int

FORMS = ("a data set name of nestzoo.data (digits, cifar10, cifar100), a nestzoo.data.Datasets, (x, y) numpy "
         "arrays, or (train, test) / (train, validation, test) parts, each a batched tf.data dataset of (x, y) "
         "or an (x, y) pair of arrays")


@dataclass(frozen=True)
class Splits:
    """The train/validation/test batches of some data and what a model builder needs to know about it.

    validation, test: None where the data gave none (bare (x, y) arrays without a hold-out).
    num_classes: None where unknown (tf.data and arrays). num_train, steps_per_epoch: None
    for an endless (repeated) training dataset. epochs: None, or a callable
    (start, stop) -> the batches of epochs start..stop-1, epoch e's order a function of
    (seed, e) (what an exact resume needs). validation_split says where the
    validation batches come from: "test", "given", or "held out: ...".
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    name: str
    num_classes: int | None
    input_shape: tuple
    num_train: int | None
    steps_per_epoch: int | None
    validation_split: str
    epochs: Callable | None = field(default=None, repr=False, compare=False)


def splits(data, batch_size=128, *, seed=0, validation=None, augment=True, **load_options) -> Splits:
    """The `Splits` of `data`: a data set name, a Datasets, (x, y) arrays, or (train, [validation,] test).

    batch_size: batches of a name and of arrays (tf.data datasets come batched).
    seed: the order of every epoch (and a name's augmentation). validation: None (the
    test split validates, as in the paper), or a fraction or count of the training
    examples held out (their last ones) from a name or from arrays. augment: a name's
    training augmentation. load_options: those of ``nestzoo.data.load`` (source=,
    data_dir=, download=, standardize=, ...), with a name only.
    """
    if isinstance(data, str):
        data = load(data, batch_size, seed=seed, validation=validation, augment=augment, **load_options)
    elif load_options:
        raise ValueError(f"{', '.join(sorted(load_options))} apply to a data set name only")
    elif validation is not None and not _is_pair(data):
        raise ValueError(f"validation={validation!r} holds out part of a data set name's or (x, y) arrays' "
                         "training set; with other data give (train, validation, test)")
    if isinstance(data, Datasets):
        return _from_datasets(data)
    if _is_pair(data):
        return _from_arrays(data, batch_size, seed, validation)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            isinstance(part, tf.data.Dataset) or _is_pair(part) for part in data):
        return _from_parts(data, batch_size, seed)
    raise ValueError(f"data must be {FORMS}; got {type(data).__name__}")


def _is_pair(data):
    """Whether `data` is (x, y) arrays (not datasets, not pairs of pairs)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "__array__") for a in data)


def _from_datasets(data):
    return Splits(
        train=data.train, validation=data.validation, test=data.test, name=data.spec.name,
        num_classes=data.num_classes, input_shape=tuple(data.input_shape), num_train=data.num_train,
        steps_per_epoch=data.steps_per_epoch or _count(data.train)[0], validation_split=data.validation_split,
        epochs=data.epochs if data.epoch_batches is not None else None)


def _arrays(pair, where):
    x, y = (np.asarray(a) for a in pair)
    if len(x) != len(y):
        raise ValueError(f"{where}: x and y have different numbers of examples: {len(x)} and {len(y)}")
    if not len(x):
        raise ValueError(f"{where}: the arrays hold no examples")
    return x, y


def _examples(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def _keep(x, y):
    return x, y


def _training(x, y, batch_size, seed):
    """(train, epochs) batches of arrays, reshuffled every epoch as nestzoo.data's are: by (seed, epoch)."""
    epoch_batches = functools.partial(epoch_batches_of, _examples(x, y), seed=seed, buffer=len(x),
                                      batch_size=batch_size, drop_remainder=False, standardize=_keep, augment=None)
    steps = -(-len(x) // batch_size)
    passes = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(epoch_batches)
    train = passes.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)

    def epochs(start=0, stop=None):
        numbers = tf.data.Dataset.counter(start) if stop is None else tf.data.Dataset.range(start, stop)
        return numbers.flat_map(epoch_batches).prefetch(tf.data.AUTOTUNE)
    return train, steps, epochs


def _evaluation(x, y, batch_size):
    return _examples(x, y).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _from_arrays(pair, batch_size, seed, validation):
    """(x, y) arrays: the training set, less the last `validation` examples, which validate and test."""
    positive_int("batch_size", batch_size)
    x, y = _arrays(pair, "(x, y)")
    held_out = held_out_count(validation, len(x))
    keep = len(x) - held_out
    train, steps, epochs = _training(x[:keep], y[:keep], batch_size, seed)
    held = _evaluation(x[keep:], y[keep:], batch_size) if held_out else None
    return Splits(train=train, validation=held, test=held, name="arrays", num_classes=None,
                  input_shape=tuple(x.shape[1:]), num_train=keep, steps_per_epoch=steps,
                  validation_split=f"held out: last {held_out} training examples" if held_out else "none",
                  epochs=epochs)


def _count(dataset):
    """(batches, examples) of a finite batched dataset, in one pass."""
    batches, examples = dataset.reduce((0, 0), lambda n, batch: (n[0] + 1, n[1] + tf.shape(batch[0])[0]))
    return int(batches), int(examples)


def _from_parts(parts, batch_size, seed):
    """(train, test) or (train, validation, test): batched tf.data datasets or (x, y) arrays."""
    names = ("train", "validation", "test") if len(parts) == 3 else ("train", "test")
    epochs = None
    batched = []
    for name, part in zip(names, parts):
        if isinstance(part, tf.data.Dataset):
            if not isinstance(part.element_spec, tuple) or len(part.element_spec) < 2:
                raise ValueError(f"the {name} dataset must yield batched (x, y) tuples, got {part.element_spec}")
            batched.append(part)
            continue
        positive_int("batch_size", batch_size)
        x, y = _arrays(part, name)
        if name == "train":
            train, _, epochs = _training(x, y, batch_size, seed)
            batched.append(train)
        else:
            batched.append(_evaluation(x, y, batch_size))
    train, validation, test = batched if len(batched) == 3 else (batched[0], batched[1], batched[1])
    if train.cardinality() == tf.data.INFINITE_CARDINALITY:
        steps = num_train = None  # a repeated dataset: the caller gives steps_per_epoch
    else:
        steps, num_train = _count(train)
    return Splits(train=train, validation=validation, test=test,
                  name="arrays" if all(_is_pair(part) for part in parts) else "tf.data", num_classes=None,
                  input_shape=tuple(train.element_spec[0].shape[1:]), num_train=num_train, steps_per_epoch=steps,
                  validation_split="given" if len(parts) == 3 else "test", epochs=epochs)

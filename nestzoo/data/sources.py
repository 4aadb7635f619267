"""Where the examples come from: tensorflow-datasets, local CIFAR files, scikit-learn, arrays.

Every loader returns `Examples`: (train, test) `tf.data.Dataset`s of single
(uint8 image, label) examples in a fixed stored order, with known cardinality.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from nestzoo.data.cifar_files import DatasetNotFoundError, accepted_layouts, check_labels, read_cifar

#: The digits split: the first 1,437 of scikit-learn's 1,797 images train (80%),
#: the last 360 test; both are class-balanced to within 4 images per class.
DIGITS_NUM_TRAIN = 1437


class Examples(NamedTuple):
    """The splits of a source; `in_memory` is False where caching saves decoding."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    in_memory: bool


def _tensor_slices(images, labels, spec, where: str) -> tf.data.Dataset:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != spec.input_shape:
        raise ValueError(f"{where}: images are {images.dtype} {images.shape}, "
                         f"expected uint8 (N, {', '.join(map(str, spec.input_shape))})")
    if not np.issubdtype(labels.dtype, np.integer) or labels.size != len(images):
        raise ValueError(f"{where}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    labels = labels.reshape(-1)
    check_labels(labels, spec.num_classes, where)
    return tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))


def _from_arrays(splits, spec, where: str):
    try:
        (train_images, train_labels), (test_images, test_labels) = splits
    except (TypeError, ValueError) as error:
        raise ValueError("source must be None, a path, or arrays "
                         "((x_train, y_train), (x_test, y_test))") from error
    return Examples(_tensor_slices(train_images, train_labels, spec, f"{where} (train)"),
                    _tensor_slices(test_images, test_labels, spec, f"{where} (test)"), in_memory=True)


def _unreachable(url, timeout=5.0):
    """Why `url`'s host (or the proxy that reaches it) takes no connection within `timeout` s; None if it does."""
    parts = urllib.parse.urlsplit(url)
    proxy = None if urllib.request.proxy_bypass(parts.hostname) else urllib.request.getproxies().get(parts.scheme)
    target = urllib.parse.urlsplit(proxy) if proxy else parts
    address = (target.hostname, target.port or (443 if target.scheme == "https" else 80))
    outcome = []

    def connect():  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"cannot reach {address[0]}:{address[1]} ({type(error).__name__}: {error})")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {address[0]}:{address[1]} within {timeout:g} s"


def _tfds(spec, data_dir, download):
    """tfds's prepared copy; else a download, tried only when its host answers.

    A failed download removes the folders it created (the data folder, the data
    set's folder, ``downloads/``), so a machine without network is told at once
    and left as it was.
    """
    import tensorflow_datasets as tfds

    root = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
    where = os.path.join(root, spec.name)

    def load(download):
        return tfds.load(spec.name, split=["train", "test"], as_supervised=True,
                         shuffle_files=False, data_dir=data_dir, download=download)

    try:
        return Examples(*load(download=False), in_memory=False)
    except Exception as error:  # tfds fails in many ways (no files, bad files, ...)
        reason = f"tfds said {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        if not download:
            raise _not_prepared(spec, where, download, reason) from error
    reason = _unreachable(spec.url)
    if reason:
        raise _not_prepared(spec, where, download, reason)
    new = [path for path in (root, where, os.path.join(root, "downloads")) if not os.path.exists(path)]
    try:
        return Examples(*load(download=True), in_memory=False)
    except Exception as error:
        for path in new:
            shutil.rmtree(path, ignore_errors=True)
        cause = (str(error).splitlines() or [""])[0]
        raise _not_prepared(spec, where, download, f"tfds said {type(error).__name__}: {cause}") from error


def _not_prepared(spec, where, download, reason):
    return DatasetNotFoundError(
        f"{spec.title} is not prepared in {where} and could not be downloaded "
        f"(download={download}; {reason}). "
        f"With network access, nestzoo.data.load({spec.name!r}) downloads it there once "
        "(data_dir= or $TFDS_DATA_DIR change the folder). Without network, copy it from "
        f"another machine and pass source=<path>. {accepted_layouts(spec)}."
    )


def _digits(spec, data_dir, download):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target
    return _from_arrays(((images[:DIGITS_NUM_TRAIN], labels[:DIGITS_NUM_TRAIN]),
                         (images[DIGITS_NUM_TRAIN:], labels[DIGITS_NUM_TRAIN:])), spec, "scikit-learn digits")


_DEFAULT_LOADERS = {"tfds": _tfds, "sklearn": _digits}


def load_examples(spec, source=None, *, data_dir=None, download=True) -> Examples:
    """The train and test examples of `spec` from `source`.

    `source` is None (the spec's default loader), a path to local CIFAR files, or
    arrays `((x_train, y_train), (x_test, y_test))` as `keras.datasets` returns them.
    """
    if source is None:
        return _DEFAULT_LOADERS[spec.source](spec, data_dir, download)
    if isinstance(source, (str, os.PathLike)):
        if not spec.layouts:
            raise ValueError(f"{spec.name} has no on-disk layout: pass source=None or arrays "
                             "((x_train, y_train), (x_test, y_test))")
        return _from_arrays(read_cifar(source, spec), spec, os.fspath(source))
    return _from_arrays(source, spec, "source arrays")

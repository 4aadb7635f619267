"""tf.data input pipelines for CIFAR-10, CIFAR-100 and scikit-learn's digits (TensorFlow only).

    from nestzoo import data
    train, test = data.load("cifar10")                  # tfds; the paper's preprocessing
    d = data.load("digits", 32, validation=0.1)         # offline; d.train, d.validation, d.test
    d = data.load("cifar10", source="~/.keras/datasets/cifar-10-batches-py")  # local files
"""
from nestzoo.data.catalog import DATASETS, DatasetSpec, get_spec
from nestzoo.data.cifar_files import DatasetNotFoundError, read_cifar
from nestzoo.data.pipeline import Datasets, augment_batch, channel_stats, load
from nestzoo.data.sources import DIGITS_NUM_TRAIN

__all__ = [
    "DATASETS",
    "DIGITS_NUM_TRAIN",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Datasets",
    "augment_batch",
    "channel_stats",
    "get_spec",
    "load",
    "read_cifar",
]

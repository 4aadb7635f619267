"""tf.data input pipelines for CIFAR-10, CIFAR-100 and scikit-learn's digits (TensorFlow only).

    from nestzoo import data
    train, test = data.load("cifar10")                  # tfds; the paper's preprocessing
    d = data.load("digits", 32, validation=0.1)         # offline; d.train, d.validation, d.test
    d = data.load("cifar10", source="~/.keras/datasets/cifar-10-batches-py")  # local files
    s = data.splits((x, y), 32, validation=0.1)         # any data nestzoo takes -> train/validation/test

The attributes are imported on first use (PEP 562): the catalog (`DATASETS`,
`get_spec`) and `DatasetNotFoundError` without TensorFlow, so the ``nestzoo`` command
reads them instantly; `load`, `splits` and the pipelines import TensorFlow.
"""
from nestzoo._lazy import attach

_ATTRIBUTES = {
    "nestzoo.data.adapter": ("Splits", "splits"),
    "nestzoo.data.catalog": ("DATASETS", "DatasetSpec", "get_spec"),
    "nestzoo.data.cifar_files": ("DatasetNotFoundError", "read_cifar"),
    "nestzoo.data.pipeline": ("Datasets", "augment_batch", "channel_stats", "load"),
    "nestzoo.data.sources": ("DIGITS_NUM_TRAIN",),
}
__getattr__, __dir__, __all__ = attach(globals(), _ATTRIBUTES)

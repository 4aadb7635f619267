"""The data sets nestzoo serves, one row of constants each."""
from __future__ import annotations

from dataclasses import dataclass

from nestzoo.data.cifar_files import CIFAR10_LAYOUTS, CIFAR100_LAYOUTS, Layout


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about one data set.

    `mean`/`std` are the training set's per-channel statistics on the [0, 1] scale
    (the published constants for CIFAR: docs/reference.md, "Normalization constants"). Training augmentation pads `pad`
    pixels per side by reflection, takes a random crop of the original size and
    mirrors it left-right with probability `flip_probability`. `source` names the
    default loader: "tfds" (tensorflow-datasets) or "sklearn"; `url` is where tfds
    downloads it from (its host is checked before a download is tried).
    """

    name: str
    title: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip_probability: float
    source: str
    layouts: tuple[Layout, ...] = ()
    url: str = ""


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar10", "CIFAR-10", 10, (32, 32, 3),
                    (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255),
                    pad=4, flip_probability=0.5, source="tfds", layouts=CIFAR10_LAYOUTS,
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        DatasetSpec("cifar100", "CIFAR-100", 100, (32, 32, 3),
                    (129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255),
                    pad=4, flip_probability=0.5, source="tfds", layouts=CIFAR100_LAYOUTS,
                    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
        # 8x8 grayscale digits, 0..16 rescaled to 0..255; statistics of nestzoo's
        # training split (the first 1,437 images). Digits are not mirror-symmetric.
        DatasetSpec("digits", "scikit-learn digits", 10, (8, 8, 1), (0.3054,), (0.3753,),
                    pad=1, flip_probability=0.0, source="sklearn"),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of data set `name`; a ValueError lists the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]

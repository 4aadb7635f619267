"""CIFAR files on disk: the python-pickle and binary layouts, as folders or .tar.gz.

The layouts are those of https://www.cs.toronto.edu/~kriz/cifar.html, as left on
disk by `keras.datasets.cifar10` (`~/.keras/datasets/cifar-10-batches-py`),
torchvision (`root/cifar-10-batches-py` next to `cifar-10-python.tar.gz`) or a
manual download:

- pickle: `data_batch_1`..`data_batch_5`, `test_batch` (CIFAR-10) or `train`,
  `test` (CIFAR-100), each a pickled dict with `b"data"`, uint8 (N, 3072) in
  channel-major order, and `b"labels"` (CIFAR-10) or `b"fine_labels"` (CIFAR-100);
- binary: `data_batch_1.bin`..`data_batch_5.bin`, `test_batch.bin` (CIFAR-10) or
  `train.bin`, `test.bin` (CIFAR-100), records of the label byte(s) then 3072 image
  bytes; CIFAR-100 records hold two label bytes, coarse then fine.
"""
from __future__ import annotations

import functools
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_BYTES = 32 * 32 * 3


class DatasetNotFoundError(FileNotFoundError):
    """The data set is neither prepared by tensorflow-datasets nor found on disk."""


@dataclass(frozen=True)
class Layout:
    """One on-disk layout of a CIFAR data set.

    `directory` is the folder the files live in (also inside `archive`);
    `parse(content, where)` turns one file's bytes into (images NHWC, labels).
    """

    directory: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    parse: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]

    def describe(self) -> str:
        files = ", ".join(self.train_files + self.test_files)
        return f"{self.directory}/ ({files}) or {self.archive}"


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: builtins and numpy arrays only, never arbitrary code."""

    ALLOWED = {
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _channels_last(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def parse_pickle(content: bytes, where: str, *, label_key: bytes):
    """Reads one python-pickle batch file."""
    try:
        batch = _SafeUnpickler(io.BytesIO(content), encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    except Exception as error:  # any unpickling failure means a damaged file
        raise ValueError(
            f"{where}: not a CIFAR python-pickle batch with keys b'data' and "
            f"{label_key!r} (truncated or corrupted file?): {error!r}"
        ) from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise ValueError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, {IMAGE_BYTES})")
    return _channels_last(data), integer_labels(labels, len(data), where)


def parse_binary(content: bytes, where: str, *, label_bytes: int):
    """Reads one binary batch file; the last label byte is the class (fine for CIFAR-100)."""
    record = label_bytes + IMAGE_BYTES
    if not content or len(content) % record:
        raise ValueError(
            f"{where}: {len(content)} bytes is not a whole number of {record}-byte "
            "CIFAR binary records (truncated file, or not the binary layout?)"
        )
    records = np.frombuffer(content, np.uint8).reshape(-1, record)
    return _channels_last(records[:, label_bytes:]), records[:, label_bytes - 1]


def integer_labels(labels: np.ndarray, count: int, where: str) -> np.ndarray:
    """`labels` as a 1-D integer array of `count` class indices; (N, 1) columns are accepted.

    Refuses, naming `where`, labels that are not integers (floats such as 3.7 or even
    3.0, booleans, strings) and a count or shape that does not match the images.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integer class indices, got {labels.dtype} labels "
                         f"(e.g. {labels.reshape(-1)[:1].tolist()}); store them as integers 0..classes-1")
    if labels.shape != (count,):
        raise ValueError(f"{where}: labels of shape {labels.shape} for {count} images; expected shape ({count},) "
                         f"or ({count}, 1)")
    return labels


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raises a ValueError naming `where` if a label is outside 0..num_classes-1."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"{where}: label {bad[0]} is outside the classes 0..{num_classes - 1}")


def _numbered(stem: str, suffix: str = "") -> tuple[str, ...]:
    return tuple(f"{stem}_{i}{suffix}" for i in range(1, 6))


CIFAR10_LAYOUTS = (
    Layout("cifar-10-batches-py", "cifar-10-python.tar.gz", _numbered("data_batch"), ("test_batch",),
           functools.partial(parse_pickle, label_key=b"labels")),
    Layout("cifar-10-batches-bin", "cifar-10-binary.tar.gz", _numbered("data_batch", ".bin"),
           ("test_batch.bin",), functools.partial(parse_binary, label_bytes=1)),
)
CIFAR100_LAYOUTS = (
    Layout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
           functools.partial(parse_pickle, label_key=b"fine_labels")),
    Layout("cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),
           functools.partial(parse_binary, label_bytes=2)),
)


def accepted_layouts(spec) -> str:
    """A sentence listing the local layouts `source=path` accepts for `spec`."""
    return f"A local {spec.title} copy is accepted as " + "; or ".join(
        layout.describe() for layout in spec.layouts)


def _archive_members(archive: Path, layouts) -> dict[str, bytes]:
    """Reads, in one pass, every member of `archive` that some layout names."""
    wanted = {f"{layout.directory}/{name}" for layout in layouts
              for name in layout.train_files + layout.test_files}
    try:
        with tarfile.open(archive, "r:*") as tar:
            return {member.name: tar.extractfile(member).read()
                    for member in tar if member.name in wanted}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{archive}: unreadable .tar.gz archive (truncated or corrupted?): {error!r}") from error


def _archive_reader(archive: Path, layouts):
    """(layout, read) for the first layout stored in `archive`, else None."""
    members = _archive_members(archive, layouts)
    for layout in layouts:
        if f"{layout.directory}/{layout.train_files[0]}" in members:
            def read(name, layout=layout):
                key = f"{layout.directory}/{name}"
                if key not in members:
                    raise DatasetNotFoundError(f"{archive}: member {key} is missing")
                return members[key], f"{archive}:{key}"
            return layout, read
    return None


def _folder_reader(folder: Path):
    def read(name):
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is missing")
        return path.read_bytes(), str(path)
    return read


def _locate(path: Path, spec):
    """(layout, read) for the first of `spec.layouts` found at `path`."""
    if path.is_file():
        return _archive_reader(path, spec.layouts)
    for layout in spec.layouts:
        for folder in (path, path / layout.directory):
            if (folder / layout.train_files[0]).is_file():
                return layout, _folder_reader(folder)
        found = (path / layout.archive).is_file() and _archive_reader(path / layout.archive, (layout,))
        if found:
            return found
    return None


def _read_split(layout, read, names, num_classes):
    images, labels = [], []
    for name in names:
        content, where = read(name)
        file_images, file_labels = layout.parse(content, where)
        check_labels(file_labels, num_classes, where)
        images.append(file_images)
        labels.append(file_labels)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def read_cifar(path, spec):
    """((train_images, train_labels), (test_images, test_labels)) from a local copy.

    `path` is a layout folder, a folder holding one (or its archive), or an archive.
    Images are uint8 NHWC, labels int32.
    """
    path = Path(path).expanduser()
    found = _locate(path, spec) if path.exists() else None
    if found is None:
        reason = "does not exist" if not path.exists() else f"holds no {spec.title} files"
        raise DatasetNotFoundError(f"{path} {reason}. {accepted_layouts(spec)}.")
    layout, read = found
    return tuple(_read_split(layout, read, names, spec.num_classes)
                 for names in (layout.train_files, layout.test_files))

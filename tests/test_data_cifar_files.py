"""Local CIFAR copies: tiny files written in CIFAR's own pickle and binary layouts."""
import os
import pickle
import re
import tarfile

import numpy as np
import pytest

from nestzoo import data

# name -> (layout folder, archive, train files, test files, format, label bytes or pickle key)
LAYOUTS = {
    "cifar10-py": ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                   [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "pickle", b"labels"),
    "cifar10-bin": ("cifar10", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                    [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "binary", 1),
    "cifar100-py": ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
                    ["train"], ["test"], "pickle", b"fine_labels"),
    "cifar100-bin": ("cifar100", "cifar-100-binary", "cifar-100-binary.tar.gz",
                     ["train.bin"], ["test.bin"], "binary", 2),
}
NUM_IMAGES = {"train": 10, "test": 4}  # spread over the split's files


def cifar_file(images, labels, fmt, label):
    """The bytes of one CIFAR batch file holding `images` (NHWC uint8) and `labels`."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # channel-major, as CIFAR stores
    if fmt == "pickle":
        batch = {b"batch_label": b"nestzoo test", label: [int(y) for y in labels], b"data": rows,
                 b"filenames": [b"image_%d.png" % i for i in range(len(images))]}
        if label == b"fine_labels":
            batch[b"coarse_labels"] = [int(y) // 5 for y in labels]
        return pickle.dumps(batch, protocol=2)
    label_bytes = np.stack([labels // 5, labels], 1)[:, 2 - label:]  # (coarse,) fine
    return np.concatenate([label_bytes, rows], 1).astype(np.uint8).tobytes()


def write_layout(root, key, seed=0):
    """Writes layout `key` under root/<layout folder>; returns (folder, train, test arrays)."""
    name, folder, _, train_files, test_files, fmt, label = LAYOUTS[key]
    classes = data.get_spec(name).num_classes
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    splits = []
    for split, files in (("train", train_files), ("test", test_files)):
        images = rng.integers(0, 256, (NUM_IMAGES[split], 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, len(images))
        for file, part in zip(files, np.array_split(np.arange(len(images)), len(files))):
            (root / folder / file).write_bytes(cifar_file(images[part], labels[part], fmt, label))
        splits.append((images, labels))
    return root / folder, splits


def archive(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


def assert_read_back(source, name, splits):
    for (images, labels), (read_images, read_labels) in zip(splits, data.read_cifar(source, data.get_spec(name))):
        np.testing.assert_array_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)
        assert read_images.dtype == np.uint8 and read_labels.dtype == np.int32


@pytest.mark.parametrize("key", LAYOUTS)
def test_folder_parent_and_archive_read_back(tmp_path, key):
    name, _, archive_name = LAYOUTS[key][:3]
    folder, splits = write_layout(tmp_path / "disk", key)
    assert_read_back(folder, name, splits)  # the layout folder itself
    assert_read_back(tmp_path / "disk", name, splits)  # the folder holding it (~/.keras/datasets)
    archive(folder, tmp_path / archive_name)
    assert_read_back(tmp_path / archive_name, name, splits)
    only_archive = tmp_path / "archive_only"
    only_archive.mkdir()
    (tmp_path / archive_name).rename(only_archive / archive_name)
    assert_read_back(only_archive, name, splits)  # a folder holding just the archive


def test_an_archive_of_another_layout_does_not_end_the_search(tmp_path):
    """A pickle-layout archive holding something else is passed over for the binary folder."""
    folder, splits = write_layout(tmp_path, "cifar10-bin")
    stray = tmp_path / "stray" / "notes"
    stray.mkdir(parents=True)
    archive(stray, tmp_path / LAYOUTS["cifar10-py"][2])
    assert_read_back(tmp_path, "cifar10", splits)


@pytest.mark.parametrize("key", ["cifar10-py", "cifar100-bin"])
def test_load_from_a_local_path(tmp_path, key):
    name = LAYOUTS[key][0]
    folder, ((train_images, _), (test_images, test_labels)) = write_layout(tmp_path, key)
    d = data.load(name, 4, source=folder, validation=3)
    assert (d.num_train, d.num_validation, d.num_test) == (len(train_images) - 3, 3, len(test_images))
    x, y = next(iter(d.test))
    expected = (test_images[:4] / 255 - np.asarray(d.mean)) / np.asarray(d.std)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    np.testing.assert_array_equal(y, test_labels[:4])
    assert next(iter(d.train))[0].shape == (4, 32, 32, 3)


def test_missing_path_and_wrong_layout_list_the_accepted_layouts(tmp_path):
    spec = data.get_spec("cifar10")
    with pytest.raises(data.DatasetNotFoundError, match="does not exist.*cifar-10-batches-py/"):
        data.read_cifar(tmp_path / "nowhere", spec)
    folder, _ = write_layout(tmp_path, "cifar100-py")  # CIFAR-100 files given for CIFAR-10
    with pytest.raises(data.DatasetNotFoundError, match=r"holds no CIFAR-10 files.*cifar-10-batches-bin/.*"
                                                        r"cifar-10-binary\.tar\.gz"):
        data.load("cifar10", source=folder)


def test_incomplete_folder_names_the_missing_file(tmp_path):
    folder, _ = write_layout(tmp_path, "cifar10-py")
    (folder / "test_batch").unlink()
    with pytest.raises(data.DatasetNotFoundError, match=re.escape(f"{folder / 'test_batch'} is missing")):
        data.read_cifar(folder, data.get_spec("cifar10"))


def test_truncated_binary_file(tmp_path):
    folder, _ = write_layout(tmp_path, "cifar10-bin")
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(f"{path}: 6046 bytes is not a whole number of 3073-byte")):
        data.read_cifar(folder, data.get_spec("cifar10"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "code", "no_labels"])
def test_corrupted_pickle(tmp_path, damage):
    folder, _ = write_layout(tmp_path, "cifar10-py")
    path = folder / "data_batch_2"
    content = {
        "truncated": path.read_bytes()[:500],
        "garbage": os.urandom(1000),
        "code": pickle.dumps(os.system, protocol=2),  # never executed: only numpy and builtins load
        "no_labels": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}, protocol=2),
    }[damage]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a CIFAR python-pickle batch")):
        data.read_cifar(folder, data.get_spec("cifar10"))


def test_pickle_with_wrong_image_shape(tmp_path):
    folder, _ = write_layout(tmp_path, "cifar10-py")
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: b'data' is uint8 (2, 1024), expected uint8 (N, 3072)")):
        data.read_cifar(folder, data.get_spec("cifar10"))


@pytest.mark.parametrize("key, file, label", [("cifar10-py", "data_batch_4", 10),
                                              ("cifar10-bin", "test_batch.bin", 12),
                                              ("cifar100-bin", "train.bin", 100)])
def test_label_out_of_range_names_the_file(tmp_path, key, file, label):
    name, _, _, _, _, fmt, label_format = LAYOUTS[key]
    folder, _ = write_layout(tmp_path, key)
    labels = np.array([1, label, 2])
    images = np.zeros((3, 32, 32, 3), np.uint8)
    (folder / file).write_bytes(cifar_file(images, labels, fmt, label_format))
    classes = data.get_spec(name).num_classes
    with pytest.raises(ValueError, match=re.escape(f"{folder / file}: label {label} is outside the classes 0..{classes - 1}")):
        data.load(name, source=folder)


def test_truncated_archive(tmp_path):
    folder, _ = write_layout(tmp_path / "disk", "cifar10-bin")
    path = archive(folder, tmp_path / "cifar-10-binary.tar.gz")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=re.escape(f"{path}: unreadable .tar.gz archive")):
        data.read_cifar(path, data.get_spec("cifar10"))


# ---- parsing CIFAR's pickles: labels (moved from test_training_faults.py) ----

from nestzoo.data import cifar_files  # noqa: E402


def pickled(labels, n=3):
    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": labels}, protocol=2)


@pytest.mark.parametrize("labels, message", [
    ([3.7, 1.0, 2.0], r"labels must be integer class indices, got float64 labels \(e.g. \[3.7\]\)"),
    ([True, False, True], "labels must be integer class indices, got bool labels"),
    (["cat", "dog", "cat"], "labels must be integer class indices, got <U3 labels"),
    (np.zeros((3, 2), int), r"labels of shape \(3, 2\) for 3 images; expected shape \(3,\) or \(3, 1\)"),
])
def test_non_integer_labels_are_refused_naming_the_file(labels, message):
    with pytest.raises(ValueError, match=f"^batches/data_batch_1: {message}"):
        cifar_files.parse_pickle(pickled(labels), "batches/data_batch_1", label_key=b"labels")


def test_column_labels_are_accepted_and_an_empty_data_set_is_refused():
    images, labels = cifar_files.parse_pickle(pickled(np.array([[1], [2], [3]])), "f", label_key=b"labels")
    assert images.shape == (3, 32, 32, 3) and labels.tolist() == [1, 2, 3]
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    test = (np.zeros((4, 32, 32, 3), np.uint8), np.arange(4))
    with pytest.raises(ValueError, match=r"cifar10: the training split of the source holds no examples "
                                         r"\(source=arrays\); give a non-empty data set"):
        data.load("cifar10", source=(empty, test))

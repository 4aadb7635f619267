"""nestzoo.data pipelines: digits (offline), in-memory arrays, and CIFAR through tfds.testing.mock_data."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import nestzoo
from nestzoo import data


def crop_candidates(image, pad):
    """Every reflect-pad/crop of `image`: unflipped first, then flipped."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    crops = [padded[top:top + height, left:left + width]
             for top in range(2 * pad + 1) for left in range(2 * pad + 1)]
    return np.stack(crops + [crop[:, ::-1] for crop in crops])


def matches(image, candidates):
    """Indices of the candidates equal to `image`."""
    return np.flatnonzero((candidates == image).all(axis=(1, 2, 3)))


def destandardize(images, d):
    """float32 standardized batch -> the uint8 images it came from."""
    pixels = images * (255 * np.asarray(d.std)) + 255 * np.asarray(d.mean)
    assert np.abs(pixels - np.round(pixels)).max() < 1e-2
    return np.round(pixels).astype(np.uint8)


def batches(dataset, epochs=1):
    """The (images, labels) batches of `epochs` passes, as numpy, one list."""
    return [(x.numpy(), y.numpy()) for _ in range(epochs) for x, y in dataset]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"'imagenet'.*\['cifar10', 'cifar100', 'digits'\]"):
        data.load("imagenet")


@pytest.mark.parametrize("kwargs, message", [
    ({"standardize": "zscore"}, r"standardize must be one of \('published', 'computed'\)"),
    ({"validation": 1.5}, "validation must be None"),
    ({"validation": True}, "validation must be None"),
    ({"validation": 1437}, "must leave both parts non-empty"),
    ({"source": "/tmp"}, "digits has no on-disk layout"),
    ({"source": [1, 2, 3]}, r"source must be None, a path, or arrays"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **kwargs)


def test_digits_split_shapes_and_published_statistics_agree_with_computed():
    d = data.load("digits", 64)
    assert (d.num_train, d.num_validation, d.num_test) == (data.DIGITS_NUM_TRAIN, 360, 360)
    assert d.validation_split == "test" and d.input_shape == (8, 8, 1) and d.num_classes == 10
    train, test = d  # unpacks as (train, test)
    images, labels = next(iter(train))
    assert images.shape == (64, 8, 8, 1) and images.dtype == tf.float32 and labels.dtype == tf.int32
    assert sum(int(x.shape[0]) for x, _ in test) == 360

    computed = data.load("digits", standardize="computed")
    np.testing.assert_allclose(computed.mean, d.mean, atol=1e-4)
    np.testing.assert_allclose(computed.std, d.std, atol=1e-4)
    plain = data.load("digits", 2000, standardize="computed", augment=False)
    images = next(iter(plain.train))[0].numpy()
    np.testing.assert_allclose([images.mean(), images.std()], [0, 1], atol=1e-5)


def test_held_out_validation_comes_from_the_end_of_the_training_set():
    d = data.load("digits", 1000, validation=0.1, augment=False)
    assert (d.num_train, d.num_validation) == (1293, 144)
    assert d.validation_split == "held out: last 144 training examples"
    (held_out, labels), = list(d.validation)
    digits = load_digits()
    expected = np.round(digits.images[1293:1437] * 255 / 16).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(destandardize(held_out.numpy(), d), expected)
    np.testing.assert_array_equal(labels, digits.target[1293:1437])
    assert sum(int(y.shape[0]) for _, y in d.train) == 1293
    assert data.load("digits", validation=100).num_validation == 100


def test_augment_batch_is_a_reflect_padded_crop_and_flip():
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = data.augment_batch(tf.constant(images), tf.constant([1, 2], tf.int64),
                             pad=4, flip_probability=0.5).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    found = [matches(augmented, crop_candidates(image, 4)) for image, augmented in zip(images, out)]
    assert all(len(index) == 1 for index in found)
    chosen = np.concatenate(found)
    assert 10 < np.sum(chosen >= 81) < 54  # flips happen about half the time
    assert len(np.unique(chosen % 81)) > 20  # many different crops


def test_augment_batch_without_flips():
    images = np.random.default_rng(1).integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    out = data.augment_batch(tf.constant(images), tf.constant([3, 4], tf.int64),
                             pad=1, flip_probability=0.0).numpy()
    for image, augmented in zip(images, out):
        index = matches(augmented, crop_candidates(image, 1))
        assert len(index) == 1 and index[0] < 9


def test_digits_training_batches_are_augmented_crops_and_evaluation_is_not():
    augmented = data.load("digits", 2000, seed=5)
    plain = data.load("digits", 2000, seed=5, augment=False)
    (x_aug, y_aug), = list(augmented.train)
    (x_plain, y_plain), = list(plain.train)
    np.testing.assert_array_equal(y_aug, y_plain)  # augmentation keeps the shuffled order
    x_aug, x_plain = destandardize(x_aug.numpy(), augmented), destandardize(x_plain.numpy(), plain)
    assert not np.array_equal(x_aug, x_plain)
    for image, result in zip(x_plain, x_aug):
        assert matches(result, crop_candidates(image, 1)).min() < 9  # an unflipped crop
    assert_same_batches(batches(augmented.test), batches(plain.test))


def test_same_seed_same_order_and_augmentation():
    first = batches(data.load("digits", 1437, seed=7).train, epochs=2)
    assert_same_batches(first, batches(data.load("digits", 1437, seed=7).train, epochs=2))
    other = batches(data.load("digits", 1437, seed=8).train)
    assert not np.array_equal(first[0][1], other[0][1])
    assert not np.array_equal(first[0][1], first[1][1])  # reshuffled every epoch


def test_in_memory_arrays_in_keras_layout():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (20, 1))  # keras.datasets gives (N, 1) labels
    d = data.load("cifar10", 8, source=((images, labels), (images[:4], labels[:4])), drop_remainder=True)
    assert [int(y.shape[0]) for _, y in d.train] == [8, 8]
    (test_images, test_labels), = list(d.test)
    np.testing.assert_array_equal(destandardize(test_images.numpy(), d), images[:4])
    np.testing.assert_array_equal(test_labels, labels[:4, 0])


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, int), r"float32 \(4, 32, 32, 3\), expected uint8"),
    (np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4, int), r"expected uint8 \(N, 32, 32, 3\)"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, int), "expected 4 integer labels"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 10, 2]), r"label 10 is outside the classes 0..9"),
])
def test_bad_arrays(images, labels, message):
    with pytest.raises(ValueError, match=r"source arrays \(train\): .*" + message):
        data.load("cifar10", source=((images, labels), (images, labels)))


def tiny_resnet():
    return nestzoo.ResNet(blocks=1, width=(8, 16, 32), input_shape=(8, 8, 1), classes=10)


def test_digits_trains_a_small_model():
    keras.utils.set_random_seed(0)
    d = data.load("digits", 64, seed=0)
    model = tiny_resnet()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    before = model.evaluate(d.validation, verbose=0)[0]
    history = model.fit(d.train, validation_data=d.validation, epochs=2, shuffle=False, verbose=0)
    assert history.history["val_loss"][-1] < before
    assert history.history["val_accuracy"][-1] > 0.3


# CIFAR-10/100 through the real tensorflow-datasets code path, with tfds mocked.

NUM_EXAMPLES = 24  # mock_data serves the same examples as train and test


@pytest.fixture(params=["cifar10", "cifar100"])
def mocked(request, tmp_path):
    """(name, raw uint8 images, labels, load) with tfds mocked."""
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        raw = tfds.load(request.param, split="test", as_supervised=True, data_dir=str(tmp_path))
        images, labels = (np.stack(part) for part in zip(*tfds.as_numpy(raw)))
        yield request.param, images, labels, lambda **kw: data.load(request.param, data_dir=str(tmp_path), **kw)


def test_shapes_dtypes_and_published_standardization(mocked):
    name, images, labels, load = mocked
    d = load(batch_size=8)
    assert d.spec.name == name and d.num_train == d.num_test == NUM_EXAMPLES
    assert d.mean == data.get_spec(name).mean and d.validation_split == "test"
    for split in (d.train, d.test):
        x, y = next(iter(split))
        assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
        assert int(tf.reduce_max(y)) < d.num_classes
    (test_images, test_labels), = batches(load(batch_size=100).test)
    expected = (images / 255 - np.asarray(d.mean)) / np.asarray(d.std)
    np.testing.assert_allclose(test_images, expected, atol=1e-5)
    np.testing.assert_array_equal(test_labels, labels)


def test_computed_standardization(mocked):
    _, images, _, load = mocked
    d = load(batch_size=100, standardize="computed", augment=False)
    np.testing.assert_allclose(d.mean, (images / 255).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(d.std, (images / 255).std(axis=(0, 1, 2)), rtol=1e-6)
    (train_images, _), = batches(d.train)
    np.testing.assert_allclose(train_images.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train_images.std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_augmentation_on_train_only(mocked):
    _, images, _, load = mocked
    augmented, plain = load(batch_size=100, seed=1), load(batch_size=100, seed=1, augment=False)
    (x_aug, y_aug), = batches(augmented.train)
    (x_plain, y_plain), = batches(plain.train)
    np.testing.assert_array_equal(y_aug, y_plain)
    x_aug, x_plain = destandardize(x_aug, augmented), destandardize(x_plain, plain)
    assert sorted(map(bytes, x_plain)) == sorted(map(bytes, images))  # a shuffle of the split
    found = [matches(result, crop_candidates(image, 4)) for image, result in zip(x_plain, x_aug)]
    assert all(len(index) for index in found) and not np.array_equal(x_aug, x_plain)
    np.testing.assert_array_equal(destandardize(batches(augmented.test)[0][0], augmented), images)


def test_determinism_by_seed_and_held_out_validation(mocked):
    _, images, _, load = mocked
    first = batches(load(batch_size=8, seed=3).train, epochs=2)
    assert_same_batches(first, batches(load(batch_size=8, seed=3, cache=False).train, epochs=2))
    other = batches(load(batch_size=8, seed=4).train)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    d = load(batch_size=100, validation=4, augment=False)
    assert (d.num_train, d.num_validation) == (NUM_EXAMPLES - 4, 4)
    np.testing.assert_array_equal(destandardize(batches(d.validation)[0][0], d), images[-4:])


@pytest.mark.parametrize("name, layout", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_no_network_and_no_local_copy_is_one_clear_error(tmp_path, name, layout):
    with pytest.raises(data.DatasetNotFoundError) as raised:
        data.load(name, data_dir=str(tmp_path), download=False)
    message = str(raised.value)
    assert str(tmp_path / name) in message and "could not be downloaded" in message
    assert layout in message and "source=" in message


OFFLINE = textwrap.dedent("""
    import sys, time
    import tensorflow, tensorflow_datasets  # imported first: the time measured is load's
    from nestzoo import data
    data.load  # imports the pipeline
    start = time.perf_counter()
    for data_dir in (None, sys.argv[1]):  # tfds's default folder (under $HOME), then a given one
        try:
            data.load("cifar10", data_dir=data_dir)
        except data.DatasetNotFoundError as error:
            print("error:", error)
    print("seconds:", time.perf_counter() - start)
""")


def test_offline_first_contact_fails_fast_and_leaves_nothing_behind(tmp_path):
    """No network (simulated by a proxy on a closed port): the helpful error at once, no folder created."""
    with socket.socket() as probe:  # a local port that takes no connections
        probe.bind(("127.0.0.1", 0))
        proxy = "http://127.0.0.1:%d" % probe.getsockname()[1]
    home, data_dir = tmp_path / "home", tmp_path / "data" / "tfds"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "tfds_data_dir")}
    env.update(HOME=str(home), https_proxy=proxy, HTTPS_PROXY=proxy, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", OFFLINE, str(data_dir)], capture_output=True, text=True,
                            env=env, timeout=600)
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.stdout + result.stderr[-3000:]
    for error, where in zip(errors, (home / "tensorflow_datasets" / "cifar10", data_dir / "cifar10")):
        assert f"CIFAR-10 is not prepared in {where} and could not be downloaded" in error
        assert "cannot reach 127.0.0.1" in error and "source=<path>" in error and "cifar-10-batches-py" in error
    assert float(result.stdout.split("seconds:")[1]) < 15
    assert not (home / "tensorflow_datasets").exists() and not (tmp_path / "data").exists()


# ---- nestzoo.data.splits: the one adapter from every form of data to a run's splits ----

def test_splits_of_a_name_carry_the_datasets_facts():
    s = data.splits("digits", 100, validation=0.1, augment=False)
    assert (s.name, s.num_classes, s.input_shape) == ("digits", 10, (8, 8, 1))
    assert s.num_train == data.DIGITS_NUM_TRAIN - 144 and s.steps_per_epoch == -(-s.num_train // 100)
    assert s.validation_split == "held out: last 144 training examples"
    assert sum(int(x.shape[0]) for x, _ in s.validation) == 144 and sum(int(x.shape[0]) for x, _ in s.test) == 360
    assert_same_batches(batches(s.epochs(2, 3)), batches(data.load("digits", 100, validation=0.1,
                                                                  augment=False).epochs(2, 3)))


def test_splits_of_arrays_hold_out_the_last_examples_and_order_epochs_by_seed():
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    y = np.arange(50) % 4
    s = data.splits((x, y), 8, seed=3, validation=0.2)
    assert (s.name, s.num_classes, s.input_shape, s.num_train, s.steps_per_epoch) == ("arrays", None, (3,), 40, 5)
    held = np.concatenate([b[0].numpy() for b in s.validation])
    np.testing.assert_array_equal(held, x[40:])
    first, second = batches(s.epochs(0, 1)), batches(s.epochs(1, 2))
    seen = np.concatenate([b[0] for b in first])
    assert sorted(seen[:, 0].tolist()) == sorted(x[:40, 0].tolist())  # every training example once
    assert not np.array_equal(seen, np.concatenate([b[0] for b in second]))  # reshuffled per epoch
    assert_same_batches(first, batches(data.splits((x, y), 8, seed=3, validation=0.2).epochs(0, 1)))
    assert sorted(np.concatenate([b[0] for b in batches(s.train)])[:, 0].tolist()) == sorted(x[:40, 0].tolist())
    bare = data.splits((x, y), 8)
    assert bare.validation is None and bare.test is None and bare.validation_split == "none"


def test_splits_of_datasets_and_array_parts():
    x = np.random.default_rng(0).random((20, 4, 4, 1), dtype=np.float32)
    y = np.arange(20) % 2
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    test = tf.data.Dataset.from_tensor_slices((x[:5], y[:5])).batch(6)
    two = data.splits((train, test))
    assert (two.name, two.input_shape, two.num_train, two.steps_per_epoch) == ("tf.data", (4, 4, 1), 20, 4)
    assert two.validation is test and two.test is test and two.validation_split == "test" and two.epochs is None
    three = data.splits(((x, y), (x[:5], y[:5]), test), 10)
    assert (three.name, three.steps_per_epoch, three.validation_split) == ("tf.data", 2, "given")
    assert three.epochs is not None and three.test is test
    pairs = data.splits(((x, y), (x[:5], y[:5])), 10)
    assert pairs.name == "arrays" and sum(int(b[0].shape[0]) for b in pairs.test) == 5
    repeated = data.splits((train.repeat(), test))
    assert repeated.steps_per_epoch is None and repeated.num_train is None
    assert data.splits(data.load("digits", 64)).steps_per_epoch == -(-data.DIGITS_NUM_TRAIN // 64)


@pytest.mark.parametrize("given, kwargs, message", [
    (42, {}, r"data must be a data set name.*got int"),
    ("imagenet", {}, r"unknown data set 'imagenet'"),
    ((np.zeros((3, 2)), np.zeros(4)), {}, "x and y have different numbers of examples: 3 and 4"),
    ((np.zeros((0, 2)), np.zeros(0)), {}, "hold no examples"),
    ((np.zeros((4, 2)), np.zeros(4)), {"validation": 4}, "must leave both parts non-empty"),
    ((np.zeros((4, 2)), np.zeros(4)), {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ((np.zeros((4, 2)), np.zeros(4)), {"source": "/tmp"}, "source apply to a data set name only"),
    ("tfdata", {"validation": 0.1}, r"with other data give \(train, validation, test\)"),
])
def test_splits_refuse_bad_data_by_name(given, kwargs, message):
    if given == "tfdata":
        given = (tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), np.zeros(4))).batch(2),) * 2
    with pytest.raises(ValueError, match=message):
        data.splits(given, **kwargs)

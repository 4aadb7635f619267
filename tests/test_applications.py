"""The one contract test over the registry: every name of ``nestzoo.list_models()`` keeps
Keras Applications' conventions, as Keras's applications_test.py checks its MODEL_LIST.

Every model is built at a variable input size, ``input_shape=(None, None, C)``, with
one of the five Keras Applications options (`OPTIONS`: the top with softmax or with
no activation; no top with pooling None, "avg" or "max"), and then checked: its
output shape, at two input sizes for the cheap archs; its classifier activation; its
identity, through the config that carries it; the too-small input refused at the
call; the basis taps. The cheapest arch of each family (resnet20, densenet40-12)
meets every option; every other name is built once, with the option its place in
the registry gives (so every variant meets several), which keeps this file fast. The
``.keras`` round trip and ``input_tensor`` are checked on one cheap name per family. The same
checks, and channels_first equal to channels_last on transposed inputs, run under
JAX (a backend that runs NCHW convolutions on a CPU): `under_jax`, called by
tests/test_backends.py in its JAX process (a second JAX process would compile its
eager initializers again).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import basis, registry
from nestzoo.model import NestInput

ROOT = Path(__file__).resolve().parents[1]
NAMES = nestzoo.list_models()
CHEAP_NAMES = [name for name in NAMES if registry.parse_name(name)[1] in ("resnet20", "densenet40-12")]
REPRESENTATIVES = ("resnet20.a-resnest", "densenet40-12.densenest")  # the cheapest of each family
OPTIONS = {
    "softmax": dict(include_top=True, classifier_activation="softmax"),
    "logits": dict(include_top=True, classifier_activation=None),
    "unpooled": dict(include_top=False, pooling=None),
    "avg": dict(include_top=False, pooling="avg"),
    "max": dict(include_top=False, pooling="max"),
}
CLASSES = 5
SIZES = ((9, 13), (4, 4))  # an odd size, and the smallest that a network downsampling by 4 takes


def option_of(name):
    """The option a name other than the cheap ones is built with: its index in the registry, cycled."""
    return list(OPTIONS)[NAMES.index(name) % len(OPTIONS)]


CASES = [(name, option) for name in NAMES for option in (OPTIONS if name in CHEAP_NAMES else [option_of(name)])]


def channels_of(name):
    return (3, 1)[NAMES.index(name) % 2]


def build(name, option):
    """`name` with `option` at a variable height and width, in Keras's current image data format."""
    return nestzoo.create_model(name, input_shape=image_shape(channels_of(name)), classes=CLASSES, **OPTIONS[option])


def images(size, channels, seed=0, channels_first=False):
    x = np.random.default_rng(seed).normal(size=(2, *size, channels)).astype("float32")
    return x.transpose(0, 3, 1, 2) if channels_first else x


def representation(spec, variant, channels):
    """Channels of what reaches the predictor: x_L's, or the A-ResNEst's v_0..v_L's (eq. 4)."""
    if variant == "a-resnest":
        return channels + sum(n * k for n, k in zip(spec.blocks, spec.features))
    if spec.family == "resnet":
        return spec.width[-1]
    return spec.transitions()[-1] + spec.blocks[-1] * spec.features


def final_size(family, size):
    """x_L's height or width: two stride-2 convolutions padded (k - 1) / 2 each side (ceil), or
    two DenseNet transitions' 2x2 average pools (floor)."""
    for _ in range(2):
        size = -(-size // 2) if family == "resnet" else size // 2
    return size


def expected_shape(name, option, size, channels_first=False):
    family, arch, variant = registry.parse_name(name)
    if OPTIONS[option]["include_top"]:
        return (2, CLASSES)
    width = representation(registry.ARCHS[arch], variant, channels_of(name))
    if option != "unpooled":
        return (2, width)
    h, w = (final_size(family, n) for n in size)
    return (2, width, h, w) if channels_first else (2, h, w, width)


def check(name, option, channels_first=False):
    """One model of the contract: shapes, activation, identity, sizes, taps (see the module docstring)."""
    family, arch, variant = registry.parse_name(name)
    if option == "unpooled" and variant == "a-resnest":  # v_0..v_L have different sizes (README, "Builders")
        with pytest.raises(ValueError, match="without the top give pooling='avg' or 'max'"):
            build(name, option)
        return
    model, channels = build(name, option), channels_of(name)
    assert model.identity == basis.Identity(registry.ARCHS[arch], variant, arch) and model.identity.name == name
    assert model.options["input_shape"] == ((channels, None, None) if channels_first else (None, None, channels))
    (carrier,) = [layer for layer in model.layers if isinstance(layer, NestInput)]
    copy = NestInput.from_config(json.loads(json.dumps(carrier.get_config())))  # what the .keras file holds
    assert copy.identity == model.identity and copy.options == model.options
    for size in SIZES[:2 if name in CHEAP_NAMES else 1]:
        y = np.asarray(model(images(size, channels, channels_first=channels_first)))
        assert y.shape == expected_shape(name, option, size, channels_first), (name, option, size)
        if OPTIONS[option]["include_top"]:
            assert np.allclose(y.sum(axis=1), 1, atol=1e-5) == (option == "softmax"), (name, option)
    with pytest.raises(ValueError, match="input 3x4 is too small: this network downsamples by 4"):
        model(images((3, 4), channels, channels_first=channels_first))
    if name in CHEAP_NAMES and not OPTIONS[option]["include_top"]:
        taps = nestzoo.basis_model(model, pooled=True)(images(SIZES[0], channels, channels_first=channels_first))
        assert len(taps) == 2 * (model.identity.num_blocks + 1) - (variant == "a-resnest")  # eq. (4): no x_L
        assert tuple(taps["v0"].shape) == (2, channels)


def check_round_trip(name, tmp_dir):
    """The .keras file: identity, options and outputs survive (weights moved off their initial values)."""
    rng = np.random.default_rng(1)
    model = build(name, "avg")
    model.set_weights([w + rng.uniform(-0.05, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    path = Path(tmp_dir) / f"{name}.keras"
    model.save(path)
    x = images(SIZES[0], channels_of(name))
    for loaded in (keras.saving.load_model(path), nestzoo.load_model(path)):
        assert loaded.identity == model.identity and loaded.options == model.options, name
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)), err_msg=name)


def check_input_tensor(name):
    """input_tensor as Keras Applications take it: the model's inputs are its source inputs."""
    channels = channels_of(name)
    source = keras.Input((None, None, channels))
    model = nestzoo.create_model(name, input_tensor=keras.layers.Rescaling(1 / 255)(source), classes=CLASSES)
    assert model.input is source and model.options["input_shape"] == (None, None, channels)
    plain = nestzoo.create_model(name, input_shape=(None, None, channels), classes=CLASSES)
    plain.set_weights(model.get_weights())
    x = images(SIZES[1], channels) * 255
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(plain(x / 255)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"input_shape \(4, 4, 3\) does not match input_tensor's shape \(8, 8"):
        nestzoo.create_model(name, input_shape=(4, 4, 3), input_tensor=keras.Input((8, 8, 3)))


def image_shape(channels):
    """A variable height and width, in Keras's current image data format."""
    return (channels, None, None) if keras.config.image_data_format() == "channels_first" else (None, None, channels)


def check_channels_first(make, channels, rng):
    """Under channels_first, `make(option)` with the channels_last model's weights gives its outputs,
    transposed: the top, and the representation unpooled (pooled for eq. 4)."""
    for option in ("softmax", "unpooled"):
        reference = make(option)
        reference.set_weights([w + rng.uniform(-0.05, 0.05, w.shape).astype(w.dtype) for w in reference.get_weights()])
        keras.config.set_image_data_format("channels_first")
        try:
            model = make(option)
        finally:
            keras.config.set_image_data_format("channels_last")
        assert model.options["data_format"] == "channels_first" and model.options["input_shape"][0] == channels
        model.set_weights(reference.get_weights())  # the same shapes: kernels are (kh, kw, in, out) in both
        x = images(SIZES[0], channels, seed=3)
        y, y_first = np.asarray(reference(x)), np.asarray(model(x.transpose(0, 3, 1, 2)))
        y_first = y_first.transpose(0, 2, 3, 1) if y.ndim == 4 else y_first
        np.testing.assert_allclose(y_first, y, rtol=1e-4, atol=1e-5, err_msg=f"{model.name} {option}")


@pytest.mark.parametrize("name,option", CASES, ids=[f"{name}-{option}" for name, option in CASES])
def test_contract(name, option):
    check(name, option)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_keras_file_round_trip(name, tmp_path):
    check_round_trip(name, tmp_path)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_input_tensor(name):
    check_input_tensor(name)


def test_tensorflow_without_onednn_refuses_channels_first():
    """TensorFlow's CPU kernels run NCHW convolutions only with oneDNN: refused before any layer."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "tensorflow",
           "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "call keras.config.set_image_data_format('channels_last') before building" in result.stdout, result.stdout


def under_jax(tmp_dir):
    """The contract under JAX on resnet20, whose names share their shapes (JAX compiles its eager
    initializers once per shape: densenet40-12 alone takes over a minute to build here), and
    channels_first on resnet20 and on a small custom DenseNEst (its concatenations and transitions);
    (3, 123, 123) is a 123x123 RGB input."""
    assert keras.backend.backend() == "jax"
    names = [name for name in CHEAP_NAMES if registry.parse_name(name)[1] == "resnet20"]
    for i, option in enumerate(OPTIONS):
        check(names[i % len(names)], option)
    keras.config.set_image_data_format("channels_first")
    try:
        for option in ("unpooled", "avg"):  # NCHW shapes, and the taps pooled over the right axes
            check("resnet20.resnest", option, channels_first=True)
    finally:
        keras.config.set_image_data_format("channels_last")
    check_round_trip(REPRESENTATIVES[0], tmp_dir)
    check_input_tensor(REPRESENTATIVES[0])
    rng = np.random.default_rng(2)
    check_channels_first(lambda option: build("resnet20.standard", option), channels_of("resnet20.standard"), rng)
    check_channels_first(lambda option: nestzoo.DenseNEst(blocks=1, features=4, input_shape=image_shape(1),
                                                          **OPTIONS[option]), 1, rng)
    keras.config.set_image_data_format("channels_first")
    try:
        assert nestzoo.ResNEst(blocks=1, width=4, input_shape=(3, 123, 123)).output_shape == (None, 10)
    finally:
        keras.config.set_image_data_format("channels_last")


def refusal():
    keras.config.set_image_data_format("channels_first")
    try:
        nestzoo.ResNEst(blocks=1, width=4, input_shape=(3, 8, 8))
    except ValueError as error:
        print(error)


if __name__ == "__main__":
    refusal()

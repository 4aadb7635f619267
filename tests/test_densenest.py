"""The convolutional DenseNet family: DenseNet and DenseNEst, eqs. (8)-(9)."""
import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import basis, registry

TINY = dict(blocks=2, features=4, input_shape=(8, 8, 3))
TINY_BC = dict(layers=16, features=4, pointwise=True, compression=0.5, input_shape=(8, 8, 3))  # 6n+4, n = 2
BUILDERS = (nestzoo.DenseNet, nestzoo.DenseNEst)


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    "arch,standard,final_channels",
    [("densenet40-12", 1_019_722, 16 + 3 * 12 * 12), ("densenet-bc100-12", 769_162, 342)],
)
def test_parameter_counts_equal_reference(arch, standard, final_channels):
    # docs/reference.md, "Architectures and parameter counts": exact counts; the DenseNEst
    # drops only the final BN (gamma, beta)
    assert trainable(nestzoo.DenseNet(arch, classes=10)) == standard
    assert trainable(nestzoo.DenseNEst(arch, classes=10)) == standard - 2 * final_channels


@pytest.mark.parametrize(
    "arch,standard,densenest,final_channels",
    # final channels: stem 2k; each stage adds layers * k, each of the two transitions halves them
    [("densenet-bc250-24", 15_324_406, 15_320_938, 1734), ("densenet-bc190-40", 25_624_430, 25_620_050, 2190)],
)
def test_large_parameter_counts_equal_readme(arch, standard, densenest, final_channels):
    # one build (~5 s each): the DenseNEst is the DenseNet less final_bn's gamma and beta
    # (test_variants_differ_only_in_the_final_bn_relu)
    model = nestzoo.DenseNet(arch, classes=10)
    assert trainable(model) == standard
    assert basis.top_layers(model)["final_bn"].gamma.shape == (final_channels,)
    assert trainable(model) - 2 * final_channels == densenest


def test_spellings_and_registry():
    for typed in ("DenseNet-BC-100-12", "DenseNet-BC (L=100, k=12)", "densenet_bc_100_12", "DenseNetBC-100-12"):
        assert registry.get_spec(typed) is registry.ARCHS["densenet-bc100-12"]
    assert registry.get_spec("DenseNet-40-12") is registry.ARCHS["densenet40-12"]
    names = nestzoo.list_models("densenet")
    assert {"densenet40-12.standard", "densenet40-12.densenest", "densenet-bc190-40.densenest"} <= set(names)
    assert len(names) == 8
    model = nestzoo.create_model("DenseNet-40-12.DenseNEst", classes=3)
    assert model.name == "densenet40-12_densenest" and model.output_shape == (None, 3)
    assert registry.canonical_variant("DenseNet", "densenet") == "standard"


def test_variants_differ_only_in_the_final_bn_relu():
    names = {build.__name__: {layer.name for layer in build(**TINY).layers} for build in BUILDERS}
    assert names["DenseNet"] == names["DenseNEst"] | {"final_bn", "final_relu"}
    assert {"transition1_conv", "transition2_pool", "expansion"} <= names["DenseNEst"]
    assert "transition3_conv" not in names["DenseNEst"]


def test_dense_layers_concatenate_eq8_and_reach_the_predictor_linearly_eq9():
    model = nestzoo.DenseNEst(classifier_activation=None, **TINY_BC)
    assert model.get_layer("block1_conv1").output.shape[-1] == 16  # DenseNet-B: 1x1 to 4k
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    taps = nestzoo.basis_model(model)(x)
    assert sorted(taps, key=lambda k: (k[0], int(k[1:]))) == [f"v{i}" for i in range(7)] + [f"x{i}" for i in range(7)]
    assert taps["x0"].shape == (2, 8, 8, 8)  # stem 2k
    for i in (1, 2, 4, 6):  # within a stage, x_i = concat(x_{i-1}, v_i), eq. (8)
        assert taps[f"v{i}"].shape[-1] == 4
        np.testing.assert_array_equal(taps[f"x{i}"], np.concatenate([taps[f"x{i - 1}"], taps[f"v{i}"]], -1))
    # after a transition the next stage starts from the compressed, pooled x: 8 + 2k = 16 -> 8 channels
    assert taps["x3"].shape == (2, 4, 4, 8 + 4)
    kernel, bias = basis.top_layers(model)["logits"].get_weights()
    pooled = np.mean(taps["x6"], axis=(1, 2))
    np.testing.assert_allclose(model(x), pooled @ kernel + bias, rtol=1e-4, atol=1e-5)  # eq. (9)


def test_custom_networks_and_options():
    model = nestzoo.DenseNet(layers=10, features=3, input_shape=(8, 8, 1), classes=2)  # 3n+4, n = 2
    assert basis.expansion(model).output.shape[-1] == 16
    assert basis.block_layers(model, 6)["x"].output.shape == (None, 2, 2, 16 + 6 * 3)
    assert nestzoo.DenseNEst(include_top=False, **TINY).output_shape == (None, 2, 2, 16 + 6 * 4)
    assert nestzoo.DenseNet(include_top=False, pooling="avg", **TINY).output_shape == (None, 40)
    regression = nestzoo.DenseNEst(outputs=2, **TINY)
    assert basis.top_layers(regression)["predictions"].get_config()["activation"] == "linear"
    probabilities = nestzoo.DenseNet(**TINY)(np.ones((2, 8, 8, 3), "float32"))
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("build", BUILDERS)
def test_mixed_precision_output_is_float32(policy, build):
    policy("mixed_float16")
    model = build(**TINY)
    assert basis.block_layers(model, 1)["features"].compute_dtype == "float16"
    assert keras.ops.convert_to_numpy(model(np.ones((1, 8, 8, 3)))).dtype == np.float32


@pytest.mark.parametrize("build", BUILDERS)
def test_save_and_reload_keras_file(assert_reloads, build):
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert_reloads(build(**TINY_BC), x, np.array([0, 1]), "sparse_categorical_crossentropy")


BAD_INPUTS = [
    (dict(arch="densenet41-12"), "unknown DenseNet arch 'densenet41-12'; valid choices: densenet40-12, densenet-bc100-12"),
    (dict(blocks=2, features=0), r"features \(the growth rate k\) must be a positive integer"),
    (dict(blocks=2, features=2.5), r"features \(the growth rate k\) must be a positive integer"),
    (dict(blocks=2, compression=0), r"compression must be in \(0, 1\]"),
    (dict(blocks=2, compression=1.5), r"compression must be in \(0, 1\]"),
    (dict(blocks=2, compression=0.01), "leaves a transition with no channels"),
    (dict(layers=41), r"DenseNet has 3n\+4 layers \(7, 10, 13"),
    (dict(layers=101, pointwise=True), r"DenseNet-B \(pointwise\) has 6n\+4 layers \(10, 16, 22"),
    (dict(blocks=(2, 0, 2)), r"blocks \(dense layers per stage\) must be a positive integer"),
    (dict(features=12), r"needs blocks \(dense layers per stage\) or layers"),
    (dict(arch="densenet40-12", features=24), "either arch"),
    (dict(arch="densenet40-12", input_shape=(10,)), "image network.*use arch='mlp'"),
    (dict(arch="resnet20"), "resnet architecture; use a resnet builder"),
    (dict(arch="mlp", blocks=2, features=4), r"give input_shape=\(N_in,\)"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_is_rejected_before_keras(no_keras, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nestzoo.DenseNEst(**kwargs)


def test_bad_variant(no_keras):
    with pytest.raises(ValueError, match="valid choices: standard, densenest"):
        nestzoo.create_model("densenet40-12.resnest")

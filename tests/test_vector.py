"""The vector-valued family (arch="mlp"): five variants, exact linear algebra, Proposition 4."""
import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import basis

RES = dict(arch="mlp", input_shape=(5,), width=16, blocks=3, features=4)
DENSE = dict(arch="mlp", input_shape=(5,), blocks=3, features=4)
VARIANTS = [
    (nestzoo.ResNet, RES),
    (nestzoo.ResNEst, RES),
    (nestzoo.BNResNEst, RES),
    (nestzoo.AResNEst, RES),
    (nestzoo.DenseNet, DENSE),
    (nestzoo.DenseNEst, DENSE),
]
IDS = [build.__name__ for build, _ in VARIANTS]


def inputs(n=8, dim=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype("float32")


def test_issue_example():
    model = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=64, blocks=4, features=8, outputs=1)
    # W_0 (10x64) + 4 blocks of G_i = Dense(8) with bias and W_i (8x64) + W_{L+1} with bias
    assert model.count_params() == 10 * 64 + 4 * ((64 * 8 + 8) + 8 * 64) + (64 + 1)
    assert model.output_shape == (None, 1)


@pytest.mark.parametrize("build,kwargs", VARIANTS, ids=IDS)
def test_regression_and_classification_outputs(build, kwargs):
    x = inputs()
    regression = build(outputs=2, **kwargs)
    y = regression.predict(x, verbose=0)
    assert y.shape == (8, 2) and y.dtype == np.float32
    assert basis.top_layers(regression)["predictions"].get_config()["activation"] == "linear"
    probabilities = build(classes=3, **kwargs).predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    logits_only = build(classes=3, classifier_activation=None, **kwargs)
    assert basis.top_layers(logits_only)["predictions"].get_config()["activation"] == "linear"


@pytest.mark.parametrize("build,kwargs", VARIANTS, ids=IDS)
def test_scalar_width_one(build, kwargs):
    sizes = dict(width=1, features=1) if "width" in kwargs else dict(features=1)
    model = build(**{**kwargs, **sizes, "input_shape": (1,)}, outputs=1)
    x = inputs(dim=1)
    taps, maps = nestzoo.basis_model(model)(x), nestzoo.linear_maps(model)
    if "H0" in maps:  # eq. (4)
        expected = sum(np.asarray(taps[f"v{i}"]) @ maps[f"H{i}"].T for i in range(4)) + maps["b"]
    else:  # the head on x_L: BN (inference), ReLU, W_{L+1}
        r, head = np.asarray(taps["x3"]), basis.identity(model).head
        if head.final_bn:
            gamma, beta, mean, var = basis.top_layers(model)["final_bn"].get_weights()
            r = (r - mean) / np.sqrt(var + 1e-5) * gamma + beta
        if head.final_relu:
            r = np.maximum(r, 0)
        expected = r @ maps["W4"].T + maps["b"]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build,kwargs", VARIANTS, ids=IDS)
def test_save_and_reload_keras_file(assert_reloads, build, kwargs):
    x = inputs()
    assert_reloads(build(outputs=1, **kwargs), x, x[:, :1], "mse")


def test_taps_and_matrices_reproduce_eq2_eq4_and_eq9():
    x = inputs()
    resnest = nestzoo.ResNEst(outputs=2, hidden=(6,), **RES)
    maps = nestzoo.linear_maps(resnest)
    assert list(maps) == ["W0", "W1", "W2", "W3", "W4", "b"]
    assert maps["W0"].shape == (16, 5) and maps["W1"].shape == (16, 4) and maps["W4"].shape == (2, 16)
    taps = nestzoo.basis_model(resnest)(x)
    x_l = taps["v0"] @ maps["W0"].T + sum(taps[f"v{i}"] @ maps[f"W{i}"].T for i in (1, 2, 3))
    np.testing.assert_allclose(taps["x3"], x_l, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(resnest(x), x_l @ maps["W4"].T + maps["b"], rtol=1e-4, atol=1e-5)  # eq. (2)
    (a1, c1), (a2, c2) = nestzoo.block_weights(resnest, 1)  # G_1: hidden Dense(6), then Dense(4), ReLU each
    v1 = np.maximum(np.maximum(taps["x0"] @ a1.T + c1, 0) @ a2.T + c2, 0)
    np.testing.assert_allclose(taps["v1"], v1, rtol=1e-4, atol=1e-5)

    augmented = nestzoo.AResNEst(outputs=2, **RES)
    maps = nestzoo.linear_maps(augmented)
    assert "W3" not in maps and "W4" not in maps  # W_L and W_{L+1} are deleted
    taps = nestzoo.basis_model(augmented)(x)
    y = sum(taps[f"v{i}"] @ maps[f"H{i}"].T for i in range(4)) + maps["b"]
    np.testing.assert_allclose(augmented(x), y, rtol=1e-4, atol=1e-5)  # eq. (4)

    densenest = nestzoo.DenseNEst(outputs=2, **DENSE)
    maps = nestzoo.linear_maps(densenest)
    assert list(maps) == ["W4", "b"] and maps["W4"].shape == (2, 5 + 3 * 4)
    taps = nestzoo.basis_model(densenest)(x)
    np.testing.assert_array_equal(taps["x0"], x)  # x_0 = x, eq. (8)
    np.testing.assert_array_equal(taps["x3"], np.concatenate([taps[f"v{i}"] for i in range(4)], axis=1))
    np.testing.assert_allclose(densenest(x), taps["x3"] @ maps["W4"].T + maps["b"], rtol=1e-4, atol=1e-5)  # eq. (9)


def test_hand_built_scalar_resnet_computes_absolute_value():
    # x_0 = x, x_1 = x_0 + 1 * ReLU(-2 x_0) = |x|, y = x_1: a one-block scalar ResNEst
    model = nestzoo.ResNEst(arch="mlp", input_shape=(1,), width=1, blocks=1, features=1, outputs=1)
    nestzoo.set_linear_maps(model, {"W0": [[1.0]], "W1": [[1.0]], "W2": [[1.0]], "b": [0.0]})
    nestzoo.set_block_weights(model, 1, [([[-2.0]], [0.0])])
    x = np.linspace(-3, 3, 13, dtype="float32")[:, None]
    np.testing.assert_allclose(model.predict(x, verbose=0), np.abs(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"W1 must have shape \(1, 1\)"):
        nestzoo.set_linear_maps(model, {"W1": np.ones((2, 1))})
    with pytest.raises(ValueError, match="has no linear map 'W7'"):
        nestzoo.set_linear_maps(model, {"W7": [[1.0]]})
    with pytest.raises(ValueError, match="no block 2; blocks are 1..1"):
        nestzoo.set_block_weights(model, 2, [])


def test_bottleneck_condition_and_assumption4():
    wide = nestzoo.ResNEst(outputs=1, **RES)  # M = 16 >= 5 + 2 * 4
    condition = nestzoo.bottleneck_condition(wide)
    assert condition and condition.stages[0].features == (5, 4, 4) and condition.margin == 16 - 13
    assert condition == nestzoo.bottleneck_condition(nestzoo.VectorResNetSpec(width=16, blocks=3, features=4), (5,))
    rank = nestzoo.assumption4(wide)
    assert rank and (rank.rank, rank.columns) == (13, 13) and rank.smallest_singular_value > rank.tolerance
    maps = nestzoo.linear_maps(wide)
    nestzoo.set_linear_maps(wide, {"W2": maps["W0"][:, :4]})  # W_2's columns repeat W_0's
    rank = nestzoo.assumption4(wide)
    assert not rank and rank.rank == 9 and rank.smallest_singular_value <= rank.tolerance
    narrow = nestzoo.AResNEst(**{**RES, "width": 8}, outputs=1)
    condition = nestzoo.bottleneck_condition(narrow)
    assert not condition and condition.required_width == (13,) and condition.margin == -5
    assert not nestzoo.assumption4(narrow)  # 13 columns in R^8
    with pytest.raises(ValueError, match="Proposition 3"):
        nestzoo.assumption4(nestzoo.DenseNEst(outputs=1, **DENSE))
    with pytest.raises(ValueError, match="input_shape"):
        nestzoo.bottleneck_condition(nestzoo.VectorResNetSpec(width=16, blocks=3, features=4))
    with pytest.raises(ValueError, match="not a vector-valued nestzoo model"):
        nestzoo.linear_maps(nestzoo.ResNEst(blocks=1, width=4, input_shape=(4, 4, 1)))
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, name="expansion")])  # a name is no identity
    with pytest.raises(basis.NotNestzooModel, match="not a nestzoo model"):
        nestzoo.linear_maps(plain)


@pytest.mark.parametrize(
    "build,kwargs",
    [
        (nestzoo.DenseNEst, dict(outputs=3, hidden=(7, 3))),
        (nestzoo.DenseNEst, dict(classes=4)),
        (nestzoo.DenseNet, dict(outputs=2)),
    ],
)
def test_proposition4_densenest_equals_a_wide_resnest(build, kwargs):
    densenest = build(**DENSE, **kwargs)
    if build is nestzoo.DenseNet:  # give the final BN non-default statistics
        densenest.compile("sgd", "mse")
        densenest.fit(inputs(), inputs()[:, :2], epochs=1, verbose=0)
    resnest = nestzoo.densenest_to_resnest(densenest)
    assert basis.expansion(resnest).units == 5 + 3 * 4  # M = N_in + sum D_i
    x = inputs(64, seed=1) * 3
    np.testing.assert_allclose(resnest.predict(x, verbose=0), densenest.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    maps = nestzoo.linear_maps(resnest)
    np.testing.assert_array_equal(np.concatenate([maps[f"W{i}"] for i in range(4)], axis=1), np.eye(17))  # Pi_i
    assert nestzoo.bottleneck_condition(resnest) and nestzoo.assumption4(resnest)
    with pytest.raises(ValueError, match="not a vector-valued DenseNEst"):
        nestzoo.densenest_to_resnest(resnest)


def test_include_top_false_and_taps():
    assert nestzoo.ResNEst(include_top=False, **RES).output_shape == (None, 16)  # x_L
    assert nestzoo.DenseNEst(include_top=False, **DENSE).output_shape == (None, 17)
    assert nestzoo.AResNEst(include_top=False, **RES).output_shape == (None, 5 + 3 * 4)  # v_0..v_L
    taps = nestzoo.basis_layers(nestzoo.AResNEst(**RES))
    assert list(taps) == ["v0", "v1", "v2", "v3", "x0", "x1", "x2"]  # eq. (4) deletes W_L: no x_3


BAD_INPUTS = [
    (nestzoo.ResNEst, dict(RES, width=0), "width M must be a positive integer"),
    (nestzoo.ResNEst, dict(RES, blocks=-1), "blocks L must be a positive integer"),
    (nestzoo.ResNEst, dict(RES, features=0), "features K must be a positive integer"),
    (nestzoo.ResNEst, dict(RES, features=2.5), "features K must be a positive integer"),
    (nestzoo.ResNEst, dict(RES, width=None), "width M must be a positive integer, got None"),
    (nestzoo.AResNEst, dict(RES, hidden=(4, 0)), "hidden must be a positive integer, got 0"),
    (nestzoo.DenseNEst, dict(DENSE, features=0), "features D must be a positive integer"),
    (nestzoo.DenseNEst, dict(DENSE, blocks=0), "blocks L must be a positive integer"),
    (nestzoo.DenseNEst, dict(DENSE, pointwise=True), "takes blocks, features, hidden; got pointwise"),
    (nestzoo.ResNEst, dict(RES, block="basic"), "takes width, blocks, features, hidden; got block"),
    (nestzoo.ResNEst, dict(RES, input_shape=(8, 8, 3)), r"vector-valued network: give input_shape=\(N_in,\)"),
    (nestzoo.ResNEst, dict(arch="resnet20", input_shape=(10,)), "image network.*use arch='mlp'"),
    (nestzoo.ResNEst, dict(RES, input_shape=(0,)), r"input_shape \(N_in,\): N_in must be a positive integer, got 0"),
    (nestzoo.ResNEst, dict(RES, outputs=0), "outputs must be a positive integer"),
    (nestzoo.ResNEst, dict(RES, outputs=1, classes=2), "classes .* or outputs .*, not both"),
]


@pytest.mark.parametrize("build,kwargs,message", BAD_INPUTS)
def test_bad_input_is_rejected_before_keras(no_keras, build, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)

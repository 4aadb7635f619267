"""The ResNet-family builders: architecture, porting details, heads, taps, identity, bad input."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import basis, registry, specs
from nestzoo import layers as nz_layers

TINY = dict(blocks=1, width=(4, 8, 8), input_shape=(8, 8, 3))

# docs/reference.md, "Architectures and parameter counts": trainable parameters of the
# reference implementation, CIFAR-10.
REFERENCE_COUNTS = {
    "wrn16-8": (11_091_594, 11_090_570, 11_091_594, 8_744_164),
    "wrn40-4": (8_977_226, 8_976_714, 8_977_226, 8_411_420),
    "resnet110": (1_730_522, 1_730_394, 1_730_522, 1_713_620),
    "resnet20": (272_282, 272_154, 272_282, 238_130),
}
BUILDERS = (nestzoo.ResNet, nestzoo.ResNEst, nestzoo.BNResNEst, nestzoo.AResNEst)


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("arch", REFERENCE_COUNTS)
def test_parameter_counts_equal_reference(arch):
    counts = tuple(trainable(build(arch=arch, classes=10)) for build in BUILDERS)
    assert counts == REFERENCE_COUNTS[arch]


def test_usage_line_and_spellings():
    model = nestzoo.AResNEst(arch="wrn40-4", classes=100)
    # 90 more classes on every head H_0..H_18: inputs 3 + 6 * (64 + 128 + 256), plus a bias each
    assert trainable(model) == REFERENCE_COUNTS["wrn40-4"][3] + 90 * (3 + 6 * (64 + 128 + 256) + 19)
    for typed in ("WRN-40-4", "wrn_40_4", "Wrn 40-4"):
        assert registry.get_spec(typed) is nestzoo.ARCHS["wrn40-4"]
    for typed in ("ResNet-110", "resnet-110", "RESNET110"):
        assert registry.get_spec(typed) is nestzoo.ARCHS["resnet110"]
    assert nestzoo.ResNEst(arch="ResNet-20").name == "resnet20_resnest"


def test_registry_lists_and_builds_every_arch_variant():
    names = nestzoo.list_models()
    for arch in REFERENCE_COUNTS:
        for variant in ("standard", "resnest", "bn-resnest", "a-resnest"):
            assert f"{arch}.{variant}" in names
    assert nestzoo.list_models("wrn16") == [n for n in names if n.startswith("wrn16-8.")]
    model = nestzoo.create_model("resnet20.a-resnest", classes=7)
    assert trainable(model) == trainable(nestzoo.AResNEst("resnet20", classes=7))
    assert nestzoo.create_model("ResNet-20.BN_ResNEst").name == "resnet20_bn-resnest"


def test_heads_differ_only_in_how_xL_reaches_the_predictor():
    names = {b.__name__: {l.name for l in b(**TINY).layers} for b in BUILDERS}
    backbone = names["ResNEst"] - {"avg_pool", "logits", "predictions"}
    assert names["ResNet"] == names["ResNEst"] | {"final_bn", "final_relu"}
    assert names["BNResNEst"] == names["ResNEst"] | {"final_bn"}
    # A-ResNEst: W_L and with it x_L (and x_L's shortcut) deleted, heads H_i on pooled v_i
    deleted = {"block3_W", "block3_x", "block3_shortcut"}
    assert names["AResNEst"] >= backbone - deleted
    assert not names["AResNEst"] & (deleted | {"final_bn", "avg_pool"})
    assert {f"head{i}" for i in range(4)} <= names["AResNEst"]


def test_block_structure_follows_reference():
    model = nestzoo.ResNEst(**TINY)
    # stem: 3x3 conv, no bias, to the first stage's width
    assert basis.expansion(model).kernel.shape == (3, 3, 3, 4)
    assert all(not l.use_bias for l in model.layers if isinstance(l, keras.layers.Conv2D))
    # stage 1 keeps the width: identity shortcut; stages 2, 3 start with stride 2 and project
    names = {l.name for l in model.layers}
    assert "block1_shortcut" not in names
    assert basis.block_layers(model, 2)["shortcut"].strides == (2, 2)
    assert basis.block_layers(model, 3)["x"].output.shape == (None, 2, 2, 8)
    # the projection reads the pre-activated input
    assert basis.block_layers(model, 2)["shortcut"].input is model.get_layer("block2_preact_relu").output


def test_bottleneck_block_and_custom_features():
    model = nestzoo.ResNEst(blocks=2, width=(16, 32), features=(4, 8), block="pointwise", input_shape=(8, 8, 3))
    w = basis.block_layers(model, 1)["W"]  # W_i: the last 1x1 conv, K_i -> M
    assert w.kernel.shape == (1, 1, 4, 16)
    assert model.get_layer("block3_conv2").strides == (2, 2)  # stride on the 3x3
    assert basis.block_layers(model, 3)["features"].output.shape[-1] == 8
    spec = nestzoo.ResNetSpec.from_layers(29, width=(16, 32, 64), block="pointwise")
    assert spec.blocks == (3, 3, 3) and spec.features == (4, 8, 16)
    assert nestzoo.ResNetSpec.from_layers(20, (16, 32, 64)) == nestzoo.ARCHS["resnet20"]


def test_stride2_padding_is_symmetric_like_pytorch():
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 1)).astype("float32")
    kernel = np.random.default_rng(1).normal(size=(3, 3, 1, 1)).astype("float32")
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, nz_layers.conv(inputs, 1, 3, 2, name="c"))
    model.get_layer("c").set_weights([kernel])
    padded = np.pad(x[0, :, :, 0], 1)
    expected = np.array(
        [[np.sum(padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3] * kernel[:, :, 0, 0]) for j in range(3)] for i in range(3)]
    )
    np.testing.assert_allclose(model(x)[0, :, :, 0], expected, rtol=1e-5, atol=1e-5)
    same = keras.layers.Conv2D(1, 3, strides=2, padding="same", use_bias=False)
    same.build(x.shape)
    same.set_weights([kernel])
    assert not np.allclose(same(x)[0, :, :, 0], expected, atol=1e-3)  # Keras "same" differs


def test_batch_norm_uses_pytorch_epsilon_and_momentum():
    model = nestzoo.ResNet(**TINY)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.epsilon == 1e-5 and l.momentum == 0.9 for l in bns)
    bn = keras.layers.BatchNormalization(epsilon=nz_layers.BN_EPSILON, momentum=nz_layers.BN_MOMENTUM)
    batch = np.random.default_rng(0).normal(3.0, 1.0, size=(64, 2)).astype("float32")
    bn(batch, training=True)
    # PyTorch: running_mean = (1 - 0.1) * 0 + 0.1 * batch_mean
    np.testing.assert_allclose(bn.moving_mean, 0.1 * batch.mean(0), rtol=1e-5)


def test_initialization_is_pytorch_default():
    model = nestzoo.ResNet(blocks=1, width=64, input_shape=(8, 8, 3), classes=100)
    kernel = np.asarray(basis.block_layers(model, 1)["W"].kernel)  # fan_in 3*3*64
    bound = 1 / np.sqrt(3 * 3 * 64)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)  # uniform, not Glorot
    bias = np.asarray(basis.top_layers(model)["logits"].bias)
    assert np.abs(bias).max() <= 1 / 8 and np.abs(bias).max() > 0.05  # U(+-1/sqrt(64)), not zeros
    gamma, beta = basis.top_layers(model)["final_bn"].get_weights()[:2]
    assert np.all(gamma == 1) and np.all(beta == 0)


def test_basis_taps_reproduce_eq2_and_eq4():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    resnest = nestzoo.ResNEst(classifier_activation=None, **TINY)
    taps = nestzoo.basis_layers(resnest)
    assert taps["v0"] == "input" and taps["x0"] == "expansion" and taps["v3"] == "block3_features"
    pooled = nestzoo.basis_model(resnest, pooled=True)(x)
    assert sorted(pooled) == ["v0", "v1", "v2", "v3", "x0", "x1", "x2", "x3"]
    kernel, bias = basis.top_layers(resnest)["logits"].get_weights()
    np.testing.assert_allclose(resnest(x), pooled["x3"] @ kernel + bias, rtol=1e-4, atol=1e-5)  # eq. (2)

    augmented = nestzoo.AResNEst(classifier_activation=None, **TINY)
    pooled = nestzoo.basis_model(augmented, pooled=True)(x)
    assert "x3" not in pooled  # W_L is deleted
    heads = basis.top_layers(augmented)["heads"]  # H_0..H_L
    y = sum(pooled[f"v{i}"] @ heads[i].kernel + heads[i].bias for i in range(4))
    np.testing.assert_allclose(augmented(x), y, rtol=1e-4, atol=1e-5)  # eq. (4)
    unpooled = nestzoo.basis_model(augmented)(x)
    assert unpooled["v1"].shape == (2, 8, 8, 4) and unpooled["v3"].shape == (2, 2, 2, 8)


def test_include_top_and_pooling():
    assert nestzoo.ResNet(include_top=False, **TINY).output_shape == (None, 2, 2, 8)
    assert nestzoo.BNResNEst(include_top=False, pooling="max", **TINY).output_shape == (None, 8)
    # A-ResNEst without top: the pooled basis v_0..v_L, 3 + 4 + 8 + 8 channels
    assert nestzoo.AResNEst(include_top=False, pooling="avg", **TINY).output_shape == (None, 23)
    probabilities = nestzoo.ResNet(**TINY)(np.ones((2, 8, 8, 3), "float32"))
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("build", [nestzoo.ResNet, nestzoo.AResNEst])
def test_mixed_precision_output_is_float32(policy, dtype_policy, build):
    policy(dtype_policy)
    model = build(**TINY)
    assert basis.block_layers(model, 1)["W"].compute_dtype == dtype_policy.split("_")[1]
    assert model.output.dtype == "float32"
    assert keras.ops.convert_to_numpy(model(np.ones((1, 8, 8, 3)))).dtype == np.float32


@pytest.mark.parametrize("build", BUILDERS)
def test_save_and_reload_keras_file(assert_reloads, build):
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert_reloads(build(**TINY), x, np.array([0, 1]), "sparse_categorical_crossentropy")


def test_identity_survives_save_load_clone_and_config(tmp_path):
    """The spec, variant, arch and builder options travel with the model (keras-hub's Backbone.get_config)."""
    model = nestzoo.create_model("resnet20.bn-resnest", input_shape=(None, None, 1), classes=3,
                                 classifier_activation=None, name="mine")
    expected = basis.Identity(nestzoo.ARCHS["resnet20"], "bn-resnest", "resnet20")
    assert nestzoo.identity(model) == model.identity == expected and expected.name == "resnet20.bn-resnest"
    assert model.options == dict(input_shape=(None, None, 1), classes=3, outputs=None, include_top=True, pooling=None,
                                 classifier_activation=None, dtype_policy="float32", data_format="channels_last")
    path = tmp_path / "model.keras"
    model.save(path)
    copies = {"keras.saving.load_model": keras.saving.load_model(path), "nestzoo.load_model": nestzoo.load_model(path),
              "clone_model": keras.models.clone_model(model),
              "from_config": type(model).from_config(json.loads(json.dumps(model.get_config())))}
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 1)).astype("float32")
    for how, copy in copies.items():
        assert type(copy) is type(model) and copy.name == "mine", how
        assert copy.identity == expected and copy.options == model.options, how
    np.testing.assert_array_equal(copies["nestzoo.load_model"](x), model(x))
    # a fresh process: nestzoo.load_model registers what the file names
    script = f"import nestzoo; print(nestzoo.load_model({str(path)!r}).identity.name)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.split()[-1:] == ["resnet20.bn-resnest"], result.stderr[-2000:]


@pytest.mark.parametrize("spec", [nestzoo.ARCHS["wrn40-4"], nestzoo.ARCHS["densenet-bc100-12"],
                                  specs.VectorResNetSpec(width=4, blocks=2, features=3, hidden=(5,)),
                                  specs.VectorDenseNetSpec(blocks=2, features=3)], ids=lambda s: type(s).__name__)
def test_specs_round_trip_through_json(spec):
    assert specs.spec_from_config(json.loads(json.dumps(specs.spec_config(spec)))) == spec
    with pytest.raises(ValueError, match="not a nestzoo spec: 'Spec'; valid classes: ResNetSpec"):
        specs.spec_from_config({"class": "Spec", "config": {}})


def test_a_model_without_identity_is_named():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    assert not basis.is_nestzoo_model(plain)
    with pytest.raises(basis.NotNestzooModel, match="'plain' is not a nestzoo model"):
        nestzoo.identity(plain)
    with pytest.raises(basis.NotNestzooModel, match="'plain' is not a nestzoo model"):
        nestzoo.basis_model(plain)


def test_input_is_checked_when_the_size_is_known_at_the_call():
    model = nestzoo.ResNet(input_shape=(None, None, 3), **{k: v for k, v in TINY.items() if k != "input_shape"})
    assert model(np.zeros((1, 4, 5, 3), "float32")).shape == (1, 10)  # any size >= the downsampling, 4
    with pytest.raises(ValueError, match="input 3x5 is too small: this network downsamples by 4"):
        model(np.zeros((1, 3, 5, 3), "float32"))


def test_weights_file_round_trip(tmp_path):
    model = nestzoo.ResNet(**TINY)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_array_equal(model(x), nestzoo.ResNet(weights=path, **TINY)(x))


BAD_INPUTS = [
    (dict(arch="resnet21"), "valid choices: resnet20, resnet110, wrn16-8, wrn40-4"),
    (dict(arch="resnet20", classes=0), "classes must be a positive integer"),
    (dict(arch="resnet20", input_shape=(3, 3, 3)), "downsamples by 4, so height and width must be at least 4"),
    (dict(layers=21, width=(16, 32, 64)), r"6n\+2 layers \(8, 14, 20"),
    (dict(layers=21, width=(16, 32, 64), block="pointwise"), r"9n\+2 layers \(11, 20, 29"),
    (dict(blocks=3, width=(16, 0, 64)), r"width \(M per stage\) must be a positive integer"),
    (dict(blocks=(3, -1, 3), width=(16, 32, 64)), r"blocks \(per stage\) must be a positive integer"),
    (dict(blocks=(3, 3), width=(16, 32, 64)), "one entry per stage"),
    (dict(blocks=3, width=(16, 32, 64), features=(4, 8)), "one entry per stage"),
    (dict(blocks=3, width=16, block="dense"), "valid choices: basic, pointwise"),
    (dict(arch="resnet20", blocks=1), "either arch"),
    (dict(arch="resnet20", pooling="mean"), "pooling must be one of"),
    (dict(arch="resnet20", weights="missing.h5"), "is not a file"),
    (dict(arch="resnet20", input_shape=(32, 32, None)), r"\(height, width, channels\): channels must be a positive"),
    (dict(arch="resnet20", input_shape=(0, None, 3)), r"height and width \(or None\) must be a positive integer"),
    (dict(arch="resnet20", input_shape=32), r"input_shape must be a tuple \(height, width, channels\)"),
    (dict(arch="resnet20", hidden=(4,)), "hidden .* is for vector-valued networks"),
]


def test_one_keyword_one_meaning_across_families():
    """blocks, width and features mean L, M and K in the image and the vector family alike;
    an int is one stage (or, for blocks and features, the same in every stage)."""
    one_stage = nestzoo.ResNEst(blocks=2, width=16, features=4, input_shape=(8, 8, 3))
    assert {l.name for l in one_stage.layers} >= {"block1_x", "block2_x"} and "block3_x" not in {
        l.name for l in one_stage.layers}
    assert basis.block_layers(one_stage, 2)["features"].output.shape[-1] == 4
    vector = nestzoo.ResNEst(arch="mlp", blocks=2, width=16, features=4, input_shape=(5,))
    assert basis.block_layers(vector, 2)["features"].output.shape[-1] == 4
    assert nestzoo.ResNetSpec(blocks=3, width=(16, 32, 64)) == nestzoo.ARCHS["resnet20"]
    assert nestzoo.DenseNetSpec(blocks=12, features=12) == nestzoo.ARCHS["densenet40-12"]


def test_builders_show_their_parameters():
    """help() and IDEs see every keyword (Keras Applications' builders are the model)."""
    import inspect

    for build in (nestzoo.ResNet, nestzoo.ResNEst, nestzoo.BNResNEst, nestzoo.AResNEst):
        parameters = set(inspect.signature(build).parameters)
        assert parameters >= {"arch", "blocks", "width", "features", "layers", "block", "hidden", "input_shape",
                              "classes", "outputs", "include_top", "pooling", "classifier_activation",
                              "weights", "name"}
        assert all(f"    {p}:" in build.__doc__ for p in parameters), build.__name__
    for build in (nestzoo.DenseNet, nestzoo.DenseNEst):
        parameters = set(inspect.signature(build).parameters)
        assert parameters >= {"blocks", "features", "layers", "pointwise", "compression", "stem"}
        assert all(f"    {p}:" in build.__doc__ for p in parameters), build.__name__


def test_registry_is_pure_data():
    """The registry imports no model code and no Keras (the factory, create_model, sits above it)."""
    script = ("import sys, nestzoo.registry as r; r.list_models(); r.parse_name('wrn40-4.a-resnest'); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow') "
              "or m in ('nestzoo.builders', 'nestzoo.model', 'nestzoo.basis')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    assert registry.FAMILY_VARIANTS == {"resnet": ("standard", "resnest", "bn-resnest", "a-resnest"),
                                        "densenet": ("standard", "densenest")}  # from HEADS' families


def test_list_models_takes_wildcards():
    assert nestzoo.list_models("*.a-resnest") == [f"{a}.a-resnest" for a in
                                                  ("resnet110", "resnet20", "wrn16-8", "wrn40-4")]
    assert nestzoo.list_models("wrn*") == [n for n in nestzoo.list_models() if n.startswith("wrn")]
    assert nestzoo.list_models("densenet-bc1?0-*.densenest") == ["densenet-bc100-12.densenest",
                                                                "densenet-bc190-40.densenest"]
    assert nestzoo.list_models("nothing*") == []


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_is_rejected_before_keras(no_keras, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nestzoo.ResNet(**kwargs)


def test_bad_variant_and_model_names(no_keras):
    with pytest.raises(ValueError, match="valid choices: standard, resnest, bn-resnest, a-resnest"):
        nestzoo.create_model("resnet20.c-resnest")
    with pytest.raises(ValueError, match="'arch.variant'"):
        nestzoo.create_model("resnet20")
    with pytest.raises(ValueError, match="pooling='avg'"):
        nestzoo.AResNEst("resnet20", include_top=False)


def test_weights_that_do_not_fit_are_rejected(tmp_path):
    path = str(tmp_path / "standard.weights.h5")
    nestzoo.ResNet(**TINY).save_weights(path)
    with pytest.raises(ValueError, match="does not fit .* holds 39 model variables, the architecture has 35"):
        nestzoo.ResNEst(weights=path, **TINY)
    with pytest.raises(ValueError, match="of other shapes"):
        nestzoo.ResNet(weights=path, classes=3, **TINY)


def test_weights_of_a_trained_compiled_model_load(tmp_path):
    """A trainer's weight files also hold the optimizer's variables; `weights=` takes them."""
    model = nestzoo.ResNet(**TINY)
    model.compile(nestzoo.CoupledSGD(0.1), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    model.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    path = str(tmp_path / "best.weights.h5")
    model.save_weights(path)
    loaded = nestzoo.ResNet(weights=path, **TINY)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="does not fit .* holds 39 model variables, the architecture has 35"):
        nestzoo.ResNEst(weights=path, **TINY)


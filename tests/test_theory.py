"""nestzoo.theory: the width condition and Assumption 4 on specs and models, and the risk bounds on real
data that ships offline: diabetes (regression) and digits (classification)."""
import numpy as np
import pytest
import tensorflow as tf

import keras
import nestzoo
from nestzoo import theory

# Theorem 1(b) holds at local minima; full-batch Adam stopped by the criterion below only
# approaches one, so epsilon is compared with the risk it leaves: 1% of R.
EPSILON_TOLERANCE = 0.01


def test_bottleneck_condition_of_specs_and_models():
    condition = nestzoo.bottleneck_condition(nestzoo.ARCHS["resnet20"])  # 3 input channels by default
    assert not condition and condition.required_width == (3 + 2 * 16, 16 + 2 * 32, 32 + 2 * 64)
    assert [s.holds for s in condition.stages] == [False] * 3
    wide = nestzoo.ResNetSpec(blocks=(3,), width=(64,), features=(8,), block="pointwise")
    (stage,) = nestzoo.bottleneck_condition(wide, input_shape=(8, 8, 3)).stages
    assert (stage.width, stage.features, stage.total, stage.margin, stage.holds) == (64, (3, 8, 8), 19, 45, True)
    # a model: stage 1's v_0 is the pre-activated stage input (K_0 = 64) read by the projection
    # shortcut; the last block of the network is not in the inverse problem
    model = nestzoo.ResNEst(blocks=(3, 2), width=(64, 96), features=(8, 16), block="pointwise", input_shape=(8, 8, 2))
    condition = nestzoo.bottleneck_condition(model)
    assert [(s.width, s.features, s.blocks) for s in condition.stages] == [(64, (2, 8, 8), (1, 2)), (96, (64, 16), (4,))]
    assert condition and condition.margin == 96 - 80
    with pytest.raises(ValueError, match="Proposition 3"):
        nestzoo.bottleneck_condition(nestzoo.ARCHS["densenet40-12"])
    with pytest.raises(ValueError, match="not a nestzoo model"):
        nestzoo.bottleneck_condition(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="input_shape is for specs"):
        nestzoo.bottleneck_condition(model, input_shape=(8, 8, 2))


def test_a_resnest_last_block_alone_in_a_stage_has_no_residual_space():
    # eq. (4) deletes W_L: block 3, alone in stage 1, has no projection W_0 and no x_3
    model = nestzoo.AResNEst(blocks=(2, 1), width=(8, 12), features=(2, 4), input_shape=(8, 8, 1), classes=3)
    (stage,) = theory.model_stages(model)
    assert (stage.stage, stage.blocks, stage.last) == (0, ((1, 2),), 2)
    assert [s.features for s in theory.bottleneck_condition(model).stages] == [(1, 2)]
    assert len(theory.assumption4(model).stages) == 1


def test_assumption4_on_image_networks():
    # pointwise W_i and the projection shortcut are 1x1: one per-pixel matrix per stage
    model = nestzoo.ResNEst(blocks=(1, 2), width=(8, 24), features=(2, 4), block="pointwise", input_shape=(4, 4, 1))
    final = nestzoo.assumption4(model).stages[-1]
    assert final.grid == "per pixel" and (final.rows, final.columns) == (24, 8 + 4) and final.holds
    # a 3x3 W_i: the zero-padded convolution operator on the stage's grid, checked against Keras's convolution
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 5))
    v = np.random.default_rng(1).normal(size=(1, 4, 6, 2))
    conv = keras.ops.convert_to_numpy(keras.ops.conv(v.astype("float32"), kernel.astype("float32"), padding="same"))
    np.testing.assert_allclose(theory.conv_operator(kernel, (4, 6)) @ v.reshape(-1), conv.reshape(-1), atol=1e-5)
    basic = nestzoo.ResNEst(blocks=2, width=(12,), features=(4,), input_shape=(4, 4, 3))  # M = 12 >= 3 + 4
    result = nestzoo.assumption4(basic)
    assert result and result.stages[0].grid == (4, 4) and result.columns == 16 * 7
    small = nestzoo.assumption4(basic, max_columns=100)  # the budget shrinks the grid, not below 3x3
    assert small.stages[0].grid == (3, 3) and small.columns == 9 * 7
    narrow = nestzoo.assumption4(nestzoo.ResNEst(blocks=2, width=(6,), features=(4,), input_shape=(4, 4, 3)))
    assert not narrow and narrow.rank <= 16 * 6 < narrow.columns


@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    standardize = lambda a: ((a - a.mean(0)) / a.std(0)).astype("float32")  # noqa: E731
    return standardize(x), standardize(y)


def train_full_batch(model, x, y, learning_rate=1e-2, patience=100, min_improvement=1e-4, max_steps=3000):
    """Full-batch Adam on the mean squared error until the training risk stops improving: no
    relative improvement of `min_improvement` over the best risk for `patience` steps in a row."""
    optimizer = keras.optimizers.Adam(learning_rate)
    x, y = tf.constant(x), tf.constant(y.reshape(len(y), -1))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.reduce_sum((model(x, training=True) - y) ** 2, axis=1))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    best, stalled = np.inf, 0
    for steps in range(1, max_steps + 1):
        loss = float(step())
        best, stalled = (loss, 0) if loss < best * (1 - min_improvement) else (best, stalled + 1)
        if stalled >= patience:
            return steps
    return steps


@pytest.fixture(scope="module")
def trained_wide(diabetes):
    keras.utils.set_random_seed(0)
    model = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=1)
    steps = train_full_batch(model, *diabetes)
    assert steps < 3000, "training did not stop improving within the step budget"
    return model


def test_wide_resnest_attains_the_lower_bound_on_diabetes(trained_wide, diabetes):
    condition, rank = theory.bottleneck_condition(trained_wide), theory.assumption4(trained_wide)
    assert condition and condition.stages[0].features == (10, 4) and condition.margin == 2  # M = 16 >= 10 + 4
    assert rank and rank.columns == 14 and rank.smallest_singular_value > 100 * rank.tolerance
    result = theory.erlb(trained_wide, diabetes)
    print(result)
    assert result.loss == "squared_error" and result.examples == 442 and result.class_residual < 1e-5
    assert 0 <= result.epsilon <= EPSILON_TOLERANCE * result.R  # Proposition 2, Theorem 1(b)


def test_wide_resnest_beats_the_best_linear_predictor(trained_wide, diabetes, tmp_path):
    risks = theory.block_risks(trained_wide, diabetes)
    print(risks.table())
    assert risks.blocks == (0, 1, 2) and risks.model == pytest.approx(theory.erlb(trained_wide, diabetes).R)
    assert risks.model < risks.linear  # Corollary 2
    assert risks.augmented[0] == pytest.approx(risks.linear, rel=1e-9)  # v_0 = x: eq. (4) truncated at 0
    assert all(b <= a * (1 + 1e-9) for a, b in zip(risks.augmented, risks.augmented[1:]))  # Proposition 2, eq. (7)
    path = theory.plot_block_risks(risks, tmp_path / "risks.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_A_is_numpys_least_squares_on_the_concatenated_features(trained_wide, diabetes):
    x, y = diabetes
    taps = nestzoo.basis_model(trained_wide)(x)
    phi = np.concatenate([np.asarray(taps[f"v{i}"], dtype=np.float64) for i in range(3)] + [np.ones((len(x), 1))], 1)
    residual = phi @ np.linalg.lstsq(phi, y.astype(np.float64), rcond=None)[0] - y
    assert theory.erlb(trained_wide, (x, y)).A == pytest.approx(np.mean(residual ** 2), rel=1e-6)


def test_densenest_no_worse_than_the_best_linear_predictor(diabetes):
    keras.utils.set_random_seed(0)
    model = nestzoo.DenseNEst(arch="mlp", input_shape=(10,), blocks=2, features=4, outputs=1)
    train_full_batch(model, *diabetes)
    risks = theory.block_risks(model, diabetes)
    assert risks.model <= risks.linear  # Proposition 3
    result = theory.erlb(model, diabetes)  # (PD_phi) is convex: epsilon is its optimization gap
    assert 0 <= result.epsilon <= EPSILON_TOLERANCE * result.R
    with pytest.raises(ValueError, match="Proposition 3"):
        theory.bottleneck_condition(model)


def test_narrow_resnest_is_reported_violating(diabetes):
    keras.utils.set_random_seed(0)
    model = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=8, blocks=3, features=4, outputs=1)
    train_full_batch(model, *diabetes, max_steps=300)
    condition, rank = theory.bottleneck_condition(model), theory.assumption4(model)
    assert not condition and condition.required_width == (18,) and condition.margin == -10
    assert not rank and rank.rank <= 8 < rank.columns == 18 and rank.smallest_singular_value == 0
    result = theory.erlb(model, diabetes)
    print(f"condition-violating ResNEst: epsilon = {result.epsilon:.4g} (R = {result.R:.4g}, A = {result.A:.4g})")
    assert result.epsilon >= -1e-9 * result.R


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")[:600], y[:600]


@pytest.mark.parametrize("build,kwargs", [
    (nestzoo.ResNEst, dict(blocks=(1, 1), width=(8, 12), features=(4, 4))),  # basic: 3x3 W_i, border features
    (nestzoo.BNResNEst, dict(blocks=(2, 1), width=(16, 24), features=(4, 4), block="pointwise")),  # 1x1 W_i
    (nestzoo.DenseNEst, dict(blocks=1, features=4)),
])
def test_image_models_on_digits_attain_no_less_than_the_bound(build, kwargs, digits):
    keras.utils.set_random_seed(0)
    model = build(input_shape=(8, 8, 1), classes=10, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*digits, batch_size=100, epochs=2, verbose=0)
    result = theory.erlb(model, digits, max_iter=200)  # started at the model's own predictor: A <= R at any count
    print(result)
    assert result.loss == "cross_entropy" and result.examples == len(digits[1])
    assert result.class_residual < 1e-5  # the model's predictor lies in the A-ResNEst's class
    assert result.epsilon >= -1e-9 * result.R  # Proposition 2
    if build is nestzoo.ResNEst:  # pooled v_i alone miss the zero-padded border of a 3x3 W_i
        assert "v2: pooled + border" in result.taps
        assert theory.erlb(model, digits, border=False, max_iter=1).class_residual > 100 * result.class_residual


def test_block_risks_of_an_image_a_resnest_on_digits(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = nestzoo.AResNEst(blocks=(1, 1), width=(8, 12), features=(4, 4), input_shape=(8, 8, 1), classes=10)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*digits, batch_size=100, epochs=2, verbose=0)
    risks = theory.block_risks(model, digits, max_iter=100)
    print(risks.table())
    assert risks.blocks == (0, 1, 2) and risks.residual[2] is None  # eq. (4) deletes W_L: no x_L
    assert risks.residual[1] is not None and risks.augmented[2] <= risks.augmented[0]
    assert theory.plot_block_risks(risks, tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="its own lower bound"):
        theory.erlb(model, digits)


def test_variable_input_size(digits):
    kwargs = dict(blocks=(1, 1), width=(8, 12), features=(4, 4), classes=10)
    variable = nestzoo.ResNEst(input_shape=(None, None, 1), **kwargs)
    fixed = nestzoo.ResNEst(input_shape=(8, 8, 1), **kwargs)
    fixed.set_weights(variable.get_weights())
    assert theory.bottleneck_condition(variable) == theory.bottleneck_condition(fixed)
    stage = theory.assumption4(variable, max_columns=100).stages[0]  # no grid of its own: the budget's, 10 x 10
    assert stage.grid == (10, 10) and stage.columns == 100 and stage.holds
    bound, expected = theory.erlb(variable, digits, max_iter=1), theory.erlb(fixed, digits, max_iter=1)
    assert (bound.R, bound.A) == pytest.approx((expected.R, expected.A), rel=1e-6) and bound.taps == expected.taps


def test_bad_inputs(digits, diabetes):
    vector = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=1)
    plain = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not a nestzoo model"):
        theory.erlb(plain, diabetes)
    with pytest.raises(ValueError, match="has no top .*include_top=False"):
        theory.block_risks(nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4,
                                           include_top=False), diabetes)
    with pytest.raises(ValueError, match=r"\(8, 8, 1\) per example does not fit .* takes \(10,\)"):
        theory.erlb(vector, digits)
    with pytest.raises(ValueError, match="has 1 outputs; the targets have 2"):
        theory.erlb(vector, (diabetes[0], np.ones((442, 2))))
    with pytest.raises(ValueError, match="different numbers of examples"):
        theory.erlb(vector, (diabetes[0], diabetes[1][:10]))
    with pytest.raises(ValueError, match="no examples"):
        theory.erlb(vector, (diabetes[0][:0], diabetes[1][:0]))
    with pytest.raises(ValueError, match="empty"):
        theory.block_risks(vector, tf.data.Dataset.from_tensor_slices(diabetes).take(0).batch(8))
    with pytest.raises(ValueError, match="infinite"):
        theory.erlb(vector, tf.data.Dataset.from_tensor_slices(diabetes).batch(8).repeat())
    with pytest.raises(ValueError, match=r"must yield \(x, y\) batches"):
        theory.erlb(vector, tf.data.Dataset.from_tensor_slices(diabetes[0]).batch(8))
    with pytest.raises(ValueError, match="unsupported loss 'hinge'"):
        theory.erlb(vector, diabetes, loss="hinge")
    sigmoid = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, classes=2,
                              classifier_activation="sigmoid")
    with pytest.raises(ValueError, match="unsupported loss"):
        theory.erlb(sigmoid, diabetes)
    with pytest.raises(ValueError, match="its own lower bound"):
        theory.erlb(nestzoo.AResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=1),
                    diabetes)
    with pytest.raises(ValueError, match="nonlinear in the features"):
        theory.erlb(nestzoo.ResNet(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=1),
                    diabetes)


def test_data_as_a_tf_dataset_or_a_name(digits):
    model = nestzoo.ResNEst(blocks=(1,), width=(8,), features=(4,), input_shape=(8, 8, 1), classes=10)
    batched = tf.data.Dataset.from_tensor_slices(digits).batch(128)
    R = theory.erlb(model, digits, max_iter=1).R
    assert theory.erlb(model, batched, max_iter=1).R == pytest.approx(R, rel=1e-6)
    assert theory.erlb(model, (batched, batched.take(1)), max_iter=1).R == pytest.approx(R, rel=1e-6)  # (train, test)
    by_name = theory.erlb(model, "digits", max_iter=1)  # the training split, unaugmented
    assert by_name.examples == nestzoo.data.DIGITS_NUM_TRAIN


CHANNELS_FIRST = """
import json

import keras
import numpy as np
from sklearn.datasets import load_digits

import nestzoo
from nestzoo import theory

x, y = load_digits(return_X_y=True)
x, y = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")[:200], y[:200]
kwargs = dict(blocks=(1, 1), width=(8, 12), features=(4, 4), classes=10)
keras.utils.set_random_seed(0)
last = nestzoo.ResNEst(input_shape=(8, 8, 1), **kwargs)
keras.config.set_image_data_format("channels_first")
first = nestzoo.ResNEst(input_shape=(1, 8, 8), **kwargs)
first.set_weights(last.get_weights())
report = {}
for name, model, images in [("last", last, x), ("first", first, x.transpose(0, 3, 1, 2))]:
    condition, rank = theory.bottleneck_condition(model), theory.assumption4(model)
    bound = theory.erlb(model, (images, y), max_iter=20)
    risks = theory.block_risks(model, (images, y), max_iter=20)
    report[name] = dict(features=[s.features for s in condition.stages], grids=[r.grid for r in rank.stages],
                        ranks=[r.rank for r in rank.stages], R=bound.R, A=bound.A, dimension=bound.dimension,
                        residual=bound.class_residual, augmented=risks.augmented, linear=risks.linear)
print("REPORT", json.dumps(report))
"""


def test_channels_first_gives_the_channels_last_answers():
    """The same weights built channels_first (PyTorch runs NCHW on a CPU; TensorFlow does not) and
    channels_last give the same widths, ranks, bound and risks: no axis is read wrongly. Under
    PyTorch the features are tensors that require grad, so this also runs the tools off TensorFlow."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHANNELS_FIRST], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    last, first = report["last"], report["first"]
    assert first["features"] == last["features"] == [[1], [8]]
    assert first["grids"] == last["grids"] and first["ranks"] == last["ranks"]
    assert first["dimension"] == last["dimension"] and first["residual"] < 1e-5
    for key in ("R", "A", "linear"):
        assert first[key] == pytest.approx(last[key], rel=1e-4, abs=1e-6), key
    assert first["augmented"] == pytest.approx(last["augmented"], rel=1e-4, abs=1e-6)

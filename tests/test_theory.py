"""nestzoo.theory on real data that ships offline: diabetes (regression) and digits (classification)."""
import numpy as np
import pytest
import tensorflow as tf

import keras
import nestzoo
from nestzoo import theory

# Theorem 1(b) holds at local minima; full-batch Adam stopped by the criterion below only
# approaches one, so epsilon is compared with the risk it leaves: 1% of R.
EPSILON_TOLERANCE = 0.01


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
    assert risks.features[0] == pytest.approx(risks.linear, rel=1e-9)  # v_0 = x: eq. (4) truncated at 0
    assert all(b <= a * (1 + 1e-9) for a, b in zip(risks.features, risks.features[1:]))  # Proposition 2, eq. (7)
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
        assert "v2: pooled + border" in result.features
        assert theory.erlb(model, digits, border=False, max_iter=1).class_residual > 100 * result.class_residual


def test_block_risks_of_an_image_a_resnest_on_digits(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = nestzoo.AResNEst(blocks=(1, 1), width=(8, 12), features=(4, 4), input_shape=(8, 8, 1), classes=10)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*digits, batch_size=100, epochs=2, verbose=0)
    risks = theory.block_risks(model, digits, max_iter=100)
    print(risks.table())
    assert risks.blocks == (0, 1, 2) and risks.residual[2] is None  # eq. (4) deletes W_L: no x_L
    assert risks.residual[1] is not None and risks.features[2] <= risks.features[0]
    assert theory.plot_block_risks(risks, tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="its own lower bound"):
        theory.erlb(model, digits)


def test_bad_inputs(digits, diabetes):
    vector = nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4, outputs=1)
    plain = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not a nestzoo model"):
        theory.erlb(plain, diabetes)
    with pytest.raises(ValueError, match="not a nestzoo model"):
        theory.block_risks(nestzoo.ResNEst(arch="mlp", input_shape=(10,), width=16, blocks=2, features=4,
                                           include_top=False), diabetes)
    with pytest.raises(ValueError, match=r"\(8, 8, 1\) per example does not fit .* takes \(10,\)"):
        theory.erlb(vector, digits)
    with pytest.raises(ValueError, match="has 1 outputs; the targets have 2"):
        theory.erlb(vector, (diabetes[0], np.ones((442, 2))))
    with pytest.raises(ValueError, match="different numbers of examples"):
        theory.erlb(vector, (diabetes[0], diabetes[1][:10]))
    with pytest.raises(ValueError, match="empty"):
        theory.erlb(vector, (diabetes[0][:0], diabetes[1][:0]))
    with pytest.raises(ValueError, match="empty"):
        theory.block_risks(vector, tf.data.Dataset.from_tensor_slices(diabetes).take(0).batch(8))
    with pytest.raises(ValueError, match="infinite"):
        theory.erlb(vector, tf.data.Dataset.from_tensor_slices(diabetes).batch(8).repeat())
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
    assert theory.erlb(model, batched, max_iter=1).R == pytest.approx(theory.erlb(model, digits, max_iter=1).R, rel=1e-6)
    by_name = theory.erlb(model, "digits", max_iter=1)  # the training split, unaugmented
    assert by_name.examples == nestzoo.data.DIGITS_NUM_TRAIN


def test_cli_analyze_writes_the_report_beside_the_model(tmp_path, capsys):
    import json

    from nestzoo import cli

    model = nestzoo.ResNEst(blocks=(1,), width=(4,), features=(2,), input_shape=(8, 8, 1), classes=10)
    model.save(tmp_path / "model.keras")
    cli.main(["analyze", str(tmp_path), "--dataset", "digits", "--max-iter", "50"])
    out = capsys.readouterr().out
    assert "stage 0: M = 4 >= sum K = 1 = 1" in out and "epsilon = R - A" in out and "block i" in out
    report = json.loads((tmp_path / "model_theory.json").read_text())
    assert report["erlb"]["epsilon"] >= 0 and len(report["block_risks"]["blocks"]) == 2
    assert (tmp_path / "model_theory.png").stat().st_size > 1000


def test_cli_analyze_refuses_non_finite_weights(tmp_path, nestzoo_cli):
    model = nestzoo.ResNEst(blocks=(1,), width=(4,), features=(2,), input_shape=(8, 8, 1), classes=10)
    weights = model.get_weights()
    weights[0][...] = np.inf
    model.set_weights(weights)
    model.save(tmp_path / "model.keras")
    code, out = nestzoo_cli("analyze", tmp_path, "--dataset", "digits")
    assert code == 2 and "model.keras holds non-finite weights (NaN or infinity in " in out
    assert not (tmp_path / "model_theory.json").exists()

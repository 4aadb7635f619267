"""WidthHyperModel used as keras-tuner's docs teach, with every data form model.fit takes, and the
recipe's milestones at the steps each epoch really has (the trainer's rule, Recipe.override)."""
import warnings

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from nestzoo import tuning
from nestzoo.recipe import get_recipe
from nestzoo.tuning.hypermodel import resumed

SHAPE, CLASSES, N = (8, 8, 1), 3, 96
SPACE = tuning.WidthSpace(blocks=(1, 1, 1), width=(2, 3), features=1)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, *SHAPE)).astype("float32"), rng.integers(0, CLASSES, N)


def _forms(x, y):
    """name: (fit arguments, fit keywords, steps per epoch)."""
    train = tf.data.Dataset.from_tensor_slices((x, y))
    held = (x[:32], y[:32])
    return {
        "arrays with batch_size": ((x, y), dict(batch_size=16, validation_data=held), 6),
        "validation_split": ((x, y), dict(batch_size=16, validation_split=0.25), 5),  # 72 examples train
        "batched tf.data": ((train.batch(16),), dict(validation_data=train.batch(32).take(1)), 6),
        "repeated tf.data": ((train.batch(16).repeat(),), dict(steps_per_epoch=4, validation_data=held), 4),
    }


FORMS = ("arrays with batch_size", "validation_split", "batched tf.data", "repeated tf.data")


@pytest.mark.parametrize("form", FORMS)
def test_keras_tuner_random_search_completes_its_trials(arrays, tmp_path, form):
    args, kwargs, _ = _forms(*arrays)[form]
    hypermodel = tuning.WidthHyperModel(SPACE, SHAPE, classes=CLASSES)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=2, directory=tmp_path, seed=0)
    tuner.search(*args, epochs=1, verbose=0, **kwargs)
    assert [t.status for t in tuner.oracle.trials.values()] == ["COMPLETED"] * 2
    assert tuner.get_best_models(1)[0].count_params() > 0


class _LearningRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


@pytest.mark.parametrize("form", FORMS)
def test_the_learning_rate_decays_at_the_milestones_of_the_real_steps(arrays, form):
    """The quick recipe at 5 epochs: milestones (2, 3, 4), the trainer's; the decay lands at their steps."""
    args, kwargs, steps = _forms(*arrays)[form]
    hypermodel = tuning.WidthHyperModel(SPACE, SHAPE, classes=CLASSES, recipe="quick")
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    rates = _LearningRates()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hypermodel.fit(hp, model, *args, epochs=5, verbose=0, callbacks=[rates], **kwargs)
    assert not [w for w in caught if "shuffle" in str(w.message)]
    recipe = get_recipe("quick")
    assert recipe.override(epochs=5).milestones == get_recipe("quick", epochs=5).milestones == (2, 3, 4)
    assert len(rates.rates) == 5 * steps
    expected = [recipe.base_learning_rate * recipe.gamma ** sum(step >= m * steps for m in (2, 3, 4))
                for step in range(5 * steps)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-6)


def test_a_hyperband_trial_resumed_at_an_epoch_continues_the_schedule():
    recipe = get_recipe("quick", epochs=5)  # milestones (2, 3, 4)
    later = resumed(recipe, resnest=False, initial_epoch=3)
    assert later.milestones == (1,) and later.epochs == 2
    assert later.initial_learning_rate(False) == pytest.approx(recipe.base_learning_rate * recipe.gamma ** 2)
    assert resumed(recipe, resnest=False, initial_epoch=0) is recipe


def test_a_repeated_dataset_without_steps_per_epoch_is_refused(arrays):
    hypermodel = tuning.WidthHyperModel(SPACE, SHAPE, classes=CLASSES)
    hp = keras_tuner.HyperParameters()
    endless = tf.data.Dataset.from_tensor_slices(arrays).batch(16).repeat()
    with pytest.raises(ValueError, match="repeated tf.data dataset .* needs steps_per_epoch"):
        hypermodel.fit(hp, hypermodel.build(hp), endless, epochs=1)

"""The recipe of appendix B.3, its milestone rule, and the optimizer and schedule that carry it out."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nestzoo import training
from nestzoo.recipe import RECIPES, get_recipe, scale_milestones


def test_paper_recipe_values():
    r = training.get_recipe("paper")
    assert (r.batch_size, r.epochs, r.momentum, r.nesterov, r.weight_decay) == (128, 200, 0.9, True, 5e-4)
    assert (r.milestones, r.gamma) == ((60, 120, 160), 0.2)
    assert r.initial_learning_rate(resnest=False) == 0.1
    assert r.initial_learning_rate(resnest=True) == 0.01  # ResNEsts diverge at 0.1 and 0.05
    assert training.get_recipe("paper", learning_rate=0.05).initial_learning_rate(resnest=True) == 0.05
    assert training.get_recipe("paper", epochs=3, milestones=[1, 2]).milestones == (1, 2)


@pytest.mark.parametrize("recipe, epochs, expected", [
    ("quick", 5, (2, 3, 4)),
    ("paper", 30, (9, 18, 24)),
    ("paper", 400, (120, 240, 320)),
    ("quick", 2, (1,)),  # 15, 22 and 27 of 30 all land on epoch 1 of 2
    ("quick", 30, (15, 22, 27)),
])
def test_milestones_scale_with_overridden_epochs(recipe, epochs, expected):
    assert get_recipe(recipe, epochs=epochs).milestones == expected
    assert scale_milestones(RECIPES[recipe].milestones, RECIPES[recipe].epochs, epochs) == expected
    assert get_recipe(recipe, epochs=epochs, milestones=[1, 2]).milestones == (1, 2)  # given ones are kept


def test_coupled_sgd_matches_torch_update():
    """Two steps of torch.optim.SGD(nesterov, weight_decay) computed by hand."""
    lr, mu, wd = 0.1, 0.9, 5e-4
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], dtype="float32")
    grads = [np.array([[0.3, -0.1], [0.2, 0.4]], "float32"), np.array([[-0.5, 0.2], [0.1, 0.0]], "float32")]
    var = keras.Variable(w0)
    opt = training.CoupledSGD(lr, momentum=mu, nesterov=True, coupled_weight_decay=wd)
    w, buf, steps = w0.astype("float64"), np.zeros_like(w0, "float64"), []
    for g in grads:
        opt.apply_gradients([(tf.constant(g), var)])
        d = g + wd * w  # coupled: the decay joins the gradient before the momentum
        buf = mu * buf + d
        w = w - lr * (d + mu * buf)
        steps.append(w)
        np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)
    # Keras's own weight_decay is decoupled: its first step differs by lr * mu * wd * w
    decoupled = keras.Variable(w0)
    keras.optimizers.SGD(lr, momentum=mu, nesterov=True, weight_decay=wd).apply_gradients([(tf.constant(grads[0]), decoupled)])
    np.testing.assert_allclose(decoupled.numpy() - steps[0], lr * mu * wd * w0, rtol=1e-2)


def test_schedule_multiplies_after_milestones():
    schedule = training.get_recipe("paper").schedule(resnest=False, steps_per_epoch=10)
    lr = {step: float(schedule(step)) for step in (0, 599, 600, 1199, 1200, 1599, 1600, 1999)}
    np.testing.assert_allclose(
        [lr[s] for s in sorted(lr)], [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008], rtol=1e-6
    )
    restored = training.MultiStepSchedule.from_config(schedule.get_config())
    assert float(restored(1200)) == pytest.approx(0.004)

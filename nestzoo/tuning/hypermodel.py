"""`WidthHyperModel`: a keras-tuner HyperModel of nestzoo ResNet-family networks searched over M.

It works with any keras-tuner tuner and every data form ``model.fit`` takes (arrays
with ``batch_size`` or ``validation_split``, a batched ``tf.data.Dataset``, a repeated
one with ``steps_per_epoch``): the recipe's learning-rate milestones are placed at the
steps each epoch really has.
"""
import json
import math
import zlib

import keras
import keras_tuner
import tensorflow as tf

from nestzoo import basis, theory
from nestzoo.builders import build_model
from nestzoo.recipe import get_recipe
from nestzoo.training.run import loss_for
from nestzoo.tuning import solver

KERAS_BATCH_SIZE = 32  # model.fit's batch size for arrays when none is given


def epoch_steps(x, batch_size=None, validation_split=0.0, steps=None):
    """The optimizer steps of one epoch of
    ``model.fit(x, batch_size=batch_size, validation_split=validation_split, steps_per_epoch=steps)``."""
    if steps is not None:
        return steps
    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if cardinality < 0:
            raise ValueError("a repeated tf.data dataset (or one of unknown length) needs steps_per_epoch=...")
        return cardinality
    if isinstance(x, keras.utils.PyDataset):
        return len(x)
    arrays = keras.tree.flatten(x)
    if not arrays or not hasattr(arrays[0], "shape"):
        raise ValueError(f"cannot tell the steps of an epoch of {type(x).__name__}; give steps_per_epoch=...")
    examples = int(arrays[0].shape[0])
    train = int(math.floor(examples * (1.0 - validation_split)))  # as model.fit splits arrays
    return max(1, math.ceil(train / (batch_size or KERAS_BATCH_SIZE)))


class WidthHyperModel(keras_tuner.HyperModel):
    """A keras-tuner HyperModel of nestzoo ResNet-family networks searched over M (and K, lr).

    space: a `WidthSpace`. input_shape: the data's (height, width, channels) or
    (N_in,). classes: a classifier's classes; outputs: N_o for regression instead.
    recipe: the trainer's recipe (CoupledSGD with its multi-step schedule), its
    milestones scaled to each trial's epochs as `nestzoo train` scales them
    (`Recipe.override`). seed: with the trial's values, seeds each trial's weights
    and data order, so a trial is repeatable. The constructor resolves the search
    space (`bounds`), so bad ranges fail before any training.
    """

    def __init__(self, space, input_shape, classes=None, outputs=None, recipe="quick", seed=0):
        super().__init__(name="nestzoo_width")
        self.space, self.input_shape, self.seed = space, tuple(input_shape), seed
        if (classes is None) == (outputs is None):
            raise ValueError("give classes (a classifier) or outputs (regression), not both or neither")
        self.classes, self.outputs = classes, outputs
        self.recipe = get_recipe(recipe)
        rank = 1 if space.inputs == "vector" else 3
        if len(self.input_shape) != rank:
            raise ValueError(f"{space.inputs} inputs need a rank of {rank}, the data has {self.input_shape}")
        self.bounds = solver.width_bounds(space, self.input_shape)

    def declare_hyperparameters(self, hp):
        """Declare M (or M0, M1, ...), K and the learning rate, as far as the space searches them."""
        self.values(hp)

    def values(self, hp):
        """(stage widths, stage features, learning rate or None) of a trial, declaring the hyperparameters."""
        space = self.space
        if space.per_stage:
            widths = tuple(hp.Int(name, *bound) for name, bound in self.bounds.items())
        else:
            widths = space.stage_widths(hp.Int("M", *self.bounds["M"]))
        k = hp.Int("K", *space.feature_range) if space.feature_range else None
        lr = hp.Float("learning_rate", *space.learning_rate, sampling="log") if space.learning_rate else None
        return widths, space.stage_features(k), lr

    def model(self, hp):
        """The trial's network (no condition check, no seeding)."""
        widths, features, _ = self.values(hp)
        space = self.space
        shape = {"width": widths, "blocks": space.blocks, "features": features}
        if space.inputs == "image":
            shape["block"] = space.block
        head = {"classes": self.classes} if self.outputs is None else {"outputs": self.outputs}
        return build_model("resnet", space.variant, "mlp" if space.inputs == "vector" else None,
                           input_shape=self.input_shape, **head, **shape)

    def trial_seed(self, hp):
        """The seed of a trial: a function of `seed` and the trial's values only."""
        return zlib.crc32(f"{self.seed}:{json.dumps(hp.values, sort_keys=True)}".encode())

    def build(self, hp):
        """The trial's network, its weights seeded by `trial_seed`; a guard refuses (as a failed
        trial) one whose layers violate the condition."""
        keras.utils.set_random_seed(self.trial_seed(hp))
        model = self.model(hp)
        condition = theory.bottleneck_condition(model)
        if not condition and not self.space.allow_violations:
            raise keras_tuner.errors.FailedTrialError(
                f"{model.name} violates the bottleneck condition (margin {condition.margin}); not trained")
        return model

    def fit(self, hp, model, x=None, y=None, *, epochs=1, initial_epoch=0, batch_size=None, validation_split=0.0,
            steps_per_epoch=None, **kwargs):
        """Compile with the recipe's optimizer for `epochs` epochs, then ``model.fit`` with the same arguments.

        The schedule counts the steps `model.fit` will take per epoch; a Hyperband trial
        that resumes at `initial_epoch` starts where the schedule is at that epoch.
        """
        steps = epoch_steps(x, batch_size, validation_split, steps_per_epoch)
        recipe = self.recipe.override(epochs=epochs, learning_rate=hp.values.get("learning_rate"))
        resnest = basis.identity(model).resnest
        recipe = resumed(recipe, resnest, initial_epoch)
        loss = loss_for(model) if self.outputs is None else keras.losses.MeanSquaredError()
        metrics = ["accuracy"] if self.outputs is None else []
        model.compile(optimizer=recipe.optimizer(resnest, steps), loss=loss, metrics=metrics)
        kwargs.setdefault("shuffle", not isinstance(x, tf.data.Dataset))  # a dataset comes in its own order
        return model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
                         validation_split=validation_split, steps_per_epoch=steps_per_epoch, **kwargs)


def resumed(recipe, resnest, initial_epoch):
    """`recipe` as seen from `initial_epoch` on: the optimizer counts its steps from there."""
    if not initial_epoch:
        return recipe
    passed = sum(m <= initial_epoch for m in recipe.milestones)
    return recipe.override(learning_rate=recipe.initial_learning_rate(resnest) * recipe.gamma ** passed,
                           milestones=tuple(m - initial_epoch for m in recipe.milestones if m > initial_epoch),
                           epochs=recipe.epochs - initial_epoch)

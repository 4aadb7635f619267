"""The training recipe of appendix B.3 and the optimizer and schedule it needs.

The paper trains every network as the wide ResNet paper did: cross-entropy, batch
128, 200 epochs, SGD with Nesterov momentum 0.9 and weight decay 5e-4, learning rate
0.1 (0.01 for ResNEsts, which diverge at 0.1 and 0.05) multiplied by 0.2 after
epochs 60, 120 and 160. The reference is PyTorch code, whose SGD differs from
Keras's in two ways that `CoupledSGD` reproduces: the weight decay is *coupled*
(added to the gradient before the momentum), and the momentum buffer holds
gradients, the learning rate being applied after it.

Written with keras.ops, so it serves every backend; ``import nestzoo`` registers the
optimizer and schedule, so a trained ``.keras`` file reloads with them.
"""
import dataclasses
import math

import keras
from keras import ops


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Hyperparameters of a training run; every field can be overridden.

    learning_rate None means the paper's choice: `base_learning_rate`, or
    `resnest_learning_rate` for ResNEsts (eq. 2 without BN on x_L). The learning
    rate is multiplied by `gamma` after each epoch in `milestones`.
    """

    name: str
    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = None
    base_learning_rate: float = 0.1
    resnest_learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple = (60, 120, 160)
    gamma: float = 0.2

    def __post_init__(self):
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        milestones = tuple(self.milestones)
        if any(not isinstance(m, int) or m < 1 for m in milestones) or any(
            a >= b for a, b in zip(milestones, milestones[1:])
        ):
            raise ValueError(
                f"milestones must be strictly increasing epochs >= 1 (e.g. 60, 120, 160), got {milestones!r}"
            )
        object.__setattr__(self, "milestones", milestones)
        for field in ("base_learning_rate", "resnest_learning_rate", "learning_rate", "momentum", "weight_decay",
                      "gamma"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{field} must be a finite number, got {value!r}")
        for field in ("base_learning_rate", "resnest_learning_rate", "learning_rate"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"{field} must be > 0, got {value!r}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or not self.gamma > 0:
            raise ValueError(
                f"need 0 <= momentum < 1, weight_decay >= 0 and gamma > 0; got momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, gamma={self.gamma}"
            )

    def override(self, **changes):
        """A copy with the given fields changed (None values are ignored)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def initial_learning_rate(self, resnest):
        """The learning rate before the first milestone for a (non-)ResNEst."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.resnest_learning_rate if resnest else self.base_learning_rate

    def schedule(self, resnest, steps_per_epoch):
        """The step-wise learning-rate schedule of this recipe."""
        return MultiStepSchedule(self.initial_learning_rate(resnest), steps_per_epoch, self.milestones, self.gamma)

    def optimizer(self, resnest, steps_per_epoch):
        """PyTorch-style SGD with this recipe's momentum, coupled decay and schedule."""
        return CoupledSGD(
            self.schedule(resnest, steps_per_epoch),
            momentum=float(self.momentum),
            nesterov=self.nesterov,
            coupled_weight_decay=self.weight_decay,
        )

    def to_dict(self):
        return dataclasses.asdict(self)


RECIPES = {
    "paper": Recipe("paper"),
    # The paper's recipe shortened for small data (the quickstart on digits).
    "quick": Recipe("quick", epochs=30, milestones=(15, 22, 27)),
}


def get_recipe(recipe="paper", **overrides):
    """A named recipe (or a Recipe) with fields overridden."""
    if isinstance(recipe, Recipe):
        return recipe.override(**overrides)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    return RECIPES[recipe].override(**overrides)


@keras.saving.register_keras_serializable(package="nestzoo")
class MultiStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr * gamma ** (milestones passed), by epoch, as PyTorch's MultiStepLR.

    Step s belongs to epoch s // steps_per_epoch (0-based); "after epoch 60" means
    epochs 60, 61, ... use the reduced rate.
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, milestones, gamma):
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int32"), self.steps_per_epoch)
        passed = sum(ops.cast(ops.greater_equal(epoch, m), "float32") for m in self.milestones)
        return self.initial_learning_rate * ops.power(self.gamma, passed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
        }


@keras.saving.register_keras_serializable(package="nestzoo")
class CoupledSGD(keras.optimizers.SGD):
    """SGD exactly as ``torch.optim.SGD`` (dampening 0) with coupled weight decay.

    g <- g + wd * w;  b <- momentum * b + g;  w <- w - lr * (g + momentum * b) with
    Nesterov momentum, w <- w - lr * b without. The decay acts on every trainable
    variable, as in the reference. (Keras's own ``weight_decay`` is decoupled.)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, coupled_weight_decay=5e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.coupled_weight_decay = coupled_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = ops.add(gradient, ops.multiply(variable, self.coupled_weight_decay))
        step = gradient
        if self.momentum != 0:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
            step = ops.add(gradient, ops.multiply(buffer, self.momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}

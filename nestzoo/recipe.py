"""The training recipe of appendix B.3.

The paper trains every network as the wide ResNet paper did: cross-entropy, batch
128, 200 epochs, SGD with Nesterov momentum 0.9 and weight decay 5e-4, learning rate
0.1 (0.01 for ResNEsts, which diverge at 0.1 and 0.05) multiplied by 0.2 after
epochs 60, 120 and 160. The optimizer and schedule that carry it out, as PyTorch
computes them, are in ``nestzoo.optimizers``. Pure Python (no Keras import), so the
``nestzoo`` command reads the recipes instantly.
"""
import dataclasses
import math

from nestzoo.specs import positive_int


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
            positive_int(field, getattr(self, field))
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
        """A copy with the given fields changed (None values are ignored).

        Changed `epochs` without `milestones` scale the milestones (`scale_milestones`),
        so the learning rate still decays at the same fractions of training.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(self)]}")
        changes = {k: v for k, v in changes.items() if v is not None}
        epochs = changes.get("epochs")
        if "milestones" not in changes and isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1:
            changes["milestones"] = scale_milestones(self.milestones, self.epochs, epochs)
        return dataclasses.replace(self, **changes)

    def initial_learning_rate(self, resnest):
        """The learning rate before the first milestone for a (non-)ResNEst."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.resnest_learning_rate if resnest else self.base_learning_rate

    def schedule(self, resnest, steps_per_epoch):
        """The step-wise learning-rate schedule of this recipe."""
        from nestzoo.optimizers import MultiStepSchedule

        return MultiStepSchedule(self.initial_learning_rate(resnest), steps_per_epoch, self.milestones, self.gamma)

    def optimizer(self, resnest, steps_per_epoch):
        """PyTorch-style SGD with this recipe's momentum, coupled decay and schedule."""
        from nestzoo.optimizers import CoupledSGD

        return CoupledSGD(
            self.schedule(resnest, steps_per_epoch),
            momentum=float(self.momentum),
            nesterov=self.nesterov,
            coupled_weight_decay=self.weight_decay,
        )

    def to_dict(self):
        return dataclasses.asdict(self)


def scale_milestones(milestones, epochs, new_epochs):
    """`milestones` of a run of `epochs` moved to one of `new_epochs`, at the same fractions.

    Each m becomes floor(m * new_epochs / epochs), at least 1; rounding down keeps a
    milestone that falls inside the run inside it. Milestones that land on the same
    epoch are kept once: (15, 22, 27) of 30 epochs is (2, 3, 4) of 5 and (1,) of 2.
    """
    return tuple(dict.fromkeys(max(1, m * new_epochs // epochs) for m in milestones))


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

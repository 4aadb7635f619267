"""The optimizer and schedule of the paper's recipe, as PyTorch computes them.

The reference is PyTorch code, whose SGD differs from Keras's in two ways that
`CoupledSGD` reproduces: the weight decay is *coupled* (added to the gradient before
the momentum), and the momentum buffer holds gradients, the learning rate being
applied after it. `MultiStepSchedule` is PyTorch's MultiStepLR by epoch.

Written with keras.ops, so it serves every backend. Importing this module registers
both classes, so a trained ``.keras`` file reloads with them; the builders,
``Recipe.optimizer``, ``training.evaluate`` and ``nestzoo.export`` import it (a bare
``import nestzoo`` does not: it imports nothing until used).
"""
import keras
from keras import ops


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

"""The paper's recipe with plain ``model.fit``, as in a notebook (no run directory).

    python examples/plain_fit.py            # digits, offline, 30 epochs, about a minute on 2 cores
"""
import keras

import nestzoo
from nestzoo import data, training

recipe = training.get_recipe("quick")  # appendix B.3 over 30 epochs
d = data.load("digits", recipe.batch_size, seed=0)
model = nestzoo.AResNEst(arch="resnet20", input_shape=d.input_shape, classes=d.num_classes)
model.compile(
    optimizer=recipe.optimizer(resnest=False, steps_per_epoch=d.steps_per_epoch),  # coupled decay, schedule
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=["accuracy"],
)
# shuffle=False: d.train shuffles itself (by seed); Keras cannot shuffle a tf.data dataset, and warns if asked
model.fit(d.train, validation_data=d.validation, epochs=recipe.epochs, verbose=2, shuffle=False)
print(f"test accuracy: {model.evaluate(d.test, verbose=0)[1]:.2%}")

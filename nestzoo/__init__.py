"""nestzoo: ResNEsts, BN-ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.

Models of "ResNEsts and DenseNEsts: Block-based DNN Models with Improved
Representation Guarantees" (Chen, Lee, Garudadri and Rao, NeurIPS 2021), with the
pre-activation ResNet as baseline. The builders use keras.layers only and run under
every Keras backend; the TensorFlow-only parts (data pipelines, training, export)
live in their own modules.

Where each box of the paper's figures lives: ``specs`` (what a backbone is),
``registry`` (named architectures, variants and their heads; pure data), ``blocks``
(eq. 1's G_i and W_i, eq. 8's Q_i), ``backbones`` (W_0 and the blocks), ``heads``
(eqs. 2, 4 and 9), ``builders`` (the public builders and ``create_model``), ``model``
(the model that keeps its identity), ``basis`` (its identity and the taps v_i, x_i),
``saving`` (checked model files), ``theory`` (the paper's conditions and bounds on a
trained model).

The package's attributes are imported on first use (PEP 562), so ``import nestzoo``
and the ``nestzoo`` command start without loading Keras and TensorFlow.
"""
import os

from nestzoo._lazy import attach

# Before Keras imports TensorFlow: oneDNN kernels, which TensorFlow leaves off on some
# CPUs (AMD's), train nestzoo's networks about twice as fast there (README, "Speed").
# An explicit TF_ENABLE_ONEDNN_OPTS=0 is respected.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.2.0"

_ATTRIBUTES = {
    "nestzoo.builders": ("AResNEst", "BNResNEst", "DenseNEst", "DenseNet", "ResNEst", "ResNet", "create_model"),
    "nestzoo.basis": ("basis_layers", "basis_model", "identity"),
    "nestzoo.model": ("NestModel",),
    "nestzoo.linalg": ("block_weights", "densenest_to_resnest", "linear_maps", "set_block_weights",
                       "set_linear_maps"),
    "nestzoo.optimizers": ("CoupledSGD", "MultiStepSchedule"),
    "nestzoo.recipe": ("RECIPES", "Recipe", "get_recipe"),
    "nestzoo.registry": ("ARCHS", "HEADS", "list_models"),
    "nestzoo.specs": ("DenseNetSpec", "ResNetSpec", "VectorDenseNetSpec", "VectorResNetSpec"),
    "nestzoo.theory": ("assumption4", "block_risks", "bottleneck_condition", "erlb"),
    "nestzoo.saving": ("load_model",),
    "nestzoo.presets": ("list_presets", "load_preset", "save_preset"),
}
__getattr__, __dir__, __all__ = attach(globals(), _ATTRIBUTES)

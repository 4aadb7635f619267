"""nestzoo: ResNEsts, BN-ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.

Models of "ResNEsts and DenseNEsts: Block-based DNN Models with Improved
Representation Guarantees" (NeurIPS 2021), with the pre-activation ResNet as
baseline. The builders use keras.layers only and run under every Keras backend;
the TensorFlow-only parts (data pipelines, training) live in their own modules.
"""
from nestzoo.basis import basis_layers, basis_model
from nestzoo.models import AResNEst, BNResNEst, ResNEst, ResNet
from nestzoo.registry import create_model, list_models
from nestzoo.specs import ARCHS, ResNetSpec

__version__ = "0.1.0"
__all__ = [
    "ARCHS",
    "AResNEst",
    "BNResNEst",
    "ResNEst",
    "ResNet",
    "ResNetSpec",
    "basis_layers",
    "basis_model",
    "create_model",
    "list_models",
]

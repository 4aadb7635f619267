"""nestzoo: ResNEsts, BN-ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.

Models of "ResNEsts and DenseNEsts: Block-based DNN Models with Improved
Representation Guarantees" (NeurIPS 2021), with the pre-activation ResNet as
baseline. The builders use keras.layers only and run under every Keras backend;
the TensorFlow-only parts (data pipelines, training) live in their own modules.
"""
from nestzoo.basis import basis_layers, basis_model
from nestzoo.linalg import (
    assumption4,
    block_weights,
    bottleneck_condition,
    densenest_to_resnest,
    linear_maps,
    set_block_weights,
    set_linear_maps,
)
from nestzoo.models import AResNEst, BNResNEst, DenseNEst, DenseNet, ResNEst, ResNet
from nestzoo.registry import create_model, list_models
from nestzoo.specs import ARCHS, DenseNetSpec, ResNetSpec, VectorDenseNetSpec, VectorResNetSpec

__version__ = "0.1.0"
__all__ = [
    "ARCHS",
    "AResNEst",
    "BNResNEst",
    "DenseNEst",
    "DenseNet",
    "DenseNetSpec",
    "ResNEst",
    "ResNet",
    "ResNetSpec",
    "VectorDenseNetSpec",
    "VectorResNetSpec",
    "assumption4",
    "basis_layers",
    "basis_model",
    "block_weights",
    "bottleneck_condition",
    "create_model",
    "densenest_to_resnest",
    "linear_maps",
    "list_models",
    "set_block_weights",
    "set_linear_maps",
]

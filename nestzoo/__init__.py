"""nestzoo: ResNEsts, BN-ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.

Models of "ResNEsts and DenseNEsts: Block-based DNN Models with Improved
Representation Guarantees" (NeurIPS 2021), with the pre-activation ResNet as
baseline. The builders use keras.layers only and run under every Keras backend;
the TensorFlow-only parts (data pipelines, training) live in their own modules.
"""
import os

# Before Keras imports TensorFlow: oneDNN kernels, which TensorFlow leaves off on some
# CPUs (AMD's), train nestzoo's networks about twice as fast there (README, "Speed").
# An explicit TF_ENABLE_ONEDNN_OPTS=0 is respected.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
from nestzoo.recipe import RECIPES, CoupledSGD, MultiStepSchedule, Recipe, get_recipe
from nestzoo.registry import create_model, list_models
from nestzoo.specs import ARCHS, DenseNetSpec, ResNetSpec, VectorDenseNetSpec, VectorResNetSpec

__version__ = "0.1.0"
__all__ = [
    "ARCHS",
    "AResNEst",
    "CoupledSGD",
    "BNResNEst",
    "DenseNEst",
    "DenseNet",
    "DenseNetSpec",
    "MultiStepSchedule",
    "RECIPES",
    "Recipe",
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
    "get_recipe",
    "linear_maps",
    "list_models",
    "set_block_weights",
    "set_linear_maps",
]

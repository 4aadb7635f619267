"""Keras layers configured as the paper's PyTorch reference implementation.

Three porting details change results when a PyTorch ResNet is rewritten in Keras
(docs/reference.md, "Porting details"); every layer of nestzoo is made here:

* padding: a k x k convolution pads (k - 1) / 2 pixels on every side, at stride 2
  too (Keras's ``padding="same"`` pads only bottom/right there);
* batch normalization: PyTorch's epsilon 1e-5 and momentum 0.1 (Keras momentum 0.9);
* initialization: PyTorch's defaults, weights and biases uniform in
  +-1/sqrt(fan_in), BN gamma 1 and beta 0.

Images follow Keras's ``keras.config.image_data_format()``, as Keras Applications do:
the convolutions, paddings and poolings take it, and `channel_axis` is the one axis
that batch normalization, concatenation and the width checks use.
"""
import math

import keras
from keras import layers

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras momentum = 1 - PyTorch momentum (0.1)


def torch_uniform():
    """PyTorch's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def channel_axis(x):
    """The channel axis of `x`: 1 for an image under "channels_first", else the last axis."""
    return 1 if len(x.shape) == 4 and keras.config.image_data_format() == "channels_first" else -1


def conv(x, filters, kernel_size, stride=1, name=None):
    """Bias-free convolution with symmetric padding (k - 1) / 2 at every stride."""
    pad = (kernel_size - 1) // 2
    if pad and stride != 1:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=False,
        kernel_initializer=torch_uniform(),
        name=name,
    )(x)


def batch_norm(x, name):
    """Batch normalization with PyTorch's epsilon and momentum."""
    return layers.BatchNormalization(axis=channel_axis(x), epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def linear(x, units, name, activation=None):
    """Dense layer with bias, both initialized as PyTorch's ``nn.Linear``."""
    bound = 1.0 / math.sqrt(x.shape[-1])
    return layers.Dense(
        units,
        activation=activation,
        kernel_initializer=torch_uniform(),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name=name,
    )(x)


def matrix(x, units, name):
    """A pure linear map x -> W x (bias-free Dense, PyTorch's ``nn.Linear(bias=False)`` init)."""
    return layers.Dense(units, use_bias=False, kernel_initializer=torch_uniform(), name=name)(x)

"""Pre-activation residual blocks, eq. (1): x_i = x_{i-1} + W_i G_i(x_{i-1}).

Layer names of block i (i = 1..L, counted over the whole network):
``block{i}_preact_bn``/``_preact_relu`` (the pre-activation), ``block{i}_shortcut``
(1x1 projection, only where the stride or width changes), the layers of G_i
(``_conv1``, ``_bn1``, ...), ``block{i}_features`` (the ReLU whose output is the
feature v_i), ``block{i}_W`` (the linear map W_i) and ``block{i}_x`` (the sum x_i).
"""
from keras import layers

from nestzoo.layers import batch_norm, conv


def basic_features(y, features, stride, name):
    """G_i of a basic block: conv3x3-BN-ReLU."""
    v = conv(y, features, 3, stride, name=f"{name}_conv1")
    v = batch_norm(v, f"{name}_bn1")
    return layers.ReLU(name=f"{name}_features")(v)


def bottleneck_features(y, features, stride, name):
    """G_i of a bottleneck block: conv1x1-BN-ReLU-conv3x3-BN-ReLU."""
    h = conv(y, features, 1, name=f"{name}_conv1")
    h = batch_norm(h, f"{name}_bn1")
    h = layers.ReLU(name=f"{name}_relu1")(h)
    v = conv(h, features, 3, stride, name=f"{name}_conv2")
    v = batch_norm(v, f"{name}_bn2")
    return layers.ReLU(name=f"{name}_features")(v)


# block type -> (G_i, kernel size of W_i)
BLOCKS = {"basic": (basic_features, 3), "bottleneck": (bottleneck_features, 1)}


def residual_block(x, width, features, stride, block, name, residual=True):
    """One pre-activation block; returns (x_i, v_i).

    With ``residual=False`` (the last block of an A-ResNEst, whose W_L is deleted)
    only the feature is built and x_i is None.
    """
    g, w_kernel = BLOCKS[block]
    y = batch_norm(x, f"{name}_preact_bn")
    y = layers.ReLU(name=f"{name}_preact_relu")(y)
    v = g(y, features, stride, name)
    if not residual:
        return None, v
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = conv(y, width, 1, stride, name=f"{name}_shortcut")
    out = conv(v, width, w_kernel, name=f"{name}_W")
    return layers.Add(name=f"{name}_x")([out, shortcut]), v

"""Pre-activation residual blocks, eq. (1): x_i = x_{i-1} + W_i G_i(x_{i-1}).

Layer names of block i (i = 1..L, counted over the whole network):
``block{i}_preact_bn``/``_preact_relu`` (the pre-activation), ``block{i}_shortcut``
(1x1 projection, only where the stride or width changes), the layers of G_i
(``_conv1``, ``_bn1``, ...), ``block{i}_features`` (the ReLU whose output is the
feature v_i), ``block{i}_W`` (the linear map W_i) and ``block{i}_x`` (the sum x_i).

DenseNet layers, eq. (8), keep the names: ``block{i}_preact_bn``/``_preact_relu``,
(DenseNet-B) ``block{i}_conv1``/``_bn1``/``_relu1``, ``block{i}_features`` (the
3x3 convolution, v_i = Q_i(x_{i-1})) and ``block{i}_x`` (the concatenation x_i);
transitions are ``transition{s}_bn``/``_relu``/``_conv``/``_pool``. Vector blocks:
``block{i}_dense{j}``, ``block{i}_features`` (Dense-ReLU, v_i), ``block{i}_W``, ``block{i}_x``.
"""
from keras import layers

from nestzoo.layers import batch_norm, channel_axis, conv, linear, matrix


def basic_features(y, features, stride, name):
    """G_i of a basic block: conv3x3-BN-ReLU."""
    v = conv(y, features, 3, stride, name=f"{name}_conv1")
    v = batch_norm(v, f"{name}_bn1")
    return layers.ReLU(name=f"{name}_features")(v)


def pointwise_features(y, features, stride, name):
    """G_i of a pointwise block (He et al.'s "bottleneck" block): conv1x1-BN-ReLU-conv3x3-BN-ReLU."""
    h = conv(y, features, 1, name=f"{name}_conv1")
    h = batch_norm(h, f"{name}_bn1")
    h = layers.ReLU(name=f"{name}_relu1")(h)
    v = conv(h, features, 3, stride, name=f"{name}_conv2")
    v = batch_norm(v, f"{name}_bn2")
    return layers.ReLU(name=f"{name}_features")(v)


# block type -> (G_i, kernel size of W_i)
BLOCKS = {"basic": (basic_features, 3), "pointwise": (pointwise_features, 1)}


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
    if stride != 1 or x.shape[channel_axis(x)] != width:
        shortcut = conv(y, width, 1, stride, name=f"{name}_shortcut")
    out = conv(v, width, w_kernel, name=f"{name}_W")
    return layers.Add(name=f"{name}_x")([out, shortcut]), v


def dense_features(x, growth, pointwise, name):
    """Q_i of a DenseNet layer: BN-ReLU-conv3x3(k); with `pointwise` (DenseNet-B) BN-ReLU-conv1x1(4k) first.

    The 3x3 convolution, named ``{name}_features``, outputs the feature v_i (no ReLU
    after it: the next layers pre-activate the concatenation).
    """
    y = layers.ReLU(name=f"{name}_preact_relu")(batch_norm(x, f"{name}_preact_bn"))
    if pointwise:
        y = conv(y, 4 * growth, 1, name=f"{name}_conv1")
        y = layers.ReLU(name=f"{name}_relu1")(batch_norm(y, f"{name}_bn1"))
    return conv(y, growth, 3, name=f"{name}_features")


def dense_block(x, v, name):
    """Eq. (8): x_i = concat(x_{i-1}, v_i) with v_i = Q_i(x_{i-1}); returns (x_i, v_i)."""
    return layers.Concatenate(axis=channel_axis(x), name=f"{name}_x")([x, v]), v


def transition(x, channels, name):
    """DenseNet's transition between stages: BN-ReLU-conv1x1-avgpool 2x2."""
    y = layers.ReLU(name=f"{name}_relu")(batch_norm(x, f"{name}_bn"))
    y = conv(y, channels, 1, name=f"{name}_conv")
    return layers.AveragePooling2D(2, name=f"{name}_pool")(y)


def vector_features(x, hidden, features, name):
    """G_i (or Q_i) of a vector block: Dense-ReLU layers ``{name}_dense{j}`` of the
    `hidden` widths, then ``{name}_features``, Dense(features)-ReLU, whose output is v_i."""
    for j, units in enumerate(hidden, 1):
        x = linear(x, units, f"{name}_dense{j}", activation="relu")
    return linear(x, features, f"{name}_features", activation="relu")


def vector_residual_block(x, features, hidden, name, residual=True):
    """Eq. (1) on vectors: x_i = x_{i-1} + W_i G_i(x_{i-1}) with W_i a matrix ``{name}_W``; returns (x_i, v_i)."""
    v = vector_features(x, hidden, features, name)
    if not residual:
        return None, v
    return layers.Add(name=f"{name}_x")([x, matrix(v, x.shape[-1], f"{name}_W")]), v

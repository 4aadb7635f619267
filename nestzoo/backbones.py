"""The backbones: the expansion W_0 and the blocks, shared by every variant of a family.

Each returns x_L (None when the head deletes the last block's W_L) and the features
[v_0, ..., v_L], v_0 = x. Figure 1 (eq. 1) for the ResNet family, eq. (8) for the
DenseNet family; ``arch="mlp"`` gives the same equations on vectors.
"""
from keras import layers

from nestzoo import specs
from nestzoo.blocks import dense_block, dense_features, residual_block, transition, vector_features, vector_residual_block
from nestzoo.layers import conv, matrix


def resnet_backbone(v0, spec, last_residual=True):
    """Eq. (1): x_0 = W_0 x (a 3x3 convolution), x_i = x_{i-1} + W_i G_i(x_{i-1}).

    With ``last_residual=False`` (the A-ResNEst, eq. 4) block L has no W_L and x_L is None.
    """
    x = conv(v0, spec.width[0], 3, name="expansion")
    basis = [v0]
    for i, _, width, features, stride in spec.stage_blocks():
        x, v = residual_block(x, width, features, stride, spec.block, f"block{i}", last_residual or i < spec.num_blocks)
        basis.append(v)
    return x, basis


def densenet_backbone(v0, spec):
    """Eq. (8) within each stage: x_i = concat(x_{i-1}, Q_i(x_{i-1})).

    The paper's DenseNEst has x_0 = x; the stem convolution (named ``expansion``, so
    taps read it as x_0) and the transitions between stages are the CIFAR DenseNet's
    additions, so eq. (8) is exact only within a stage.
    """
    x = conv(v0, spec.stem, 3, name="expansion")
    basis = [v0]
    for i, stage, transition_channels in spec.stage_blocks():
        x, v = dense_block(x, dense_features(x, spec.features, spec.pointwise, f"block{i}"), f"block{i}")
        basis.append(v)
        if transition_channels is not None:
            x = transition(x, transition_channels, f"transition{stage + 1}")
    return x, basis


def vector_resnet_backbone(v0, spec, last_residual=True):
    """Eq. (1) on vectors: x_0 = W_0 x (a matrix), x_i = x_{i-1} + W_i G_i(x_{i-1})."""
    x = matrix(v0, spec.width, "expansion")
    basis = [v0]
    for i in range(1, spec.blocks + 1):
        x, v = vector_residual_block(x, spec.features, spec.hidden, f"block{i}", last_residual or i < spec.blocks)
        basis.append(v)
    return x, basis


def vector_densenet_backbone(v0, spec):
    """Eq. (8) on vectors: x_0 = x, x_i = concat(x_{i-1}, Q_i(x_{i-1}))."""
    x = layers.Identity(name="expansion")(v0)
    basis = [v0]
    for i in range(1, spec.blocks + 1):
        x, v = dense_block(x, vector_features(x, spec.hidden, spec.features, f"block{i}"), f"block{i}")
        basis.append(v)
    return x, basis


def backbone(v0, spec, head):
    """The backbone of `spec`; residual families drop the last W_L for an augmented head."""
    if isinstance(spec, specs.ResNetSpec):
        return resnet_backbone(v0, spec, last_residual=not head.augmented)
    if isinstance(spec, specs.VectorResNetSpec):
        return vector_resnet_backbone(v0, spec, last_residual=not head.augmented)
    if isinstance(spec, specs.DenseNetSpec):
        return densenet_backbone(v0, spec)
    return vector_densenet_backbone(v0, spec)

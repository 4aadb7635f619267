"""The heads: how the final representation reaches the linear predictor.

Eq. (2) (ResNEst): y = W_{L+1} x_L; appendix B.2 (BN-ResNEst): BN on x_L first; the
standard ResNet and DenseNet: BN and ReLU on x_L; eq. (4) (A-ResNEst):
y = sum_i H_i v_i on the pooled features; eq. (9) (DenseNEst): y = W_{L+1} x_L on
the concatenated x_L. Which variant has which head is `nestzoo.registry.HEADS`.

Layer names: ``final_bn``, ``final_relu``, ``avg_pool``, ``logits`` (W_{L+1}, or the
sum of the H_i named ``head{i}`` on ``pool{i}``) and ``predictions`` (the classifier
activation, always float32).
"""
from keras import layers

from nestzoo.layers import batch_norm, linear


def pool(x, pooling, name):
    """Global pooling ("avg" or "max") of an image representation; vectors pass through."""
    if len(x.shape) == 2:
        return x
    kind = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    return kind(name=name)(x)


def representation(x_last, basis, head):
    """What reaches the predictor: [x_L] after the head's BN/ReLU, or v_0..v_L (eq. 4)."""
    if head.augmented:
        return basis
    if head.final_bn:
        x_last = batch_norm(x_last, "final_bn")
    if head.final_relu:
        x_last = layers.ReLU(name="final_relu")(x_last)
    return [x_last]


def predictor(reps, outputs, activation):
    """Linear predictor on the pooled representation: W_{L+1} x_L, eq. (2), or sum_i H_i v_i, eq. (4)."""
    if len(reps) == 1:
        logits = linear(pool(reps[0], "avg", "avg_pool"), outputs, "logits")
    else:
        heads = [linear(pool(v, "avg", f"pool{i}"), outputs, f"head{i}") for i, v in enumerate(reps)]
        logits = layers.Add(name="logits")(heads)
    return layers.Activation(activation, dtype="float32", name="predictions")(logits)


def pooled(reps, pooling):
    """The representation without the top: as is, or pooled (and concatenated for eq. 4)."""
    if pooling is None and len(reps) == 1:
        return reps[0]
    names = [f"pool{i}" for i in range(len(reps))] if len(reps) > 1 else [f"{pooling}_pool"]
    tensors = [pool(r, pooling, name) for r, name in zip(reps, names)]
    return tensors[0] if len(tensors) == 1 else layers.Concatenate(name="pooled_basis")(tensors)


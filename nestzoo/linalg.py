"""The linear algebra of the vector-valued models (``arch="mlp"``), in the paper's terms.

In a vector-valued ResNEst every linear map of eq. (2) is a matrix: the expansion
x_0 = W_0 x, each block's W_i in x_i = x_{i-1} + W_i v_i and the predictor
y = W_{L+1} x_L + b, or an A-ResNEst's y = sum_i H_i v_i + b, eq. (4). Matrices are
given as the paper writes them, of shape (outputs, inputs): the transpose of a Keras
kernel. A DenseNEst's only linear map is W_{L+1}, eq. (9) (x_0 = x, eq. 8). The
layers holding them are found through ``nestzoo.basis``.
"""
import keras
import numpy as np

from nestzoo import basis, registry
from nestzoo.builders import build_model

_array = keras.ops.convert_to_numpy


def _vector_identity(model):
    """The `basis.Identity` of a vector-valued nestzoo model, refusing any other model."""
    identity = basis.identity(model)
    if identity.spec.input_rank != 1:
        raise ValueError(f"model {model.name!r} is not a vector-valued nestzoo model (build one with arch='mlp')")
    return identity


def _predictors(model):
    """The Dense layers of the predictor: W_{L+1}, or an A-ResNEst's H_0..H_L (none without the top)."""
    top = basis.top_layers(model)
    return top["heads"] or [layer for layer in [top.get("logits")] if isinstance(layer, keras.layers.Dense)]


def _map_layers(model):
    """"W0".."W{L+1}", "H0".."HL" -> the Dense layer holding that matrix (those the model has)."""
    L, top = _vector_identity(model).num_blocks, basis.top_layers(model)
    layers = {"W0": basis.expansion(model), **{f"W{i}": basis.block_layers(model, i).get("W") for i in range(1, L + 1)},
              f"W{L + 1}": top.get("logits"), **{f"H{i}": head for i, head in enumerate(top["heads"])}}
    return {key: layer for key, layer in layers.items() if isinstance(layer, keras.layers.Dense)}


def linear_maps(model):
    """The matrices of eq. (2) of a vector-valued model: {"W0": W_0, ..., "W{L+1}": W_{L+1}, "b": b}.

    An A-ResNEst gives "H0".."HL" (eq. 4) in place of W_L and W_{L+1}, and "b" is the
    sum of its heads' biases; a DenseNEst gives only W_{L+1} (eq. 9) and b.
    """
    maps = {key: _array(layer.kernel).T for key, layer in _map_layers(model).items()}
    predictors = _predictors(model)
    if predictors:
        maps["b"] = sum(_array(layer.bias) for layer in predictors)
    return maps


def set_linear_maps(model, maps):
    """Set some of the matrices of `linear_maps` (same keys and shapes); "b" sets the predictor's
    bias (an A-ResNEst's first head takes it, the others get zero)."""
    layers = _map_layers(model)
    for key, value in maps.items():
        targets = _predictors(model) if key == "b" else [layers.get(key)]
        if not targets or targets[0] is None:
            raise ValueError(f"model {model.name!r} has no linear map {key!r}; it has {', '.join(linear_maps(model))}")
        variable = targets[0].bias if key == "b" else targets[0].kernel
        value = np.asarray(value, dtype=variable.dtype)
        expected = tuple(variable.shape)[::-1]
        if value.shape != expected:
            raise ValueError(f"{key} must have shape {expected}, got {value.shape}")
        variable.assign(value.T)
        if key == "b":
            for other in targets[1:]:
                other.bias.assign(np.zeros_like(value))


def _block_layers(model, i):
    """The Dense layers of G_i (or Q_i), input to output."""
    L = _vector_identity(model).num_blocks
    if not 1 <= i <= L:
        raise ValueError(f"model {model.name!r} has no block {i}; blocks are 1..{L}")
    return basis.block_layers(model, i)["dense"]


def block_weights(model, i):
    """The weights of G_i (or Q_i) of block i: a list of (A, c), one per Dense-ReLU layer
    v = ReLU(A u + c), A of shape (outputs, inputs)."""
    return [(_array(layer.kernel).T, _array(layer.bias)) for layer in _block_layers(model, i)]


def set_block_weights(model, i, weights):
    """Set G_i (or Q_i) of block i from a list of (A, c) as `block_weights` returns it."""
    layers = _block_layers(model, i)
    if len(weights) != len(layers):
        raise ValueError(f"block {i} has {len(layers)} Dense layers, got weights for {len(weights)}")
    for layer, (a, c) in zip(layers, weights):
        layer.set_weights([np.asarray(a).T, np.asarray(c)])


def densenest_to_resnest(model):
    """Proposition 4 (proof A.8): the wide ResNEst equal to a vector-valued DenseNEst.

    M = N_in + sum_i D_i; W_i = Pi_i of eq. (41) embeds v_i into its own block of
    coordinates (W_0 = [I; 0]), G_i(x_{i-1}) = Q_i([Pi_0 ... Pi_{i-1}]^T x_{i-1}), eq.
    (42), so G_i's first kernel is Q_i's padded with zeros, and x_L is the DenseNEst's
    x_L, which meets the same head (a DenseNet's BN-ReLU head gives a standard ResNet).
    """
    identity = _vector_identity(model)
    if identity.family != "densenet":
        raise ValueError(f"model {model.name!r} is not a vector-valued DenseNEst (build one with nestzoo.DenseNEst(arch='mlp'))")
    L, spec, top = identity.num_blocks, identity.spec, basis.top_layers(model)
    q = [block_weights(model, i) for i in range(1, L + 1)]
    n_in, dims = model.input.shape[-1], [spec.features] * L
    width = n_in + sum(dims)
    options = {"include_top": "logits" in top}
    if options["include_top"]:
        activation = top["predictions"].get_config()["activation"]
        options.update(classes=top["logits"].units, classifier_activation=activation)
    variant = next(v for v in registry.FAMILY_VARIANTS["resnet"] if registry.HEADS[v] == identity.head)  # the same head
    resnest = build_model(
        "resnet",
        variant,
        registry.VECTOR_ARCH,
        input_shape=(n_in,),
        width=width,
        blocks=L,
        features=spec.features,
        hidden=spec.hidden,
        name=f"{model.name}_as_resnest",
        **options,
    )
    pi = np.split(np.eye(width, dtype="float32"), np.cumsum([n_in] + dims[:-1]), axis=1)  # Pi_0..Pi_L, eq. (41)
    set_linear_maps(resnest, {f"W{i}": pi[i] for i in range(L + 1)})
    for i, weights in enumerate(q, 1):
        (a, c), rest = weights[0], weights[1:]
        set_block_weights(resnest, i, [(np.pad(a, ((0, 0), (0, width - a.shape[1]))), c)] + rest)
    for part, layer in basis.top_layers(resnest).items():
        if part in ("final_bn", "logits"):
            layer.set_weights(top[part].get_weights())
    return resnest

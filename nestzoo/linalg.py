"""The linear algebra of the vector-valued models (``arch="mlp"``), in the paper's terms.

In a vector-valued ResNEst every linear map of eq. (2) is a matrix: the expansion
x_0 = W_0 x (layer ``expansion``), each block's W_i in x_i = x_{i-1} + W_i v_i
(``block{i}_W``) and the predictor y = W_{L+1} x_L + b (``logits``), or an
A-ResNEst's y = sum_i H_i v_i + b, eq. (4) (``head{i}``). Matrices are given as the
paper writes them, of shape (outputs, inputs): the transpose of a Keras kernel.
A DenseNEst's only linear map is W_{L+1}, eq. (9) (x_0 = x, eq. 8).
"""
import re

import keras
import numpy as np

from nestzoo.builders import build_model

_FEATURES = re.compile(r"block(\d+)_features$")
_array = keras.ops.convert_to_numpy


def _num_blocks(model):
    """L of a vector-valued nestzoo model, refusing any other model."""
    names = {layer.name for layer in model.layers}
    blocks = [int(m.group(1)) for m in map(_FEATURES.match, names) if m]
    if "expansion" not in names or not blocks or len(model.input.shape) != 2:
        raise ValueError(f"model {model.name!r} is not a vector-valued nestzoo model (build one with arch='mlp')")
    return max(blocks)


def _map_layers(model):
    """"W0".."W{L+1}", "H0".."HL" -> the Dense layer holding that matrix (those the model has)."""
    L = _num_blocks(model)
    names = {"W0": "expansion", **{f"W{i}": f"block{i}_W" for i in range(1, L + 1)}, f"W{L + 1}": "logits"}
    names.update({f"H{i}": f"head{i}" for i in range(L + 1)})
    found = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Dense)}
    return {key: found[name] for key, name in names.items() if name in found}


def _predictors(layers):
    return [layer for key, layer in layers.items() if layer.name == "logits" or key.startswith("H")]


def linear_maps(model):
    """The matrices of eq. (2) of a vector-valued model: {"W0": W_0, ..., "W{L+1}": W_{L+1}, "b": b}.

    An A-ResNEst gives "H0".."HL" (eq. 4) in place of W_L and W_{L+1}, and "b" is the
    sum of its heads' biases; a DenseNEst gives only W_{L+1} (eq. 9) and b.
    """
    layers = _map_layers(model)
    maps = {key: _array(layer.kernel).T for key, layer in layers.items()}
    predictors = _predictors(layers)
    if predictors:
        maps["b"] = sum(_array(layer.bias) for layer in predictors)
    return maps


def set_linear_maps(model, maps):
    """Set some of the matrices of `linear_maps` (same keys and shapes); "b" sets the predictor's
    bias (an A-ResNEst's first head takes it, the others get zero)."""
    layers = _map_layers(model)
    for key, value in maps.items():
        targets = _predictors(layers) if key == "b" else [layers.get(key)]
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
    """The Dense layers of G_i (or Q_i), input to output: ``block{i}_dense{j}``, ``block{i}_features``."""
    layers = [layer for layer in model.layers if re.fullmatch(rf"block{i}_(dense\d+|features)", layer.name)]
    if not layers:
        raise ValueError(f"model {model.name!r} has no block {i}; blocks are 1..{_num_blocks(model)}")
    return layers


def block_weights(model, i):
    """The weights of G_i (or Q_i) of block i: a list of (A, c), one per Dense-ReLU layer
    v = ReLU(A u + c), A of shape (outputs, inputs)."""
    _num_blocks(model)
    return [(_array(layer.kernel).T, _array(layer.bias)) for layer in _block_layers(model, i)]


def set_block_weights(model, i, weights):
    """Set G_i (or Q_i) of block i from a list of (A, c) as `block_weights` returns it."""
    _num_blocks(model)
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
    L = _num_blocks(model)
    if not isinstance(model.get_layer("expansion"), keras.layers.Identity):
        raise ValueError(f"model {model.name!r} is not a vector-valued DenseNEst (build one with nestzoo.DenseNEst(arch='mlp'))")
    names = {layer.name for layer in model.layers}
    q = [block_weights(model, i) for i in range(1, L + 1)]
    n_in, dims = model.input.shape[-1], [w[-1][0].shape[0] for w in q]
    width = n_in + sum(dims)
    options = {"include_top": "logits" in names}
    if options["include_top"]:
        activation = model.get_layer("predictions").get_config()["activation"]
        options.update(classes=model.get_layer("logits").units, classifier_activation=activation)
    resnest = build_model(
        "resnet",
        "standard" if "final_bn" in names else "resnest",
        "mlp",
        input_shape=(n_in,),
        width=width,
        blocks=L,
        features=dims[0],
        hidden=tuple(a.shape[0] for a, _ in q[0][:-1]),
        name=f"{model.name}_as_resnest",
        **options,
    )
    pi = np.split(np.eye(width, dtype="float32"), np.cumsum([n_in] + dims[:-1]), axis=1)  # Pi_0..Pi_L, eq. (41)
    set_linear_maps(resnest, {f"W{i}": pi[i] for i in range(L + 1)})
    for i, weights in enumerate(q, 1):
        (a, c), rest = weights[0], weights[1:]
        set_block_weights(resnest, i, [(np.pad(a, ((0, 0), (0, width - a.shape[1]))), c)] + rest)
    for name in ("final_bn", "logits"):
        if name in names:
            resnest.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return resnest

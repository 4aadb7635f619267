"""Tapping the basis: the features v_0..v_L and the residual representations x_0..x_L.

Every nestzoo model names its layers so that (Section 2, Figure 2)

* v_0 = x is the output of the ``input`` layer,
* v_i is the output of ``block{i}_features`` (the last ReLU of G_i; in a DenseNet
  the 3x3 convolution of Q_i, eq. 8), i = 1..L,
* x_0 = W_0 x is the output of ``expansion``,
* x_i is the output of ``block{i}_x``, i = 1..L (an A-ResNEst has no x_L).
"""
import re

import keras
from keras import layers

_TAP = re.compile(r"block(\d+)_(features|x)$")


def basis_layers(model):
    """Map "v0".."vL" and "x0".."xL" to the names of the layers that output them."""
    names = {layer.name for layer in model.layers}
    if "input" not in names or "expansion" not in names:
        raise ValueError(f"model {model.name!r} is not a nestzoo model (no 'input'/'expansion' layers)")
    taps = {"v0": "input", "x0": "expansion"}
    for name in names:
        match = _TAP.match(name)
        if match:
            taps[("v" if match.group(2) == "features" else "x") + match.group(1)] = name
    return dict(sorted(taps.items(), key=lambda kv: (kv[0][0], int(kv[0][1:]))))


def basis_model(model, pooled=False):
    """A model with the same input whose outputs are the dict {"v0": ..., "x0": ..., ...}.

    With ``pooled=True`` every image-shaped tap is globally average-pooled, as the
    A-ResNEst's heads H_i see them (appendix B.2).
    """
    taps = basis_layers(model)
    outputs = {}
    for key, layer_name in taps.items():
        tensor = model.get_layer(layer_name).output
        if pooled and len(tensor.shape) == 4:
            tensor = layers.GlobalAveragePooling2D(name=f"pooled_{key}")(tensor)
        outputs[key] = tensor
    return keras.Model(model.input, outputs, name=f"{model.name}_basis")

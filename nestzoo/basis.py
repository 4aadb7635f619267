"""Reading a nestzoo model: its identity, and where the paper's basis lives in it.

The identity (spec, variant, registered arch) is kept with the model itself
(``nestzoo.model.NestModel``: its ``input`` layer's config carries it through
``.keras`` saving, loading and ``keras.models.clone_model``); `identity` reads it.

This module is the only reader of the layer-name contract of ``nestzoo.blocks``,
``nestzoo.backbones`` and ``nestzoo.heads`` (Section 2, Figure 2):

* v_0 = x is the output of the ``input`` layer (``nestzoo.model.NestInput``),
* v_i is the output of ``block{i}_features`` (the last ReLU of G_i; in a DenseNet
  the 3x3 convolution of Q_i, eq. 8), i = 1..L,
* x_0 = W_0 x is the output of ``expansion``,
* x_i is the output of ``block{i}_x``, i = 1..L (an A-ResNEst has no x_L),
* W_i is ``block{i}_W`` and a stage's projection ``block{i}_shortcut``,
* the top: ``final_bn``, ``final_relu``, ``logits`` (W_{L+1}, or the sum of the
  A-ResNEst's heads H_i, ``head{i}``) and ``predictions``.
"""
import dataclasses

import keras
from keras import layers

from nestzoo import registry, specs


class NotNestzooModel(ValueError):
    """A model that nestzoo's builders did not make (or made before identities were kept)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a nestzoo model is: its backbone's spec, its variant and, if registered, its arch.

    arch: the registered arch name ("wrn40-4"), "mlp" for the vector families, or
    None for a custom network.
    """

    spec: object
    variant: str
    arch: str = None

    @property
    def family(self):
        """"resnet" or "densenet" (the spec's family)."""
        return self.spec.family

    @property
    def head(self):
        """The variant's head (`nestzoo.registry.HEADS`)."""
        return registry.HEADS[self.variant]

    @property
    def name(self):
        """The registry name "arch.variant", or None for a custom or vector-valued network."""
        return f"{self.arch}.{self.variant}" if self.arch in registry.ARCHS else None

    @property
    def resnest(self):
        """Whether this is a ResNEst, eq. (2): x_L reaches the predictor with no BN (the learning rate 0.01)."""
        return self.family == "resnet" and self.variant == "resnest"

    @property
    def num_blocks(self):
        """L."""
        return self.spec.num_blocks if hasattr(self.spec, "num_blocks") else self.spec.blocks

    def get_config(self):
        """JSON-ready data: the spec (`nestzoo.specs.spec_config`), the variant and the arch."""
        return {"spec": specs.spec_config(self.spec), "variant": self.variant, "arch": self.arch}

    @classmethod
    def from_config(cls, config):
        """The identity that `get_config` wrote."""
        if config.get("variant") not in registry.HEADS:
            raise ValueError(f"unknown variant {config.get('variant')!r}; valid choices: {', '.join(registry.HEADS)}")
        return cls(specs.spec_from_config(config["spec"]), config["variant"], config.get("arch"))


def identity(model, where=None):
    """The `Identity` a nestzoo model carries; NotNestzooModel (naming `where`) for any other model."""
    found = getattr(model, "identity", None)
    if isinstance(found, Identity):
        return found
    where = where or repr(getattr(model, "name", type(model).__name__))
    raise NotNestzooModel(
        f"{where} is not a nestzoo model: nestzoo reads the spec and variant that its builders keep with the "
        "model (nestzoo.ResNEst and friends, nestzoo.create_model, nestzoo.load_model); a model saved by nestzoo "
        "0.2 or by other code has none: rebuild it with a builder and load its weights (weights=...)")


def is_nestzoo_model(model):
    """Whether `model` carries a nestzoo identity."""
    return isinstance(getattr(model, "identity", None), Identity)


def _layer(model, name):
    return next((layer for layer in model.layers if layer.name == name), None)


def basis_layers(model):
    """Map "v0".."vL" and "x0".."xL" to the names of the layers that output them (those present)."""
    L = identity(model).num_blocks
    taps = {"v0": "input", **{f"v{i}": f"block{i}_features" for i in range(1, L + 1)},
            "x0": "expansion", **{f"x{i}": f"block{i}_x" for i in range(1, L + 1)}}
    names = {layer.name for layer in model.layers}
    return {key: name for key, name in taps.items() if name in names}


def tap(model, key):
    """The layer whose output is the tap `key` ("v0".."vL", "x0".."xL")."""
    taps = basis_layers(model)
    if key not in taps:
        raise ValueError(f"{model.name!r} has no tap {key!r}; it has {', '.join(taps)}")
    return model.get_layer(taps[key])


def block_layers(model, i):
    """The layers of block i that the theory reads: {"features", "W", "shortcut", "x"} (those present)
    and "dense", the Dense layers of a vector block's G_i/Q_i from input to output (its hidden
    ``block{i}_dense{j}`` layers, then ``block{i}_features``)."""
    parts = {part: _layer(model, f"block{i}_{part}") for part in ("features", "W", "shortcut", "x")}
    found = {part: layer for part, layer in parts.items() if layer is not None}
    dense, j = [], 1
    while _layer(model, f"block{i}_dense{j}") is not None:
        dense.append(_layer(model, f"block{i}_dense{j}"))
        j += 1
    if isinstance(found.get("features"), layers.Dense):
        found["dense"] = dense + [found["features"]]
    return found


def expansion(model):
    """The layer x_0 = W_0 x (a DenseNet's stem convolution; an identity in a vector DenseNEst)."""
    return model.get_layer("expansion")


def top_layers(model):
    """The predictor's layers: {"final_bn", "final_relu", "logits", "predictions"} (those present) and
    "heads", the A-ResNEst's H_0..H_L (eq. 4; empty for other variants)."""
    found = {name: _layer(model, name) for name in ("final_bn", "final_relu", "logits", "predictions")}
    found = {name: layer for name, layer in found.items() if layer is not None}
    heads, i = [], 0
    while _layer(model, f"head{i}") is not None:
        heads.append(_layer(model, f"head{i}"))
        i += 1
    found["heads"] = heads
    return found


def basis_model(model, pooled=False):
    """A model with the same input whose outputs are the dict {"v0": ..., "x0": ..., ...}.

    With ``pooled=True`` every image-shaped tap is globally average-pooled, as the
    A-ResNEst's heads H_i see them (appendix B.2).
    """
    taps, outputs = basis_layers(model), {}
    for key, layer_name in taps.items():
        tensor = model.get_layer(layer_name).output
        if pooled and len(tensor.shape) == 4:
            tensor = layers.GlobalAveragePooling2D(model.options["data_format"], name=f"pooled_{key}")(tensor)
        outputs[key] = tensor
    return keras.Model(model.input, outputs, name=f"{model.name}_basis")

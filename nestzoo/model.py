"""The nestzoo model: a functional ``keras.Model`` that keeps what it is and how it was built.

What a network is (its `nestzoo.basis.Identity`: spec, variant, arch) and how its
builder was called (`OPTIONS`) travel inside its graph, as keras-hub's
``Backbone.get_config`` makes a backbone's arguments travel: they are the config of
the layer named ``input`` (`NestInput`, which passes v_0 = x through), so Keras's own
functional config carries them. ``model.save`` and ``keras.saving.load_model``,
``keras.models.clone_model`` (which Keras 3 rebuilds through the constructor from the
cloned layers) and ``from_config`` all keep them. Loading in a new process needs these
classes registered, which ``nestzoo.load_model`` does.
"""
import types

import keras

from nestzoo.basis import Identity

# What a builder records about its call (`NestModel.options`), beside the identity.
OPTIONS = ("input_shape", "classes", "outputs", "include_top", "pooling", "classifier_activation", "dtype_policy",
           "data_format")


def _json(value):
    return [_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (tuple, list)) else value


@keras.saving.register_keras_serializable(package="nestzoo")
class NestInput(keras.layers.Layer):
    """v_0 = x, the layer named ``input``: passes the input through unchanged (no cast) and
    carries the network's `identity` and builder `options` in its config.

    An image whose height or width is known and below the network's downsampling is
    refused here, when the model is called (a fully convolutional ``input_shape``
    such as ``(None, None, 3)`` leaves the size to the call).
    """

    def __init__(self, identity, options, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.identity = identity if isinstance(identity, Identity) else Identity.from_config(identity)
        missing = sorted(set(OPTIONS) - set(options))
        if missing:
            raise ValueError(f"nestzoo model options lack {', '.join(missing)}")
        self._options = types.MappingProxyType({key: _tuple(options[key]) for key in OPTIONS})

    @property
    def options(self):
        """How the builder was called: {name: value} for each of `OPTIONS`."""
        return dict(self._options)

    def call(self, inputs):
        least = self.identity.spec.downsampling
        if least > 1 and len(inputs.shape) == 4:
            spatial = inputs.shape[2:] if self._options["data_format"] == "channels_first" else inputs.shape[1:3]
            if any(isinstance(size, int) and size < least for size in spatial):  # known sizes only
                raise ValueError(f"input {spatial[0]}x{spatial[1]} is too small: this network downsamples by "
                                 f"{least}, so height and width must be at least {least}")
        return inputs

    def get_config(self):
        return {**super().get_config(), "identity": self.identity.get_config(),
                "options": {key: _json(value) for key, value in self._options.items()}}


@keras.saving.register_keras_serializable(package="nestzoo")
class NestModel(keras.Model):
    """A functional model of a nestzoo network (Keras's arguments: ``inputs, outputs, name``),
    built by `nestzoo.builders`. Its graph holds one `NestInput`, whose identity and options
    it shows."""

    def __init__(self, inputs, outputs, name=None, **kwargs):
        super().__init__(inputs, outputs, name=name, **kwargs)
        found = [layer for layer in self.layers if isinstance(layer, NestInput)]
        if len(found) != 1:
            raise ValueError(f"a NestModel's graph holds one NestInput layer (v_0); {self.name!r} holds {len(found)}")
        self._nest_input = found[0]

    @property
    def identity(self):
        """What this network is: `nestzoo.basis.Identity` (spec, variant, arch)."""
        return self._nest_input.identity

    @property
    def options(self):
        """How the builder was called: {name: value} for each of `OPTIONS` (input_shape, classes,
        outputs, include_top, pooling, classifier_activation, the dtype policy's name and the
        image data format)."""
        return self._nest_input.options

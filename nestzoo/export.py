"""SavedModel export for serving with TensorFlow Serving (TensorFlow only).

The artifact holds the forward pass alone (no nestzoo code needed to serve it) under
the endpoint ``serve`` and the signature ``serving_default``. With ``dataset`` the
standardization of `nestzoo.data` (the training set's per-channel mean and std) is
built in, so clients send uint8 images as the data set stores them.
"""
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nestzoo import data, optimizers  # noqa: F401  (optimizers registers nestzoo's optimizer and schedule for .keras files)


def export_saved_model(model, directory, *, dataset=None, overwrite=False):
    """Write `model` (a keras.Model or a .keras file) as a SavedModel in `directory`.

    dataset: None (the endpoint takes standardized float32 images, as the model
        does) or a name of `nestzoo.data.DATASETS` (it takes uint8 images and
        standardizes them with that data set's constants).
    overwrite: replace an existing non-empty directory instead of refusing it.
    Returns the directory. TF Serving expects ``<model name>/<version>/``, e.g.
    ``saved_models/resnet20_a-resnest/1``.
    """
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise ValueError(f"{model!r} is not a .keras file")
        model = keras.models.load_model(model, compile=False)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ValueError(f"{directory} is not empty; choose another directory or pass overwrite=True (--overwrite)")
    archive = keras.export.ExportArchive()
    archive.track(model)
    shape = tuple(model.input.shape[1:])
    if dataset is None:
        archive.add_endpoint("serve", model.call, input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    else:
        spec = data.get_spec(dataset)
        if shape != spec.input_shape:
            raise ValueError(f"the model takes {shape} inputs, {dataset} images are {spec.input_shape}")
        mean = tf.constant(np.asarray(spec.mean, "float32"))
        std = tf.constant(np.asarray(spec.std, "float32"))

        def serve(images):
            return model.call((tf.cast(images, tf.float32) / 255.0 - mean) / std, training=False)

        archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec((None, *shape), tf.uint8)])
    archive.write_out(str(directory), verbose=False)
    return directory

"""Model files, checked: ``.keras`` models and ``.weights.h5`` weights.

Importing this module registers what a nestzoo ``.keras`` file names
(``nestzoo.model.NestModel``, ``nestzoo.optimizers.CoupledSGD`` and its schedule), so
`load_model` reads a run's ``model.keras`` in a fresh process.
"""
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from nestzoo import model as _model, optimizers as _optimizers  # noqa: F401  (registered for .keras files)


def load_model(path, compile=True):
    """Load a .keras file, refusing a missing, truncated or garbage file and non-finite weights by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras model file (a .keras file is a zip archive): it is truncated, "
                         "damaged, or of another format; save it again or use another copy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds for a damaged archive
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it is damaged or was written "
                         "by an incompatible version: save it again or use another copy") from None
    check_finite(model, str(path))
    return model


def check_finite(model, where):
    """Refuse a model holding NaN or infinite weights (a diverged run's, or a damaged file's)."""
    for weight in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(weight)).all():
            raise ValueError(f"{where} holds non-finite weights (NaN or infinity in {weight.path}): it was saved "
                             "from a diverged run or is damaged; do not use it. Train again, or use the run's "
                             "best.weights.h5")


def load_weights(model, weights):
    """Load a ``.weights.h5`` file, refusing one whose variables do not fit the architecture.

    Keras loads mismatched files with warnings only, so the shapes of the model
    variables stored (not the optimizer's, which a trainer's files also hold) are
    compared with the model's first.
    """
    stored = []
    with h5py.File(weights, "r") as f:
        for group in ("layers", "vars"):
            if group in f:
                f[group].visititems(lambda _, obj: stored.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    expected = [tuple(w.shape) for w in model.weights]
    if sorted(stored) != sorted(expected):
        raise ValueError(
            f"weights file {weights!r} does not fit {model.name}: it holds {len(stored)} model variables, "
            f"the architecture has {len(expected)}" + ("" if len(stored) != len(expected) else " of other shapes")
        )
    model.load_weights(weights)

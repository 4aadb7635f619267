"""Predictions of an export (or a .keras model) on image files, folders or .npy arrays (TensorFlow only).

    from nestzoo.predict import Predictor, read_inputs
    predictor = Predictor("saved_models/resnet20_a-resnest")      # the latest version
    names, batch = read_inputs(["digit.png", "more/"], predictor)
    rows = predictor.top_k(batch, names, k=3)

Inputs are checked against the serving signature before anything is run:

* PNG and JPEG files are converted to the model's channels (grayscale or RGB) but
  never resized: an image of another size is refused, since resampling would change
  what the model sees (resize it yourself if that is what you want);
* ``.npy`` arrays hold a batch: (N, H, W, C), or (N, H, W) for one channel; the
  vector models' arrays are (N, N_in) floats;
* images must be uint8 on 0..255 as the data set stores them: float arrays are
  refused, and so are images whose largest value is below `MIN_IMAGE_MAX` (32), the
  mark of a wrong scale such as scikit-learn's 0..16 digits or 0..1 floats.
"""
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from nestzoo import export

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: An image whose brightest pixel is below this is taken as wrongly scaled (0..16, 0..1).
MIN_IMAGE_MAX = 32
BATCH = 256


class Predictor:
    """The serving function of an export directory (a version, or saved_models/<name>: its latest) or a .keras file."""

    def __init__(self, path, dataset=None):
        path = Path(path)
        if path.is_dir() and not (path / "model.keras").is_file():
            self.path = export.latest_version(path)
            loaded = tf.saved_model.load(str(self.path))
            if "serving_default" not in loaded.signatures:
                raise ValueError(f"{str(self.path)!r} has no serving_default signature")
            function = loaded.signatures["serving_default"]
            (self.input_name, spec), = function.structured_input_signature[1].items()
            self.metadata = export.read_metadata(self.path) or {}
            self._loaded = loaded
            self._call = lambda x: function(**{self.input_name: tf.constant(x)})
        else:
            source = export.load_source(path)
            export.check_nestzoo_model(source.model, repr(str(path)))
            dataset = export._dataset_of(source, dataset)
            module = export.serving_module(source.model, dataset=dataset)
            spec = module.serve.input_signature[0]
            self.path, self.input_name = path, spec.name
            self.metadata = export._metadata(source, module, dataset, True, False)
            self._call = lambda x: module.serve(tf.constant(x))
        self.shape, self.dtype = tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype
        self.is_image = len(self.shape) == 3

    def __call__(self, batch):
        """{output name: numpy array} of a checked batch, run in chunks of BATCH."""
        parts = [{k: v.numpy() for k, v in self._call(batch[i:i + BATCH]).items()}
                 for i in range(0, len(batch), BATCH)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def expected(self):
        return f"{np.dtype(self.dtype).name} (N, {', '.join(map(str, self.shape))})"

    def top_k(self, batch, names, k=3):
        """One dict per input: its name and the k most probable classes (or the regression outputs)."""
        out = self(batch)
        class_names = self.metadata.get("class_names")
        rows = []
        for i, name in enumerate(names):
            if "probabilities" not in out:
                rows.append({"input": name, "predictions": out["predictions"][i].tolist()})
                continue
            p = out["probabilities"][i]
            best = np.argsort(-p, kind="stable")[:k]
            rows.append({"input": name, "top": [
                {"class_id": int(c), "class_name": class_names[c] if class_names else None,
                 "probability": float(p[c])} for c in best]})
        return rows


def _read_image(path, predictor):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = "L" if predictor.shape[-1] == 1 else "RGB"
            pixels = np.asarray(image.convert(mode), np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{str(path)!r} is not an image: expected a PNG or JPEG file ({error})") from error
    pixels = pixels.reshape(pixels.shape[:2] + (-1,))
    height, width = predictor.shape[:2]
    if pixels.shape[:2] != (height, width):
        raise ValueError(f"{str(path)!r} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes "
                         f"{width}x{height} images. nestzoo predict does not resize (resampling changes what the "
                         "model sees): resize or crop it first")
    return pixels


def _read_npy(path, predictor):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a .npy array: {error}") from error
    shape, given = predictor.shape, array.shape
    if predictor.is_image and array.ndim == 3 and shape[-1] == 1:
        array = array[..., None]  # (N, H, W) grayscale
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        also = f" or (N, {shape[0]}, {shape[1]})" if predictor.is_image and shape[-1] == 1 else ""
        raise ValueError(f"{str(path)!r} holds an array of shape {given} "
                         f"(rank {len(given)}); the model takes a batch (N, {', '.join(map(str, shape))})"
                         f"{also}")
    return array


def _check_images(array, name):
    """uint8 on 0..255: integers in range are accepted as uint8, floats and dark-scaled images refused."""
    if np.issubdtype(array.dtype, np.floating) or not np.issubdtype(array.dtype, np.integer):
        low, high = (float(array.min()), float(array.max())) if array.size and np.issubdtype(
            array.dtype, np.number) else (None, None)
        raise ValueError(
            f"{name}: got {array.dtype} values" + (f" in [{low:g}, {high:g}]" if low is not None else "")
            + "; expected uint8 images with values 0..255, as the data set stores them (float inputs are refused, "
            "not cast). For scikit-learn's digits (0..16): np.round(images * 255 / 16).astype(np.uint8)")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{name}: values in [{array.min()}, {array.max()}]; expected uint8 images on 0..255")
    return array.astype(np.uint8)


def _check_domain(batch, names):
    for image, name in zip(batch, names):
        if int(image.max()) < MIN_IMAGE_MAX:
            raise ValueError(
                f"{name}: the largest pixel value is {int(image.max())}; the model expects uint8 images on 0..255 "
                f"(a brightest pixel below {MIN_IMAGE_MAX} means another scale, such as scikit-learn's 0..16 "
                "digits, which nestzoo rescales by 255/16). Rescale it, or pass --no-range-check if the image "
                "really is that dark")


def read_inputs(paths, predictor, range_check=True):
    """(names, batch) of PNG/JPEG files, folders of them and .npy arrays, checked against the model's input."""
    names, items = [], []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"folder {str(path)!r} holds no PNG or JPEG files")
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"{str(path)!r} does not exist")
        for file in files:
            if file.suffix.lower() == ".npy":
                array = _read_npy(file, predictor)
                if predictor.is_image:
                    array = _check_images(array, repr(str(file)))
                names += [f"{file}[{i}]" for i in range(len(array))]
                items.append(array)
            elif not predictor.is_image:
                raise ValueError(f"{str(file)!r}: the model takes vectors of {predictor.shape[0]} features; "
                                 f"give a .npy array of shape (N, {predictor.shape[0]})")
            else:
                names.append(str(file))
                items.append(_read_image(file, predictor)[None])
    batch = np.concatenate(items) if items else np.zeros((0, *predictor.shape), predictor.dtype)
    if predictor.is_image and range_check:
        _check_domain(batch, names)
    return names, batch.astype(predictor.dtype)


def format_rows(rows, as_json=False):
    """The text (or JSON) that `nestzoo predict` prints."""
    if as_json:
        return json.dumps(rows, indent=1)
    lines = []
    for row in rows:
        if "top" in row:
            best = ", ".join(f"{c['class_name'] if c['class_name'] is not None else c['class_id']} "
                             f"{100 * c['probability']:.1f}%" for c in row["top"])
        else:
            best = "predictions " + ", ".join(f"{v:.4g}" for v in row["predictions"])
        lines.append(f"{row['input']}: {best}")
    return "\n".join(lines)

"""Predictions of an export (SavedModel, ONNX, LiteRT) or a .keras model on image files, folders or .npy arrays.

    from nestzoo.predict import Predictor, read_inputs
    predictor = Predictor("saved_models/resnet20_a-resnest")      # the latest version
    names, batch = read_inputs(["digit.png", "more/"], predictor)
    rows = predictor.top_k(batch, names, k=3)

Inputs are checked against the serving signature before anything is run:

* PNG and JPEG files are converted to the model's channels (grayscale or RGB) but
  never resized: an image of another size is refused, since resampling would change
  what the model sees (resize it yourself if that is what you want). 16-bit grayscale
  PNGs are scaled to 0..255 (x * 255 / 65535, rounded; PIL reads 16-bit color PNGs as
  8-bit itself); images of more than PIL's decompression-bomb limit
  (`Image.MAX_IMAGE_PIXELS`, 89,478,485 pixels) are refused;
* ``.npy`` arrays hold a non-empty batch: (N, H, W, C), or (N, H, W) for one channel;
  the vector models' arrays are (N, N_in) floats;
* images must be uint8 on 0..255 as the data set stores them: float arrays are
  refused, and so are images whose largest value is below `MIN_IMAGE_MAX` (32), the
  mark of a wrong scale such as scikit-learn's 0..16 digits or 0..1 floats;
* a model built for any image size takes images of any size, one size per batch.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from nestzoo import export

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: An image whose brightest pixel is below this is taken as wrongly scaled (0..16, 0..1).
MIN_IMAGE_MAX = 32
BATCH = 256
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class Predictor:
    """The serving function of an export directory (a version, or saved_models/<name>: its latest) or a .keras file.

    A version holding model.onnx runs in onnxruntime, one holding model.tflite in the
    ai_edge_litert interpreter, a SavedModel in TensorFlow (`format` says which).
    """

    def __init__(self, path, dataset=None):
        path = Path(path)
        version = export.latest_version(path) if path.is_dir() and not (path / "model.keras").is_file() else None
        self.format = export.export_format(version) if version else "keras"
        if self.format in ("onnx", "litert"):
            from nestzoo.runtimes import FILES, Runtime

            self.path, runtime = version, Runtime(version / FILES[self.format])
            self.metadata = export.read_metadata(version) or {}
            self.input_name = runtime.input_name
            self._call = runtime
            self.shape, self.dtype = runtime.shape, np.uint8
            self.is_image = len(self.shape) == 3
            return
        if version:
            self.path, loaded = export.load_export(path)
            if "serving_default" not in loaded.signatures:
                raise ValueError(f"{str(self.path)!r} has no serving_default signature")
            function = loaded.signatures["serving_default"]
            (self.input_name, spec), = function.structured_input_signature[1].items()
            self.metadata = export.read_metadata(self.path) or {}
            self._loaded = loaded
            self._call = lambda x: function(**{self.input_name: tf.constant(x)})
        elif path.exists():
            module = export.serving_module(path, dataset=dataset)
            spec = module.serve.input_signature[0]
            self.path, self.input_name = path, spec.name
            self.metadata = export.metadata(module)
            self._call = lambda x: module.serve(tf.constant(x))
        else:
            raise ValueError(f"{str(path)!r} does not exist: expected {export.EXPORT_DIRECTORY} or a .keras file")
        self.shape, self.dtype = tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype
        self.is_image = len(self.shape) == 3

    def __call__(self, batch):
        """{output name: numpy array} of a checked, non-empty batch, run in chunks of BATCH."""
        if not len(batch):
            raise ValueError("the batch is empty: give at least one input")
        parts = [{k: np.asarray(v) for k, v in self._call(batch[i:i + BATCH]).items()}
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


def _check_size(path, width, height, predictor):
    """Refuse an image whose size is not the model's (a None size takes any)."""
    wanted_height, wanted_width = predictor.shape[:2]
    if wanted_height not in (None, height) or wanted_width not in (None, width):
        raise ValueError(f"{str(path)!r} is {width}x{height} pixels; the model takes "
                         f"{wanted_width}x{wanted_height} images. nestzoo predict does not resize (resampling "
                         "changes what the model sees): resize or crop it first")


def _eight_bit(path, image, channels):
    """The pixels of a loaded PIL image as uint8 (H, W, channels); 16-bit grayscale is scaled to 0..255."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.round(np.asarray(image, np.float64) * (255 / 65535)).astype(np.uint8)
        return np.repeat(pixels[..., None], channels, axis=-1)
    if image.mode in ("I", "F"):  # 32-bit integers or floats: no known scale
        raise ValueError(f"{str(path)!r} holds 32-bit {'integer' if image.mode == 'I' else 'float'} pixels "
                         f"(PIL mode {image.mode}), whose scale to 0..255 is unknown; save it as an 8- or "
                         "16-bit PNG")
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.uint8)
    return pixels.reshape(pixels.shape[:2] + (-1,))


def _read_image(path, predictor):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(path, *image.size, predictor)  # before decoding any pixel
                image.load()
                return _eight_bit(path, image, predictor.shape[-1])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{str(path)!r} is too large: nestzoo predict reads images of at most "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels (PIL's decompression-bomb limit; "
                         f"{str(error).split(',')[0]}); the model takes "
                         f"{'x'.join(str(size or 'any') for size in predictor.shape[1::-1])} images") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{str(path)!r} is not an image: expected a PNG or JPEG file ({error})") from error


def _matches(shape, expected):
    return len(shape) == len(expected) and all(size in (None, got) for size, got in zip(expected, shape))


def _read_npy(path, predictor):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a .npy array: {error}") from error
    shape, given = predictor.shape, array.shape
    if predictor.is_image and array.ndim == 3 and shape[-1] == 1:
        array = array[..., None]  # (N, H, W) grayscale
    described = ", ".join(map(str, shape))
    if not _matches(array.shape[1:], shape):
        also = f" or (N, {shape[0]}, {shape[1]})" if predictor.is_image and shape[-1] == 1 else ""
        raise ValueError(f"{str(path)!r} holds an array of shape {given} "
                         f"(rank {len(given)}); the model takes a batch (N, {described}){also}")
    if not len(array):
        raise ValueError(f"{str(path)!r} holds an empty batch of shape {given}; give at least one input "
                         f"(N >= 1, shape (N, {described}))")
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
    if not items:
        raise ValueError("no inputs given: expected PNG or JPEG files, folders of them or .npy arrays")
    sizes = sorted({item.shape[1:] for item in items})
    if len(sizes) > 1:
        raise ValueError(f"the inputs have {len(sizes)} sizes ({', '.join(map(str, sizes))}); the model takes "
                         "any size, but one batch holds one: predict each size separately")
    batch = np.concatenate(items)
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

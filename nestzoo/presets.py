"""Presets: trained weights by name, with their provenance (keras-hub's presets, Keras Applications' ``weights=``).

A preset is a directory of three files:

* ``config.json``: {"format": "nestzoo-preset", "format_version": 1, "name" (the
  registry name "arch.variant"), "arch", "variant", "spec" (the spec's config),
  "classes", "input_shape", "parameters", "nestzoo_version"};
* ``model.weights.h5``: the model's weights (``model.save_weights``);
* ``metadata.json``: the data set (with its standardization mean/std and class
  names), the seed, the source ({"kind": "reference", "path", "sha256"} for a
  converted reference checkpoint, {"kind": "run", "run_dir"} for a published run),
  optional "test_accuracy" (percent, measured by nestzoo), "published_accuracy"
  (percent: the paper's table cell), "recipe", "fixed_batch" (the model's logits on a
  fixed batch, written by ``nestzoo convert``) and "weights_sha256".

Installed presets live at `preset_dir`: ``$NESTZOO_HOME/presets/<arch.variant>/<dataset>-seed<s>``
(NESTZOO_HOME defaults to ``~/.nestzoo``). `resolve` turns what a builder's
``weights=`` takes (a data set name such as "cifar10" or "cifar10:seed3", a preset
directory, an ``https://...zip#sha256=<hex>`` URL of a zipped preset, or a
``.weights.h5`` path) into a checked file to load, before the model is built.
"""
import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import zipfile
from pathlib import Path

FORMAT = "nestzoo-preset"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, METADATA = "config.json", "model.weights.h5", "metadata.json"
SOURCE_KINDS = ("reference", "run")
REFERENCE_DOWNLOAD = ("download the reference implementation's trained checkpoints (the Google Drive folder linked "
                      "from its README) and run `nestzoo convert <path/to/checkpoint>`")
_DATASET_WEIGHTS = re.compile(r"([a-z][a-z0-9_-]*)(?::seed(\d+))?")


class PresetError(ValueError):
    """A preset that is missing, damaged, or does not fit the model asked for."""


def nestzoo_home(home=None):
    """nestzoo's folder: `home`, else ``$NESTZOO_HOME``, else ``~/.nestzoo``."""
    return Path(home or os.environ.get("NESTZOO_HOME") or "~/.nestzoo").expanduser()


def preset_dir(model_name, dataset, seed=0, home=None):
    """Where the preset of `model_name` ("arch.variant", typed spellings accepted) trained on
    `dataset` with `seed` is installed: ``<home>/presets/<arch.variant>/<dataset>-seed<seed>``."""
    from nestzoo import registry

    _, arch, variant = registry.parse_name(model_name)
    return nestzoo_home(home) / "presets" / f"{arch}.{variant}" / f"{dataset}-seed{int(seed)}"


def sha256(path):
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_metadata(metadata):
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    missing = [key for key in ("dataset", "seed", "source") if key not in metadata]
    if missing:
        raise ValueError(f"preset metadata needs {', '.join(missing)} (given: {', '.join(metadata) or 'nothing'})")
    source = metadata["source"]
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise ValueError(f"preset metadata's source must be a dict with kind one of {SOURCE_KINDS}; got {source!r}")
    if isinstance(metadata["seed"], bool) or not isinstance(metadata["seed"], int):
        raise ValueError(f"preset metadata's seed must be an int, got {metadata['seed']!r}")


def save_preset(model, directory, metadata):
    """Write `model` (a registered nestzoo model with its top) as a preset in `directory`; returns its Path.

    metadata: {"dataset", "seed", "source", and optionally "test_accuracy",
    "published_accuracy", "recipe", "fixed_batch"} (see the module's docstring); the
    data set's standardization and class names and the weights' sha256 are added.
    The preset is written in a temporary folder beside `directory` and renamed into
    place, so a reader or a kill never sees a partial preset; an existing `directory`
    is refused (remove it first).
    """
    import nestzoo
    from nestzoo.basis import identity as identity_of
    from nestzoo.data.catalog import DATASETS
    from nestzoo.export import class_names
    from nestzoo.saving import check_finite
    from nestzoo.specs import spec_config

    identity = identity_of(model)
    if identity.name is None:
        raise ValueError("a preset holds a registered architecture (nestzoo.list_models()); this model is a custom "
                         "or vector-valued network: save it with model.save instead")
    options = model.options
    if not options["include_top"] or options["classes"] is None:
        raise ValueError("a preset holds a classifier with its top (include_top=True, classes=...)")
    _check_metadata(metadata)
    check_finite(model, "the model")
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"{directory} exists already; remove it to write a preset there")
    meta = json.loads(json.dumps(metadata))  # a JSON-ready copy, refusing what JSON cannot hold
    dataset = DATASETS.get(meta["dataset"])
    if dataset is not None:
        meta.setdefault("standardization", {"mean": list(dataset.mean), "std": list(dataset.std)})
        if dataset.num_classes != options["classes"]:
            raise ValueError(f"{meta['dataset']} has {dataset.num_classes} classes; the model has {options['classes']}")
    meta.setdefault("class_names", class_names(meta["dataset"]))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": identity.name, "arch": identity.arch,
              "variant": identity.variant, "spec": spec_config(identity.spec), "classes": options["classes"],
              "input_shape": list(options["input_shape"]), "parameters": int(model.count_params()),
              "nestzoo_version": nestzoo.__version__}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        model.save_weights(tmp / WEIGHTS)
        meta["weights_sha256"] = sha256(tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, directory)  # atomic; fails if another writer got there first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _read_json(path, what):
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise PresetError(f"{path} cannot be read as JSON ({type(error).__name__}): the preset is damaged; "
                          "write it again (nestzoo convert / nestzoo publish) or use another copy") from None
    if not isinstance(value, dict):
        raise PresetError(f"{path} is not a JSON object: the preset is damaged")
    return value


def is_preset(path):
    """Whether `path` is a preset directory: its config.json beside a preset's metadata.json or
    weights file (a run directory holds a config.json too, but neither of those, and a finished
    one holds model.keras). A damaged preset is still one, and `read_preset` names what is wrong."""
    path = Path(path)
    return (path.is_dir() and (path / CONFIG).is_file() and not (path / "model.keras").exists()
            and any((path / name).exists() for name in (METADATA, WEIGHTS)))


def read_preset(directory, verify=True):
    """(config, metadata) of the preset in `directory`, checked: its format, its files and
    (with `verify`) its weights' sha256. A PresetError says what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PresetError(f"{directory} is not a preset directory (it does not exist)")
    missing = [name for name in (CONFIG, WEIGHTS, METADATA) if not (directory / name).is_file()]
    if missing:
        raise PresetError(f"{directory} is not a complete preset: it lacks {', '.join(missing)} "
                          f"(a preset holds {CONFIG}, {WEIGHTS} and {METADATA})")
    config = _read_json(directory / CONFIG, "config")
    if config.get("format") != FORMAT:
        raise PresetError(f"{directory / CONFIG} is not a nestzoo preset's config (format {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise PresetError(f"{directory} is a preset of format version {config.get('format_version')!r}; this "
                          f"nestzoo reads version {FORMAT_VERSION}: upgrade nestzoo or write the preset again")
    metadata = _read_json(directory / METADATA, "metadata")
    if verify:
        import h5py

        if not h5py.is_hdf5(directory / WEIGHTS):
            raise PresetError(f"{directory / WEIGHTS} is not an HDF5 weights file: the preset is damaged; nothing "
                              "was loaded. Write the preset again or use another copy")
        expected, found = metadata.get("weights_sha256"), sha256(directory / WEIGHTS)
        if expected != found:
            raise PresetError(f"{directory / WEIGHTS} is damaged or was replaced: its sha256 is {found}, the preset "
                              f"records {expected}; nothing was loaded. Write the preset again or use another copy")
    return config, metadata


def describe(config, metadata):
    """One line: what a preset holds (name, classes, data set, seed)."""
    return (f"{config.get('name')} with {config.get('classes')} classes, trained on {metadata.get('dataset')} "
            f"(seed {metadata.get('seed')})")


def check_fits(directory, config, metadata, name, classes):
    """Refuse a preset whose arch.variant or class count is not `name` / `classes`, saying what it holds."""
    if config.get("name") != name or (classes is not None and config.get("classes") != classes):
        wanted = f"{name}" + (f" with {classes} classes" if classes is not None else "")
        raise PresetError(f"the preset {directory} holds {describe(config, metadata)}; the model asked for is "
                          f"{wanted}: build that model, or use a preset of {wanted}")


def _installed(home=None):
    root = nestzoo_home(home) / "presets"
    found = root.glob(f"*/*/{CONFIG}") if root.is_dir() else []
    return sorted(p.parent for p in found if not p.parent.name.startswith("."))  # not a preset being written


def fetch(url):
    """A zipped preset at `url` (``https://...zip#sha256=<hex>``), downloaded once with
    ``keras.utils.get_file`` into ``$NESTZOO_HOME/cache`` and verified against that sha256,
    then unpacked once; returns the preset directory."""
    import keras

    parsed = urllib.parse.urlsplit(url)
    fragment = urllib.parse.parse_qs(parsed.fragment)
    digest = (fragment.get("sha256") or [None])[0]
    if not digest or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise PresetError(f"a preset URL carries the zip's sha256: {parsed._replace(fragment='').geturl()}"
                          "#sha256=<64 hex digits> (compute it with `sha256sum preset.zip`); got "
                          f"{url!r}")
    digest = digest.lower()
    origin = parsed._replace(fragment="").geturl()
    name = os.path.basename(parsed.path) or "preset.zip"
    cache = nestzoo_home() / "cache"
    unpacked = cache / "presets" / digest
    if is_preset(unpacked):
        return unpacked
    try:
        archive = keras.utils.get_file(fname=f"{digest[:16]}-{name}", origin=origin, file_hash=digest,
                                       hash_algorithm="sha256", cache_dir=str(cache), cache_subdir="downloads")
    except ValueError as error:
        Path(cache, "downloads", f"{digest[:16]}-{name}").unlink(missing_ok=True)  # get_file leaves it behind
        raise PresetError(f"the preset downloaded from {origin} does not match its sha256 {digest}: {error}; "
                          "nothing was loaded") from None
    except Exception as error:  # noqa: BLE001 - get_file raises a bare Exception for a failed fetch
        raise PresetError(f"the preset at {origin} could not be downloaded: {error}") from None
    if not zipfile.is_zipfile(archive):
        raise PresetError(f"{origin} is not a zip archive; a preset URL names a zipped preset directory")
    unpacked.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", dir=unpacked.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                target = (tmp / member).resolve()
                if not str(target).startswith(str(tmp.resolve())):
                    raise PresetError(f"{origin} holds a path outside the archive ({member!r}); refused")
            zipped.extractall(tmp)
        found = [p.parent for p in tmp.glob(f"**/{CONFIG}")]
        if len(found) != 1:
            raise PresetError(f"{origin} holds {len(found)} presets ({CONFIG} files); a preset URL names one")
        try:
            os.rename(found[0], unpacked)
        except OSError:
            if not is_preset(unpacked):  # another process unpacked it first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return unpacked


def locate(weights, home=None):
    """The preset directory `weights` names: a directory, a URL, or None for something else
    (a data set name is resolved by `resolve`, which knows the model)."""
    text = str(weights)
    if text.startswith("http://") and urllib.parse.urlsplit(text).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise PresetError(f"a preset URL is https:// (http:// only on this machine, 127.0.0.1); got {text!r}")
    if text.startswith(("https://", "http://")):
        return fetch(text)
    if is_preset(text):
        return Path(text)
    return None


def resolve(weights, name=None, classes=None, home=None):
    """What a builder's ``weights=`` names, checked before the model is built: returns
    (path to load, preset directory or None).

    weights: a ``.weights.h5`` file; a preset directory; an ``https://...zip#sha256=<hex>``
    URL of a zipped preset; or a data set name, "cifar10" (seed 0) or "cifar10:seed3",
    for the installed preset of `name` ("arch.variant") on it. A preset must hold
    `name` with `classes` classes; its weights' sha256 is verified.
    """
    text = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not isinstance(text, str):
        raise ValueError(f"weights must be None, a file or preset path, a data set name or a preset URL; "
                         f"got {type(weights).__name__}")
    directory = locate(text, home)
    if directory is None:
        if os.path.isfile(text):
            return text, None
        match = _DATASET_WEIGHTS.fullmatch(text.lower())
        from nestzoo.data.catalog import DATASETS

        if not match or match.group(1) not in DATASETS:
            raise ValueError(f"weights={weights!r} is not a file, a preset directory, a preset URL "
                             f"(https://...zip#sha256=<hex>) or a data set name ({', '.join(DATASETS)}, "
                             "optionally with ':seed<k>', e.g. 'cifar10:seed3')")
        if name is None:
            raise ValueError(f"weights={weights!r} names a preset of a registered architecture; this is a custom "
                             "network: give arch= (nestzoo.list_models()) or a weights file")
        dataset, seed = match.group(1), int(match.group(2) or 0)
        directory = preset_dir(name, dataset, seed, home)
        if not is_preset(directory):
            same = [str(p) for p in _installed(home) if p.parent.name == name]
            have = f" Installed presets of {name}: {', '.join(same)}." if same else ""
            raise PresetError(f"no preset of {name} on {dataset} seed {seed} at {directory}. To make it, "
                              f"{REFERENCE_DOWNLOAD} (or `nestzoo publish RUN_DIR` for a run you trained).{have}")
    config, metadata = read_preset(directory)
    if name is not None:
        check_fits(directory, config, metadata, name, classes)
    return str(Path(directory) / WEIGHTS), Path(directory)


def find(preset, home=None):
    """The directory of a preset named by a directory, a URL, or "arch.variant:dataset[:seed<k>]"
    (e.g. "wrn16-8.a-resnest:cifar10:seed3", the installed preset); a PresetError otherwise."""
    text = str(preset)
    directory = locate(text, home)
    if directory is not None:
        return directory
    name, _, weights = text.partition(":")
    match = _DATASET_WEIGHTS.fullmatch(weights.lower()) if weights and not os.path.exists(text) else None
    if match is None:
        raise PresetError(f"{text!r} is not a preset: give a preset directory (holding {CONFIG}), a preset URL "
                          "(https://...zip#sha256=<hex>) or 'arch.variant:dataset[:seed<k>]' "
                          "(e.g. 'wrn16-8.a-resnest:cifar10'); `nestzoo presets` lists those installed")
    from nestzoo import registry

    _, arch, variant = registry.parse_name(name)
    return resolve(weights, f"{arch}.{variant}", home=home)[1]


def load_preset(preset, **kwargs):
    """The model of a preset (see `find`), built with its config (classes, input shape) and its
    verified weights; kwargs go to ``nestzoo.create_model`` (e.g. ``classifier_activation=None``)."""
    from nestzoo.builders import create_model

    directory = find(preset)
    config, _ = read_preset(directory, verify=False)  # verified by create_model's weights=
    kwargs.setdefault("classes", config["classes"])
    kwargs.setdefault("input_shape", tuple(config["input_shape"]))
    return create_model(config["name"], weights=str(directory), **kwargs)


def list_presets(pattern=None, home=None):
    """The installed presets (under ``$NESTZOO_HOME/presets``), sorted: a dict each with name,
    dataset, seed, classes, test_accuracy, published_accuracy, parameters, source and path.

    pattern: a shell-style wildcard over "arch.variant" (text without a wildcard matches
    names containing it), or over "arch.variant/dataset-seed<k>" when it holds a "/".
    """
    rows = []
    for directory in _installed(home):
        key = f"{directory.parent.name}/{directory.name}"
        if pattern is not None:
            wanted = str(pattern).lower()
            if not any(c in wanted for c in "*?["):
                wanted = f"*{wanted}*"
            if not fnmatch.fnmatch(key if "/" in wanted else directory.parent.name, wanted):
                continue
        try:
            config, metadata = read_preset(directory, verify=False)
        except PresetError as error:
            rows.append({"name": directory.parent.name, "path": str(directory), "error": str(error)})
            continue
        source = metadata.get("source", {})
        rows.append({"name": config["name"], "dataset": metadata.get("dataset"), "seed": metadata.get("seed"),
                     "classes": config.get("classes"), "test_accuracy": metadata.get("test_accuracy"),
                     "published_accuracy": metadata.get("published_accuracy"),
                     "parameters": config.get("parameters"), "source": source.get("kind"),
                     "source_path": source.get("path") or source.get("run_dir"), "path": str(directory)})
    return rows


def format_presets(rows):
    """A text table of `list_presets` rows."""
    if not rows:
        return f"no presets installed under {nestzoo_home() / 'presets'}; to install the paper's: {REFERENCE_DOWNLOAD}"

    def pct(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [f"{'preset':<40} {'classes':>7} {'test %':>7} {'paper %':>7} {'params':>10}  source"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['path']:<40} damaged: {row['error']}")
            continue
        label = f"{row['name']}:{row['dataset']}:seed{row['seed']}"
        params = "-" if row["parameters"] is None else f"{row['parameters']:,}"
        lines.append(f"{label:<40} {row['classes']:>7} {pct(row['test_accuracy']):>7} "
                     f"{pct(row['published_accuracy']):>7} {params:>10}  {row['source']}: {row['source_path']}")
    return "\n".join(lines)


def publish(run_dir, name=None, output=None, home=None):
    """A preset from a finished run directory (holding config.json, summary.json and
    model.keras), with source {"kind": "run", "run_dir"} and the test accuracy the run
    measured on that final model (summary.json); returns its directory.

    name: the preset's directory name under ``<output>/<arch.variant>/`` (default
    "<dataset>-seed<s>"); output: default ``$NESTZOO_HOME/presets``.
    """
    from nestzoo import published
    from nestzoo.saving import load_model

    run_dir = Path(run_dir)
    for needed in ("config.json", "summary.json"):
        if not (run_dir / needed).is_file():
            raise ValueError(f"{run_dir} is not a finished run directory: it lacks {needed} (a run gets it when "
                             "`nestzoo train` finishes)")
    config = _read_json(run_dir / "config.json", "config")
    summary = _read_json(run_dir / "summary.json", "summary")
    if not (run_dir / "model.keras").is_file():
        raise ValueError(f"{run_dir} holds no model.keras; a run gets it when training finishes")
    model = load_model(run_dir / "model.keras", compile=False)
    identity = model.identity
    if identity.name is None:
        raise ValueError(f"{run_dir} holds a custom network; a preset holds a registered architecture")
    dataset = str(config.get("data") or "custom")
    seed = int(config.get("seed", summary.get("seed", 0)))
    accuracy = summary.get("test_accuracy")
    metadata = {"dataset": dataset, "seed": seed, "source": {"kind": "run", "run_dir": str(run_dir.resolve())},
                "test_accuracy": None if accuracy is None else 100 * float(accuracy),
                "published_accuracy": published.published_accuracy(dataset, identity.arch, identity.variant),
                "recipe": config.get("recipe")}
    folder = name or f"{dataset}-seed{seed}"
    root = Path(output) if output is not None else nestzoo_home(home) / "presets"
    return save_preset(model, root / identity.name / folder, metadata)



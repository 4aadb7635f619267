"""`nestzoo export` and `nestzoo predict`: versions, metadata, atomicity under kill, bad inputs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import nestzoo
from nestzoo import data, export
from nestzoo.predict import Predictor, read_inputs

ROOT = Path(__file__).resolve().parents[1]
NAME = "resnet20_a-resnest"


def digits_images(count):
    """Test images of scikit-learn's digits as nestzoo stores them (uint8, 0..16 rescaled to 0..255)."""
    images = np.round(load_digits().images[-count:] * (255 / 16)).astype("uint8")[..., None]
    return images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run's directory as `nestzoo train` leaves it (model.keras, config.json, summary.json)."""
    directory = tmp_path_factory.mktemp("runs") / NAME.replace("_", ".") / "seed0"
    directory.mkdir(parents=True)
    model = nestzoo.AResNEst(arch="resnet20", input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.gamma.shape[0]))
    model.save(directory / "model.keras")
    (directory / "config.json").write_text(json.dumps({"model": "resnet20.a-resnest", "data": "digits", "seed": 0}))
    (directory / "summary.json").write_text(json.dumps({"test_accuracy": 0.9472}))
    return directory


@pytest.fixture(scope="module")
def served(run_dir, tmp_path_factory):
    """saved_models/<name>/1 exported from the run."""
    return export.export(run_dir, tmp_path_factory.mktemp("saved_models"))


def test_export_picks_versions_never_overwrites_and_writes_metadata(nestzoo_cli, run_dir, served):
    base = served.parent.parent
    assert served == base / NAME / "1"
    code, out = nestzoo_cli("export", run_dir, "--base-dir", base)
    assert code == 0 and f"SavedModel written to {base / NAME / '2'}" in out, out
    assert "uint8 images -> probabilities, class_ids, logits" in out
    code, out = nestzoo_cli("export", run_dir, "--base-dir", base, "--version", 1)
    assert code == 2 and f"{str(base / NAME / '1')!r} exists; an export never overwrites a version" in out
    assert "(3)" in out  # it names the next free version
    assert sorted(os.listdir(base / NAME)) == ["1", "2"]

    metadata = export.read_metadata(served)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert metadata["model"] == "resnet20.a-resnest" and metadata["variant"] == "a-resnest"
    assert metadata["arch"] == "resnet20"  # the model's identity
    assert metadata["parameters"] == model.count_params()
    assert metadata["test_accuracy"] == 0.9472 and metadata["nestzoo_version"] == nestzoo.__version__
    spec = data.get_spec("digits")
    assert metadata["standardization"]["dataset"] == "digits"
    assert metadata["standardization"]["mean"] == list(spec.mean) and metadata["standardization"]["std"] == list(spec.std)
    assert metadata["class_names"] == [str(i) for i in range(10)]
    assert metadata["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 8, 8, 1], "range": [0, 255]}


def test_a_killed_export_leaves_no_version(run_dir, tmp_path):
    base = tmp_path / "saved_models"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "nestzoo.cli", "export", str(run_dir), "--base-dir", str(base)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((base / NAME).glob(export.TMP_PREFIX + "*")) and process.poll() is None:
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read()[-2000:]  # killed mid-export, not finished
    (tmp,) = [p.name for p in (base / NAME).iterdir()]
    assert tmp.startswith(export.TMP_PREFIX) and export.versions(base / NAME) == []  # nothing a server would load
    # the next export takes version 1 and clears the dead export's temporary directory
    assert export.export(run_dir, base) == base / NAME / "1"
    assert os.listdir(base / NAME) == ["1"] and (base / NAME / "1" / "saved_model.pb").is_file()


def write_pngs(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0], mode="L").save(folder / f"digit{i}.png")
    return sorted(folder.glob("*.png"))


def test_predict_matches_the_model(nestzoo_cli, run_dir, served, tmp_path):
    images = digits_images(4)
    files = write_pngs(tmp_path / "pngs", images)
    np.save(tmp_path / "batch.npy", images[:2, ..., 0])  # (N, H, W) grayscale
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    spec = data.get_spec("digits")
    expected = model.predict(((images / 255 - np.array(spec.mean)) / np.array(spec.std)).astype("float32"), verbose=0)

    code, out = nestzoo_cli("predict", served.parent, tmp_path / "pngs", tmp_path / "batch.npy", "--json",
                    "--top-k", 2)  # saved_models/<name>: its latest version
    assert code == 0, out
    rows = json.loads(out)
    assert [r["input"] for r in rows] == [str(f) for f in files] + [f"{tmp_path / 'batch.npy'}[{i}]" for i in (0, 1)]
    for row, p in zip(rows, np.concatenate([expected, expected[:2]])):
        best = np.argsort(-p)[:2]
        assert [c["class_id"] for c in row["top"]] == best.tolist()
        assert [c["class_name"] for c in row["top"]] == [str(c) for c in best]
        np.testing.assert_allclose([c["probability"] for c in row["top"]], p[best], rtol=1e-4, atol=1e-6)

    code, text = nestzoo_cli("predict", run_dir / "model.keras", files[0], "--top-k", 1)  # a .keras file
    assert code == 0 and text.strip() == f"{files[0]}: {np.argmax(expected[0])} {100 * expected[0].max():.1f}%"


def test_predict_refuses_bad_inputs(nestzoo_cli, served, tmp_path):
    predictor = Predictor(served)
    images = digits_images(2)
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.full((28, 28), 200, np.uint8), mode="L").save(tmp_path / "big.png")
    np.save(tmp_path / "rank2.npy", images[0, ..., 0])
    np.save(tmp_path / "floats.npy", load_digits().images[:2])  # scikit-learn's own 0..16 floats
    np.save(tmp_path / "dark.npy", load_digits().images[:2].astype("uint8"))  # uint8 but 0..16
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8, 1), np.uint8))
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")  # a small file of 400 million pixels
    (tmp_path / "empty").mkdir()
    cases = {
        "notes.png": "notes.png' is not an image: expected a PNG or JPEG file",
        "big.png": "is 28x28 pixels; the model takes 8x8 images. nestzoo predict does not resize",
        "rank2.npy": r"holds an array of shape \(8, 8\) \(rank 2\); the model takes a batch \(N, 8, 8, 1\) or "
                     r"\(N, 8, 8\)",
        "floats.npy": r"got float64 values in \[0, 16\]; expected uint8 images with values 0..255",
        "dark.npy": f"dark.npy\\[0\\]: the largest pixel value is {int(load_digits().images[0].max())}; the model "
                    "expects uint8 images on 0..255",
        "none.npy": r"none.npy' holds an empty batch of shape \(0, 8, 8, 1\); give at least one input",
        "huge.png": r"huge.png' is too large: nestzoo predict reads images of at most 89,478,485 pixels \(PIL's "
                    r"decompression-bomb limit; Image size \(400000000 pixels\) exceeds limit.*the model takes 8x8",
        "empty": "holds no PNG or JPEG files",
        "missing.png": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            read_inputs([tmp_path / name], predictor)
    read_inputs([tmp_path / "dark.npy"], predictor, range_check=False)  # the check can be turned off
    code, out = nestzoo_cli("predict", served, tmp_path / "dark.npy")
    assert code == 2 and "nestzoo predict: error:" in out and "largest pixel value is" in out and "0..16" in out


def test_export_refuses_bad_sources(nestzoo_cli, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    code, out = nestzoo_cli("export", tmp_path / "run", "--base-dir", tmp_path)
    assert code == 2 and "holds no model.keras: expected a run directory" in out
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    other.save(tmp_path / "other.keras")
    code, out = nestzoo_cli("export", tmp_path / "other.keras", "--base-dir", tmp_path, "--dataset", "digits")
    assert code == 2 and "is not a nestzoo model" in out and "keras.export.ExportArchive" in out
    (tmp_path / "broken.keras").write_text("no zip")
    code, out = nestzoo_cli("export", tmp_path / "broken.keras", "--base-dir", tmp_path)
    assert code == 2 and "broken.keras is not a Keras model file" in out and "truncated, damaged" in out
    diverged = nestzoo.ResNet(blocks=1, width=(4, 8, 8), input_shape=(8, 8, 1))
    weights = diverged.get_weights()
    weights[0][0, 0, 0, 0] = np.nan
    diverged.set_weights(weights)
    diverged.save(tmp_path / "diverged.keras")
    code, out = nestzoo_cli("export", tmp_path / "diverged.keras", "--base-dir", tmp_path, "--dataset", "digits")
    assert code == 2 and "diverged.keras holds non-finite weights (NaN or infinity in " in out
    with pytest.raises(ValueError, match="the model holds non-finite weights"):
        export.export_saved_model(diverged, tmp_path / "diverged" / "1", dataset="digits")
    assert sorted(os.listdir(tmp_path)) == ["broken.keras", "diverged.keras", "other.keras", "run"]


@pytest.mark.parametrize("command, words", [
    ("export", ["RUN_DIR_OR_MODEL", "--name", "--version", "--base-dir", "--dataset", "--fold-batch-norm",
                "--jit-compile", "never overwritten"]),
    ("predict", ["EXPORT_OR_KERAS_FILE", "IMAGES", "--top-k", "--json", "--range-check", "not resized"]),
])
def test_help_describes_options(nestzoo_cli, command, words):
    code, out = nestzoo_cli(command, "--help")
    assert code == 0 and all(w in " ".join(out.split()) for w in words), out


def test_predict_scales_16_bit_pngs_to_the_8_bit_range(nestzoo_cli, served, tmp_path):
    images = digits_images(6)
    write_pngs(tmp_path / "eight", images)
    (tmp_path / "sixteen").mkdir()
    noise = np.random.default_rng(0).integers(-128, 129, size=images.shape[:3])  # below half an 8-bit step
    for i, image in enumerate(images):
        wide = np.clip(image[..., 0].astype(np.int32) * 257 + noise[i], 0, 65535).astype(np.uint16)
        Image.fromarray(wide).save(tmp_path / "sixteen" / f"digit{i}.png")
        with Image.open(tmp_path / "sixteen" / f"digit{i}.png") as saved:
            assert saved.mode == "I;16"  # a 16-bit grayscale PNG
    predictor = Predictor(served)
    np.testing.assert_array_equal(read_inputs([tmp_path / "sixteen"], predictor)[1],
                                  read_inputs([tmp_path / "eight"], predictor)[1])
    tops = {}
    for depth in ("eight", "sixteen"):
        code, out = nestzoo_cli("predict", served, tmp_path / depth, "--json", "--top-k", 2)
        assert code == 0, out
        tops[depth] = [[c["class_id"] for c in row["top"]] for row in json.loads(out)]
    assert tops["sixteen"] == tops["eight"]


def damaged_copy(served, tmp_path, file, keep=0.5):
    """A copy of the export `served` as version 1 of tmp_path/model, with `file` cut to `keep` of its bytes."""
    version = tmp_path / "model" / "1"
    shutil.copytree(served, version)
    content = (version / file).read_bytes()
    (version / file).write_bytes(content[:int(len(content) * keep)])
    return version


@pytest.mark.parametrize("file", ["variables/variables.data-00000-of-00001", "saved_model.pb"])
def test_predict_names_the_damaged_file_of_a_version(nestzoo_cli, served, tmp_path, file):
    version = damaged_copy(served, tmp_path, file)
    np.save(tmp_path / "x.npy", digits_images(1))
    code, out = nestzoo_cli("predict", version.parent, tmp_path / "x.npy")
    assert code == 2, out
    assert f"version 1 of {str(version.parent)!r} is damaged: {str(version / file)!r} does not read back" in out


def test_damaged_json_is_named(nestzoo_cli, run_dir, served, tmp_path):
    version = damaged_copy(served, tmp_path, f"assets/{export.METADATA_FILE}")
    np.save(tmp_path / "x.npy", digits_images(1))
    code, out = nestzoo_cli("predict", version, tmp_path / "x.npy")
    assert code == 2 and f"{str(version / 'assets' / export.METADATA_FILE)!r} is not valid JSON" in out, out
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text('{"data": "dig')
    code, out = nestzoo_cli("export", run, "--base-dir", tmp_path / "saved_models")
    assert code == 2 and f"{str(run / 'config.json')!r} is not valid JSON" in out, out


def test_predict_names_the_export_layout_for_a_missing_model(nestzoo_cli, tmp_path):
    Image.fromarray(digits_images(1)[0, ..., 0], mode="L").save(tmp_path / "img.png")
    code, out = nestzoo_cli("predict", tmp_path / "saved_models" / "does_not_exist", tmp_path / "img.png")
    assert code == 2 and "does not exist: expected an export directory (saved_models/<name> or " \
                          "saved_models/<name>/<version>) or a .keras file" in out, out
    assert "run directory" not in out


def test_a_full_disk_is_named_with_the_space_needed_and_leaves_nothing(nestzoo_cli, run_dir, tmp_path,
                                                                       monkeypatch):
    import tensorflow as tf

    base = tmp_path / "saved_models"

    def full_disk(module, directory, signatures):  # TensorFlow's error when a write hits ENOSPC
        Path(directory, "saved_model.pb").write_bytes(b"\0" * 1000)
        raise tf.errors.ResourceExhaustedError(None, None, f"{directory}/saved_model.pb; No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    code, out = nestzoo_cli("export", run_dir, "--base-dir", base)
    assert code == 1, out
    assert f"no space left for the export in {str(base / NAME)!r} (ResourceExhaustedError): it needs at least " in out
    needed = float(out.split("needs at least ")[1].split(" MB")[0])
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert 0.9 * 2 * 4 * model.count_params() / 2**20 < needed < 2 * 4 * model.count_params() / 2**20  # 2 signatures
    assert os.listdir(base / NAME) == []  # nothing partial left behind
    # less free space than the weights: refused before anything is written
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    monkeypatch.setattr(tf.saved_model, "save", lambda *args, **kwargs: pytest.fail("the export was written"))
    code, out = nestzoo_cli("export", run_dir, "--base-dir", base)
    assert code == 1 and "no space left for the export" in out and "and 1.0 MB are free" in out, out
    assert os.listdir(base / NAME) == []

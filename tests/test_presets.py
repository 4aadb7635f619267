"""Presets: trained weights by name, directory and URL, verified, with their provenance."""
import functools
import hashlib
import http.server
import json
import re
import shutil
import threading
import time
import zipfile

import keras
import numpy as np
import pytest

import nestzoo
from nestzoo import export, presets, training

SHAPE = (8, 8, 1)  # digits
NAME = "resnet20.resnest"


def randomize(model, seed=0):
    """Move every weight off its initial value (BN statistics included), so a load is seen."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0, 0.1, weight.shape)
        if "variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value.astype("float32"))
    return model


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """NESTZOO_HOME holding the digits seed-0 preset of resnet20.resnest; (home, model, preset dir)."""
    root = tmp_path_factory.mktemp("nestzoo_home")
    patch = pytest.MonkeyPatch()
    patch.setenv("NESTZOO_HOME", str(root))
    model = randomize(nestzoo.create_model(NAME, input_shape=SHAPE, classes=10))
    metadata = {"dataset": "digits", "seed": 0, "source": {"kind": "run", "run_dir": "/runs/x"}, "recipe": "quick",
                "test_accuracy": 12.5}
    directory = presets.save_preset(model, presets.preset_dir(NAME, "digits"), metadata)
    yield root, model, directory
    patch.undo()


X = np.random.default_rng(1).standard_normal((3, *SHAPE)).astype("float32")


def test_save_preset_writes_the_contract_and_loads_by_name_and_directory(home):
    root, model, directory = home
    assert directory == root / "presets" / NAME / "digits-seed0"
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "metadata.json", "model.weights.h5"]
    config = json.loads((directory / "config.json").read_text())
    assert {k: config[k] for k in ("format", "format_version", "name", "arch", "variant", "classes", "input_shape")} \
        == {"format": "nestzoo-preset", "format_version": 1, "name": NAME, "arch": "resnet20",
            "variant": "resnest", "classes": 10, "input_shape": list(SHAPE)}
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["weights_sha256"] == hashlib.sha256((directory / "model.weights.h5").read_bytes()).hexdigest()
    assert metadata["standardization"] == {"mean": [0.3054], "std": [0.3753]}
    assert metadata["class_names"] == [str(i) for i in range(10)] and metadata["test_accuracy"] == 12.5
    with pytest.raises(ValueError, match="exists already"):
        presets.save_preset(model, directory, metadata)

    expected = np.asarray(model(X, training=False))
    by_name = nestzoo.ResNEst(arch="resnet20", input_shape=SHAPE, weights="digits")
    by_dir = nestzoo.load_preset(directory)  # create_model(NAME, weights=directory, classes, input_shape)
    for other in (by_name, by_dir):
        np.testing.assert_array_equal(np.asarray(other(X, training=False)), expected)
    # Keras Applications' include_top=False: every backbone layer's weights come from the preset
    features = nestzoo.ResNEst(arch="resnet20", input_shape=SHAPE, include_top=False, pooling="avg",
                               weights="digits")
    for layer in (layer for layer in features.layers if layer.weights):
        for got, want in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(got, want)

    [row] = nestzoo.list_presets("20.resnest")
    assert row["name"] == NAME and row["dataset"] == "digits" and row["seed"] == 0 and row["source"] == "run"
    assert row["parameters"] == model.count_params() and row["test_accuracy"] == 12.5
    assert nestzoo.list_presets("wrn*") == []


def test_refusals_say_what_the_preset_holds_and_how_to_make_a_missing_one(home):
    _, _, directory = home
    with pytest.raises(ValueError, match=r"holds resnet20\.resnest with 10 classes.*asked for is resnet20\.a-resnest"):
        nestzoo.AResNEst(arch="resnet20", input_shape=SHAPE, weights=str(directory))
    with pytest.raises(ValueError, match=r"holds resnet20\.resnest with 10 classes.*with 100 classes"):
        nestzoo.ResNEst(arch="resnet20", input_shape=SHAPE, classes=100, weights="digits")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"no preset of wrn16-8\.a-resnest on cifar10 seed 3.*nestzoo convert"):
        nestzoo.AResNEst(arch="wrn16-8", weights="cifar10:seed3")
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ValueError, match="data set name .*cifar10.*digits"):
        nestzoo.AResNEst(arch="resnet20", weights="imagenet")
    with pytest.raises(ValueError, match="custom network: give arch="):
        nestzoo.ResNEst(blocks=1, width=4, weights="digits", input_shape=SHAPE)
    with pytest.raises(ValueError, match="registered architecture"):
        presets.save_preset(nestzoo.ResNEst(blocks=1, width=4, input_shape=SHAPE), directory.parent / "x", {})
    with pytest.raises(ValueError, match="metadata needs seed, source"):
        presets.save_preset(home[1], directory.parent / "x", {"dataset": "digits"})
    assert not (directory.parent / "x").exists()
    with pytest.raises(ValueError, match="not outputs="):
        nestzoo.ResNEst(arch="resnet20", input_shape=SHAPE, outputs=10, weights=str(directory))


def damaged_copy(directory, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    damage(copy)
    return copy


def flip_a_byte(copy):
    data = bytearray((copy / "model.weights.h5").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.weights.h5").write_bytes(bytes(data))


def garbage_with_its_hash(copy):
    (copy / "model.weights.h5").write_bytes(b"not hdf5" * 100)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["weights_sha256"] = hashlib.sha256(b"not hdf5" * 100).hexdigest()
    (copy / "metadata.json").write_text(json.dumps(metadata))


@pytest.mark.parametrize("damage, message", [
    (flip_a_byte, "damaged or was replaced: its sha256"),
    (garbage_with_its_hash, "not an HDF5 weights file"),
    (lambda copy: (copy / "metadata.json").write_text("{"), "cannot be read as JSON"),
    (lambda copy: (copy / "model.weights.h5").unlink(), "lacks model.weights.h5"),
])
def test_a_damaged_preset_is_refused_before_anything_is_loaded(home, tmp_path, monkeypatch, damage, message):
    copy = damaged_copy(home[2], tmp_path, damage)
    monkeypatch.setattr(keras.Model, "load_weights", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(ValueError, match=message):
        nestzoo.create_model(NAME, input_shape=SHAPE, weights=str(copy))


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_zipped_preset_loads_from_a_url_once_verified_against_its_sha256(home, server):
    _, model, directory = home
    served, base = server
    archive = served / "preset.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in directory.iterdir():
            zipped.write(file, f"digits-seed0/{file.name}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="carries the zip's sha256"):
        nestzoo.create_model(NAME, input_shape=SHAPE, weights=f"{base}/preset.zip")
    with pytest.raises(ValueError, match="does not match its sha256"):
        nestzoo.create_model(NAME, input_shape=SHAPE, weights=f"{base}/preset.zip#sha256={'0' * 64}")
    with pytest.raises(ValueError, match="a preset URL is https://"):
        nestzoo.create_model(NAME, input_shape=SHAPE, weights=f"http://example.com/p.zip#sha256={digest}")
    url = f"{base}/preset.zip#sha256={digest}"
    loaded = nestzoo.create_model(NAME, input_shape=SHAPE, weights=url)
    np.testing.assert_array_equal(np.asarray(loaded(X, training=False)), np.asarray(model(X, training=False)))
    archive.unlink()  # downloaded once: the cached, unpacked copy serves the next load
    assert presets.find(url).is_dir()
    with pytest.raises(ValueError, match=r"holds resnet20\.resnest"):
        nestzoo.BNResNEst(arch="resnet20", input_shape=SHAPE, weights=url)


def test_publish_a_run_then_list_evaluate_and_export_its_preset(home, tmp_path, nestzoo_cli):
    """A finished run's files (written here as `nestzoo train` writes them), published as a preset whose
    evaluation on digits measures what the run's model measures."""
    _, model, _ = home
    run_dir = tmp_path / "runs" / NAME / "seed2"
    run_dir.mkdir(parents=True)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(run_dir / "model.keras")
    measured = training.evaluate(model, "digits", verbose=0)
    (run_dir / "config.json").write_text(json.dumps({"model": NAME, "data": "digits", "seed": 2,
                                                     "recipe": {"name": "quick"}}))
    (run_dir / "summary.json").write_text(json.dumps({"seed": 2, "test_accuracy": measured["accuracy"]}))

    code, out = nestzoo_cli("publish", run_dir)
    assert code == 0, out
    directory = presets.preset_dir(NAME, "digits", seed=2)
    assert str(directory) in out
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["source"] == {"kind": "run", "run_dir": str(run_dir.resolve())}
    assert metadata["test_accuracy"] == pytest.approx(100 * measured["accuracy"]) and metadata["seed"] == 2
    code, out = nestzoo_cli("publish", run_dir)
    assert code != 0 and "exists already" in out
    code, out = nestzoo_cli("publish", tmp_path)
    assert code != 0 and "lacks config.json" in out

    code, out = nestzoo_cli("presets", "resnet20")
    assert code == 0 and f"{NAME}:digits:seed2" in out and f"{NAME}:digits:seed0" in out
    code, out = nestzoo_cli("presets", "wrn*")
    assert code != 0 and "no installed preset matches" in out

    code, out = nestzoo_cli("evaluate", f"{NAME}:digits:seed2", "--verbose", "0")
    assert code == 0, out
    assert f"measured accuracy {100 * measured['accuracy']:.2f}%, published (none recorded)" in out
    code, out = nestzoo_cli("evaluate", f"{NAME}:digits:seed5", "--verbose", "0")
    assert code != 0 and f"no preset of {NAME} on digits seed 5" in out

    source = export.load_source(directory)
    assert export.dataset_of(source) == "digits" and source.summary["test_accuracy"] == pytest.approx(
        measured["accuracy"])
    np.testing.assert_array_equal(np.asarray(source.model(X, training=False)), np.asarray(model(X, training=False)))


def test_evaluate_a_cifar_preset_on_cifar_format_files_beside_its_published_accuracy(home, tmp_path, nestzoo_cli):
    from nestzoo import data, published
    from test_data_cifar_files import write_layout

    model = randomize(nestzoo.create_model("resnet20.resnest", classes=10), seed=3)
    paper = published.published_accuracy("cifar10", "resnet20", "resnest")
    presets.save_preset(model, presets.preset_dir("resnet20.resnest", "cifar10", seed=4),
                        {"dataset": "cifar10", "seed": 4, "published_accuracy": paper, "recipe": "paper",
                         "source": {"kind": "reference", "path": "/x/last_model.pt", "sha256": "0" * 64}})
    folder, (_, (images, labels)) = write_layout(tmp_path, "cifar10-py")
    spec = data.get_spec("cifar10")
    x = ((images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype("float32")
    probabilities = np.asarray(model(x, training=False), "float64")
    expected = 100 * np.mean(np.argmax(probabilities, -1) == labels)
    loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    code, out = nestzoo_cli("evaluate", "resnet20.resnest:cifar10:seed4", "--source", folder, "--verbose", "0")
    assert code == 0, out
    assert float(re.search(r"loss (\S+),", out).group(1)) == pytest.approx(loss, abs=2e-4)  # the same images
    assert f"measured accuracy {expected:.2f}%, published {paper:.2f}%" in out

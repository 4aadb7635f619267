"""Every fault of a training run named: damaged checkpoints and models, divergence, the file
system, changed configs, bad labels and arguments. Each message names the file and what to do."""
import errno
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestzoo
from nestzoo import cli, training
from nestzoo.training import callbacks, checkpoint, folder, report, run

MODEL = "resnet20.standard"
OPTIONS = {"classes": 10}


def tiny_data(n=32, batch=16):
    """(train, test) batched tf.data of 8x8x1 images whose class is readable from the pixels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32") * 0.1
    x[np.arange(n), y % 8, y // 8 * 4, 0] += 3.0
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return ds, ds


def train(run_dir, **kwargs):
    return training.train(MODEL, tiny_data(), output_dir=run_dir, model_options=OPTIONS, verbose=0,
                          **{"epochs": 2, **kwargs})


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run whose epoch 2 could not be committed (the folder turned read-only, simulated: tests
    may run as root, whom permissions do not stop); returns (copy of its folder, the error)."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    real, calls = checkpoint.write_arrays, []

    def write_arrays(path, arrays):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, arrays)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "write_arrays", write_arrays)
        with pytest.raises(training.CommitError) as error:
            train(run_dir)
    saved = run_dir.with_name("saved")
    shutil.copytree(run_dir, saved)
    return saved, str(error.value)


def copy_of(stopped_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run[0], run_dir)
    return run_dir


def test_commit_failure_keeps_what_was_committed_then_resume_extend_and_config_changes(stopped_run, tmp_path):
    saved, message = stopped_run
    assert f"cannot commit epoch 2 to {saved.with_name('run') / 'checkpoint'}: Permission denied (the folder or " \
           "disk is read-only)" in message
    assert "Epochs 1..1 are committed there and kept" in message and "--resume" in message
    run_dir = copy_of(stopped_run, tmp_path)
    assert checkpoint.load_state(run_dir)["epoch"] == 1
    summary = train(run_dir, resume=True)  # the folder is writable again
    assert summary["epochs"] == 2 and not (run_dir / "checkpoint").exists()

    # killed between summary.json and the clean-up: the resumed call finishes the clean-up
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / "state.json").write_text("{}")
    assert train(run_dir, resume=True) == summary and not (run_dir / "checkpoint").exists()

    # a changed config names the fields that differ, nested ones by their path
    with pytest.raises(ValueError) as error:
        train(run_dir, resume=True, seed=1, momentum=0.8)
    assert str(error.value).startswith(f"cannot resume '{run_dir}': its config.json differs in recipe.momentum: "
                                       "stored 0.9, given 0.8; seed: stored 0, given 1. Give the stored values")
    with pytest.raises(ValueError, match=r"recipe.epochs: stored 2, given 1 \(a run can be extended with more "
                                         r"epochs, never shortened\)"):
        train(run_dir, resume=True, epochs=1)

    # more epochs extend a finished run, recorded in config.json
    extended = train(run_dir, resume=True, epochs=3)
    assert extended["epochs"] == 3 and [r["epoch"] for r in report.read_csv(run_dir / "log.csv")] == [1, 2, 3]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"]["epochs"] == 3
    assert config["extended"] == [{"from_epochs": 2, "to_epochs": 3, "after_epoch": 2}]
    assert int(keras.models.load_model(run_dir / "model.keras").optimizer.iterations) == 3 * 2
    # the paper's milestones scaled to 2 epochs are [1], to 3 epochs [1, 2]: the new one lies ahead
    assert config["recipe"]["milestones"] == [1, 2]
    # a milestone already passed may not move
    with pytest.raises(ValueError, match=r"differs in recipe.epochs: stored 3, given 4; recipe.milestones: "
                                         r"stored \[1, 2\], given \[2\]\. "):
        train(run_dir, resume=True, epochs=4, milestones=(2,))


def damage_overwrite(run_dir):
    path = next((run_dir / "checkpoint").glob("*.ckpt"))
    content = bytearray(path.read_bytes())
    content[len(content) // 2: len(content) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(content))
    return rf"checkpoint file {path} is damaged: its SHA-256 does not match the one {run_dir}/checkpoint/state.json"


def damage_truncate(run_dir):
    path = next((run_dir / "checkpoint").glob("*.ckpt"))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 3])
    return rf"checkpoint file {path} is damaged: {size // 3} bytes where .*state.json recorded {size} \(truncated"


def damage_empty_state(run_dir):
    (run_dir / "checkpoint" / "state.json").write_text("{}")
    return (rf"{run_dir}/checkpoint/state.json is not a nestzoo commit record \(missing epoch, history, last, best, "
            r"variables\); move .* aside \(the run then restarts from epoch 0\)")


def damage_corrupt_state(run_dir):
    (run_dir / "checkpoint" / "state.json").write_text('{"epoch": 1, "hist')
    return rf"{run_dir}/checkpoint/state.json is damaged: not valid JSON \(Unterminated string"


def other_architecture(run_dir):
    """The checkpoint of resnet20.standard in the folder of a resnet20.a-resnest run (copied over)."""
    config = json.loads((run_dir / "config.json").read_text())
    other = nestzoo.create_model("resnet20.a-resnest", input_shape=(8, 8, 1), classes=10)
    config.update(model="resnet20.a-resnest", variant="a-resnest", parameters=int(sum(np.prod(w.shape) for w in other.trainable_weights)))
    (run_dir / "config.json").write_text(json.dumps(config))
    return (rf"the checkpoint in {run_dir}/checkpoint was written for another model \(it holds \d+ variables, "
            r"resnet20.a-resnest has \d+; the first that differs is .*\); resume it with the model it was trained")


@pytest.mark.parametrize("damage", [damage_overwrite, damage_truncate, damage_empty_state, damage_corrupt_state,
                                    other_architecture])
def test_damaged_checkpoint_is_refused_by_name(stopped_run, tmp_path, damage):
    run_dir = copy_of(stopped_run, tmp_path)
    message = damage(run_dir)
    model = "resnet20.a-resnest" if damage is other_architecture else MODEL
    with pytest.raises(training.CheckpointError, match=message):
        training.train(model, tiny_data(), output_dir=run_dir, model_options=OPTIONS, epochs=2, resume=True,
                       verbose=0)


def test_output_directory_is_checked_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("data or model loaded before the output directory was checked")

    monkeypatch.setattr(run, "splits", no_work)
    file = tmp_path / "file"
    file.write_text("not a folder")
    with pytest.raises(ValueError, match=f"output directory '{file}' is a file; choose a folder path"):
        training.train(MODEL, "digits", output_dir=file)
    with pytest.raises(ValueError, match=f"output directory '{file}/runs/a' lies under {file}, which is a file"):
        training.train_seeds(MODEL, "digits", output_dir=file / "runs" / "a")

    real_open = folder.os.open

    def read_only(path, *args):  # what a read-only folder does to a user other than root
        if ".nestzoo-write-probe" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args)

    monkeypatch.setattr(folder.os, "open", read_only)
    with pytest.raises(ValueError, match=f"output directory '{tmp_path}' cannot be written \\(Permission denied\\); "
                                         "make it writable or choose another folder"):
        training.train(MODEL, "digits", output_dir=tmp_path)


def test_kill_before_config_rename_or_during_epoch_1_leaves_a_resumable_folder(tmp_path):
    (tmp_path / "config.json.tmp").write_text('{"half": ')
    for resume in (False, True):
        assert folder.check_run_dir(tmp_path, {"model": MODEL}, resume) is None  # a fresh start, either way
    config = {"model": MODEL, "data": "digits", "recipe": {"epochs": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config))  # killed during epoch 1: nothing committed
    (tmp_path / "tensorboard").mkdir()
    assert folder.check_run_dir(tmp_path, config, resume=True) == config
    assert checkpoint.load_state(tmp_path)["epoch"] == 0
    with pytest.raises(ValueError, match="holds another run's files; pass resume=True"):
        folder.check_run_dir(tmp_path, config, resume=False)


def test_divergence_messages_and_the_explosion_rule(tmp_path):
    schedule = training.MultiStepSchedule(0.1, 10, [2], 0.2)
    guard = callbacks.DivergenceGuard(MODEL, False, 0.1, schedule, 10, classes=10, run_dir=tmp_path)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 2.3})
    with pytest.raises(training.TrainingDiverged, match=r"the loss became nan at batch 3 at epoch 1 \(learning rate "
                                                        r"0.1\): .* No epoch had finished, so there is no checkpoint"):
        guard.on_train_batch_end(2, {"loss": float("nan")})
    assert training.explosion_bound(10) == pytest.approx(10 * math.log(10))
    guard.on_epoch_begin(3)
    guard.on_epoch_end(3, {"loss": 23.0})  # below 10 ln 10 = 23.03: kept
    with pytest.raises(training.TrainingDiverged) as error:
        guard.on_epoch_end(3, {"loss": 5e8})
    assert str(error.value).startswith("the mean training loss exploded to 5e+08, above 23 (10 times a uniform "
                                       "guess's cross-entropy) at epoch 4 (learning rate 0.02)")
    assert f"Epoch 3's checkpoint is kept in {tmp_path / 'checkpoint'}: continue from it at a lower rate with " \
           "--resume --continue-lr 0.002" in str(error.value)


@pytest.mark.parametrize("option", ["learning_rate", "momentum", "weight_decay", "gamma"])
def test_numeric_options_must_be_finite(tmp_path, option, capsys):
    with pytest.raises(ValueError, match=f"{option} must be a finite number, got nan"):
        training.train(MODEL, "digits", output_dir=tmp_path, **{option: float("nan")})
    flag = {"learning_rate": "--lr"}.get(option, "--" + option.replace("_", "-"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", flag, "inf", "--output", str(tmp_path)])
    assert exit.value.code == 2 and f"argument {flag}: 'inf' is not a finite number" in capsys.readouterr().err


def test_saved_models_are_checked_when_loaded(tmp_path, capsys):
    model = nestzoo.create_model(MODEL, input_shape=(8, 8, 1), classes=10)
    good = tmp_path / "model.keras"
    model.save(good)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(ValueError, match=f"{path} is not a Keras model file .* truncated, damaged"):
            training.evaluate(path, tiny_data()[1], verbose=0)
    weights = model.get_weights()
    weights[0][0, 0, 0, 0] = np.nan
    model.set_weights(weights)
    diverged = tmp_path / "diverged.keras"
    model.save(diverged)
    with pytest.raises(ValueError, match=f"{diverged} holds non-finite weights \\(NaN or infinity in .*\\): it was "
                                         "saved from a diverged run or is damaged"):
        training.load_model(diverged)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing.keras'} does not exist"):
        training.evaluate(tmp_path / "missing.keras", tiny_data()[1])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        training.evaluate(good, "digits", batch_size=0)
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", str(good), "--batch-size", "0"])
    assert exit.value.code == 2 and "argument --batch-size: '0': the value must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", str(garbage)])
    assert exit.value.code == 2 and f"nestzoo evaluate: error: {garbage} is not a Keras model file" in \
        capsys.readouterr().err




def finished_copy(stopped_run, tmp_path):
    """A copy of the stopped run, finished (its epoch 2 trained in this process)."""
    run_dir = copy_of(stopped_run, tmp_path)
    return run_dir, train(run_dir, resume=True)


def test_a_finished_run_whose_model_is_missing_or_garbage_is_refused(stopped_run, tmp_path):
    run_dir, summary = finished_copy(stopped_run, tmp_path)
    model = run_dir / "model.keras"
    for damage, message in ((model.unlink, "does not exist"),
                            (lambda: model.write_bytes(b"garbage"), "is not a Keras model file")):
        damage()
        expected = (re.escape(f"{run_dir} has finished (summary.json), but {model} {message}") + ".* Its final "
                    f"weights cannot be rebuilt: .* best.weights.h5 holds epoch {summary['best_epoch']}'s")
        with pytest.raises(training.CheckpointError, match=expected):
            train(run_dir, resume=True)
        with pytest.raises(training.CheckpointError, match=expected):  # nor can it be extended
            train(run_dir, resume=True, epochs=3)
        assert json.loads((run_dir / "config.json").read_text())["recipe"]["epochs"] == 2  # left as it was


def fill(directory, leave):
    """Fill the file system of `directory` until `leave` bytes are free; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        f.write(bytes(max(0, shutil.disk_usage(directory).free - leave)))
    return filler


@pytest.fixture
def tmpfs(tmp_path):
    """A 12 MB tmpfs (unmounted after the test), or a skip where this user cannot mount one (not root)."""
    path = tmp_path / "disk"
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode:
        pytest.skip(f"a real full disk needs a tmpfs, which this user cannot mount: {result.stderr.strip()}")
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=True)  # lazy: TensorBoard's writers keep files open


@pytest.mark.parametrize("disk", ["full tmpfs", "failed write"])
def test_a_full_disk_at_the_end_names_the_folder_and_loses_no_epoch(stopped_run, tmp_path, monkeypatch, disk,
                                                                     request):
    """The final files of a run do not fit: a clear error, no temporary file left, the commits kept."""
    if disk == "full tmpfs":  # a real one: HDF5 crashed the process writing best.weights.h5 here
        root = request.getfixturevalue("tmpfs")
        run_dir = root / "run"
        shutil.copytree(stopped_run[0], run_dir)
        real = folder.write_final
        monkeypatch.setattr(folder, "write_final", lambda run_dir, *args: (fill(root, 64 << 10),
                                                                            real(run_dir, *args))[1])
    else:  # the space check passes, the write fails half-way
        run_dir = copy_of(stopped_run, tmp_path)

        def save(self, path, *args, **kwargs):
            Path(path).write_bytes(b"half a model")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(training.CommitError) as error:
        train(run_dir, resume=True)
    cause = re.escape("No space left on device") if disk == "failed write" else r"\d+\.\d MB free"
    assert re.search(rf"cannot write model.keras to {re.escape(str(run_dir))} \({cause}\); it needs about ",
                     str(error.value)), str(error.value)
    assert f"MB free. Epochs 1..2 are committed in {run_dir / 'checkpoint'} and kept" in str(error.value)
    assert "--resume" in str(error.value)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith("tmp-") or p.name.endswith(".tmp")]
    assert checkpoint.load_state(run_dir)["epoch"] == 2 and not (run_dir / "summary.json").exists()
    monkeypatch.undo()
    if disk == "full tmpfs":
        (root / "filler").unlink()
    summary = train(run_dir, resume=True)  # space again: the run finishes from its last commit
    assert summary["epochs"] == 2 and (run_dir / "model.keras").is_file() and (run_dir / "best.weights.h5").is_file()


def test_config_records_the_setup_and_a_resume_on_another_warns_once_naming_each_difference(stopped_run, tmp_path):
    run_dir = copy_of(stopped_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    environment = config["environment"]
    assert set(environment) == {"threads", "onednn", "cpu", "tensorflow", "keras"}
    assert environment["tensorflow"] == tf.__version__ and environment["keras"] == keras.__version__
    config["environment"] = {**environment, "threads": 99, "onednn": "0"}
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.warns(folder.InexactResume) as caught:
        summary = train(run_dir, resume=True)  # warned, not refused
    assert summary["epochs"] == 2
    messages = [str(w.message) for w in caught if issubclass(w.category, folder.InexactResume)]
    assert len(messages) == 1
    assert f"onednn '0' then, {environment['onednn']!r} now; threads 99 then, {environment['threads']!r} now" \
        in messages[0]


def test_a_config_that_does_not_parse_is_named(stopped_run, tmp_path, nestzoo_cli):
    run_dir = copy_of(stopped_run, tmp_path)
    (run_dir / "config.json").write_text('{"model": ')
    message = f"{run_dir / 'config.json'} is damaged: not valid JSON"
    with pytest.raises(training.CheckpointError, match=message):
        train(run_dir, resume=True)
    (run_dir / "model.keras").write_bytes(b"")
    code, out = nestzoo_cli("evaluate", run_dir)
    assert code == 2 and message in out


def test_a_folder_is_claimed_by_one_live_process(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / checkpoint.LOCK
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": 0}))
        with pytest.raises(training.FolderInUse, match=f"^{tmp_path} is in use by process {sleeper.pid} on "
                                                        f"{socket.gethostname()} .* If no such process runs, remove "
                                                        f"{lock}"):
            with training.claim(tmp_path):
                pass
        lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
        with training.claim(tmp_path) as record:  # a killed run's lock is taken over
            assert json.loads(lock.read_text()) == record and record["pid"] == os.getpid()
            with pytest.raises(training.FolderInUse, match=f"in use by process {os.getpid()}"):
                with training.claim(tmp_path):  # even by the same process
                    pass
        assert not lock.exists() and not list(tmp_path.iterdir())  # released, nothing left
        lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started": 0}))
        with pytest.raises(training.FolderInUse, match="in use by process .* on elsewhere"):
            with training.claim(tmp_path):  # another host's process cannot be asked
                pass
    finally:
        sleeper.kill()
        sleeper.wait()

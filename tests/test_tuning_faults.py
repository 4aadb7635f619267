"""A damaged or contested sweep is refused with what is wrong named: a trial's folder gone, the best
trial's checkpoint gone or swapped, a state file that does not parse, a folder in use."""
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from nestzoo import tuning
from nestzoo.training import checkpoint

SPACE = tuning.WidthSpace(inputs="vector", blocks=2, width=(4, 8), features=2)
OPTIONS = dict(objective="val_loss", outputs=1, max_trials=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return (tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32),
            tf.data.Dataset.from_tensor_slices((x[64:], y[64:])).batch(32))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished") / "s"
    sweep = tuning.run_sweep(SPACE, data, directory, **OPTIONS)
    assert [r["status"] for r in sweep.rows] == ["COMPLETED"] * 3
    best = sweep.tuner.oracle.get_best_trials(1)[0].trial_id
    return directory, best


@pytest.fixture
def copy(finished, tmp_path):
    directory, best = finished
    shutil.copytree(directory, tmp_path / "s")
    return tmp_path / "s", best


def _resume(data, directory):
    return tuning.run_sweep(SPACE, data, directory, resume=True, **OPTIONS)


def test_an_intact_sweep_resumes_without_training(data, copy):
    directory, best = copy
    sweep = _resume(data, directory)
    assert [r["status"] for r in sweep.rows] == ["COMPLETED"] * 3 and sweep.best_model.exists()


def test_a_kill_after_a_trial_ended_but_before_the_oracle_forgot_it_does_not_rerun_it(data, copy):
    """keras-tuner's end_trial writes oracle.json still listing the ended trial as running; the state
    a SIGKILL leaves there is made here, and the resume trains nothing."""
    directory, _ = copy
    oracle = directory / tuning.PROJECT / "oracle.json"
    state = json.loads(oracle.read_text())
    last = state["end_order"].pop()
    state["ongoing_trials"] = {"tuner0": last}
    oracle.write_text(json.dumps(state))
    sweep = _resume(data, directory)
    starts = [e["trial"] for e in sweep.tuner.oracle.events.read() if e["event"] == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 3
    assert [r["status"] for r in sweep.rows] == ["COMPLETED"] * 3 and last in sweep.tuner.oracle.end_order


def test_a_trial_folder_removed_is_named(data, copy):
    directory, _ = copy
    shutil.rmtree(directory / tuning.PROJECT / "trial_1")
    with pytest.raises(ValueError, match=r"trial 1 of the sweep .* is damaged: .*trial_1/trial.json is missing"):
        _resume(data, directory)


@pytest.mark.parametrize("damage, problem", [("remove", "is missing"), ("swap", "is not the one the trial wrote")])
def test_the_best_trials_checkpoint_removed_or_swapped_is_named(data, copy, damage, problem):
    directory, best = copy
    project = directory / tuning.PROJECT
    target = project / f"trial_{best}" / "checkpoint.weights.h5"
    other = next(p for p in project.glob("trial_*/checkpoint.weights.h5") if p != target)
    target.unlink() if damage == "remove" else shutil.copy(other, target)
    with pytest.raises(ValueError, match=rf"trial {best} of the sweep .* is damaged: .*trial_{best}/"
                                         rf"checkpoint.weights.h5 {problem}"):
        _resume(data, directory)


@pytest.mark.parametrize("name", ["sweep.json", "tuner/oracle.json", "tuner/trial_0/trial.json"])
def test_a_state_file_that_does_not_parse_is_named(data, copy, name):
    directory, _ = copy
    (directory / name).write_text('{"truncated')
    with pytest.raises(ValueError, match=rf"{directory / name} is damaged \(not JSON"):
        _resume(data, directory)


def test_a_sweep_folder_in_use_is_refused(data, tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    with checkpoint.claim(directory):
        with pytest.raises(checkpoint.FolderInUse, match=rf"{directory} is in use by process"):
            tuning.run_sweep(SPACE, data, directory, **OPTIONS)
    assert not (directory / tuning.PROJECT).exists()

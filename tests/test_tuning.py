"""Width sweeps (nestzoo.tuning, `nestzoo tune`): the condition on every trained trial, the
report, bad input, repeatability, resume after SIGKILL, and keras-tuner's chief/worker mode on
127.0.0.1. Damaged sweeps: test_tuning_faults.py; keras-tuner's own tuners: test_tuning_keras.py."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nestzoo import basis, theory, tuning

ROOT = Path(__file__).resolve().parents[1]
N_IN, L, K_MAX = 5, 3, 4
# Image sweeps through the CLI: stages of 2, 1, 1 basic blocks, K = 2, M in [2, 12] (raised to 3), 1 epoch.
TINY_IMAGE = ["--blocks", "2", "1", "1", "--features", "2", "--width", "2", "12", "--epochs", "1", "--verbose", "0"]


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, N_IN)).astype("float32")
    y = (x @ rng.normal(size=(N_IN, 1)) + 0.1 * rng.normal(size=(320, 1))).astype("float32")
    return (tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(64),
            tf.data.Dataset.from_tensor_slices((x[256:], y[256:])).batch(64))


@pytest.fixture(scope="module")
def vector_sweep(regression, tmp_path_factory):
    space = tuning.WidthSpace(inputs="vector", variant="resnest", blocks=L, width=(4, 24), feature_range=(2, K_MAX),
                              learning_rate=(1e-3, 1e-2))
    directory = tmp_path_factory.mktemp("vector") / "sweep"
    return space, tuning.run_sweep(space, regression, directory, objective="val_loss", outputs=1, max_trials=3)


def _rows(directory):
    with open(directory / "report.csv") as f:
        return list(csv.DictReader(f))


def _trained_conditions(sweep):
    """The condition of every completed trial's trained model (its checkpoint reloaded)."""
    completed = [t for t in sweep.tuner.oracle.trials.values() if t.status == "COMPLETED"]
    return {t.trial_id: (theory.bottleneck_condition(m := sweep.tuner.load_model(t)), m) for t in completed}


def test_vector_sweep_trains_only_widths_that_satisfy_the_condition(vector_sweep):
    space, sweep = vector_sweep
    # M >= N_in + K (L - 1) for the largest K searched: the range starts there.
    assert sweep.tuner.hypermodel.bounds == {"M": (N_IN + K_MAX * (L - 1), 24)}
    conditions = _trained_conditions(sweep)
    assert len(conditions) == 3
    rows = {r["trial"]: r for r in _rows(sweep.directory)}
    for trial_id, (condition, model) in conditions.items():
        assert condition.holds and condition.margin >= 0
        assert basis.expansion(model).units == int(rows[trial_id]["M"])
        assert basis.block_layers(model, 1)["features"].units == int(rows[trial_id]["K"])
        assert int(rows[trial_id]["margin"]) == condition.margin
        assert int(rows[trial_id]["parameters"]) == model.count_params()


def test_report_files_and_best_model(vector_sweep):
    _, sweep = vector_sweep
    rows = _rows(sweep.directory)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert all(r["worker"] == "tuner0" and r["condition"] == "holds" and float(r["score"]) > 0 for r in rows)
    assert "| trial | worker | status | M | K | learning_rate | epochs |" in sweep.markdown
    assert "val_loss" in sweep.markdown and all(r["epochs"] == "1" for r in rows)
    assert (sweep.directory / "score_vs_width.png").stat().st_size > 1000
    best = min(rows, key=lambda r: float(r["score"]))
    model = keras.saving.load_model(sweep.best_model)
    assert basis.expansion(model).units == int(best["M"])


def test_image_sweep_on_digits_with_bayesian_optimization(tmp_path, monkeypatch):
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *args, **kwargs: figures.append(fig) or save(fig, *args, **kwargs))
    space = tuning.WidthSpace(blocks=(2, 1, 1), width=(2, 6), features=2)
    sweep = tuning.run_sweep(space, "digits", tmp_path / "s", tuner="bayesian", max_trials=2, epochs=1)
    # stage 0: M >= 1 channel + K (its last block does not count); stages 1, 2 of one block: 2M >= M, 4M >= 2M
    assert sweep.tuner.hypermodel.bounds == {"M": (3, 6)}
    conditions = _trained_conditions(sweep)
    assert len(conditions) == 2 and all(c.holds for c, _ in conditions.values())
    assert {r["status"] for r in sweep.rows} == {"COMPLETED"}
    # the fixed learning rate and epochs are shown; the plot names what was swept, stages numbered from 0
    assert {(r["learning_rate"], r["epochs"]) for r in sweep.rows} == {("0.1", 1)}
    (axes,) = figures[-1].axes
    assert axes.get_title() == "a-resnest (image) on digits: blocks 2/1/1, 1 epochs"
    assert axes.get_xlabel() == "M (stage 0 width)"


def test_allowed_violations_train_and_are_marked(regression, tmp_path):
    space = tuning.WidthSpace(inputs="vector", blocks=L, width=(4, 6), features=K_MAX, allow_violations=True)
    sweep = tuning.run_sweep(space, regression, tmp_path / "s", tuner="hyperband", objective="val_loss",
                             outputs=1, max_trials=2, epochs=2)
    rows = _rows(sweep.directory)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETED"}
    assert all(r["condition"] == "violated" and int(r["margin"]) < 0 and "violates" in r["note"] for r in rows)
    assert not any(c.holds for c, _ in _trained_conditions(sweep).values())


@pytest.mark.parametrize("change, message", [
    (dict(space=dict(width=(4, 12))), r"no M in \[4, 12\] satisfies .* need M >= 13"),
    (dict(space=dict(width=(20, 16))), r"min > max \(20 > 16\)"),
    (dict(tuner="grid"), r"unknown tuner 'grid'; valid choices: random, bayesian, hyperband"),
    (dict(objective="accuracy"), r"unknown objective 'accuracy'; valid choices: val_accuracy, val_loss"),
    (dict(max_trials=0), r"max_trials must be a positive integer"),
    (dict(space=dict(variant="densenest")), r"unknown resnet variant 'densenest'; valid choices"),
    (dict(space=dict(learning_rate=(0.01, float("inf")))), r"learning_rate must be a \(min, max\) pair of finite"),
    (dict(space=dict(inputs="image")), r"image inputs need a rank of 3, the data has \(5,\)"),
])
def test_bad_input_fails_before_training(regression, tmp_path, change, message):
    options = {**dict(inputs="vector", blocks=L, width=(4, 24), features=K_MAX), **change.pop("space", {})}
    with pytest.raises(ValueError, match=message):
        tuning.run_sweep(tuning.WidthSpace(**options), regression, tmp_path / "s",
                         **{**dict(objective="val_loss", outputs=1), **change})
    assert not (tmp_path / "s" / tuning.PROJECT).exists()


def test_a_directory_holding_another_sweep_is_refused(vector_sweep, regression):
    space, sweep = vector_sweep
    before = sorted(p.name for p in sweep.directory.iterdir())
    other = tuning.WidthSpace(inputs="vector", variant="resnest", blocks=L, width=(4, 30), feature_range=(2, K_MAX))
    with pytest.raises(ValueError, match="holds another sweep with a different search space .*overwrite=True"):
        tuning.run_sweep(other, regression, sweep.directory, objective="val_loss", outputs=1)
    with pytest.raises(ValueError, match="already holds this sweep; resume=True"):
        tuning.run_sweep(space, regression, sweep.directory, objective="val_loss", outputs=1, max_trials=3)
    assert sorted(p.name for p in sweep.directory.iterdir()) == before


def _tune(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "nestzoo.cli", "tune", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _statuses(directory):
    found = {}
    for path in (directory / tuning.PROJECT).glob("trial_*/trial.json"):
        try:
            found[path.parent.name[len("trial_"):]] = json.loads(path.read_text())["status"]
        except (OSError, ValueError):  # being written
            pass
    return found


def _events(directory):
    path = directory / tuning.EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(condition, seconds, processes=()):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out; output:\n" + "\n".join(p.stdout.read() for p in processes if p.poll() is not None)
        time.sleep(0.2)


def _stop(processes):
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def test_resume_after_sigkill_does_not_rerun_finished_trials(tmp_path):
    directory = tmp_path / "s"
    args = [*TINY_IMAGE, "--max-trials", "2", "--output", str(directory)]
    first = _tune(*args)
    try:
        _wait(lambda: "COMPLETED" in _statuses(directory).values(), 240, [first])
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        finished = {t for t, s in _statuses(directory).items() if s == "COMPLETED"}
        second = _tune(*args, "--resume")
        output = second.communicate(timeout=240)[0]
    finally:
        _stop([first])
    assert second.returncode == 0, output
    rows = _rows(directory)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 2
    starts = [e["trial"] for e in _events(directory) if e["event"] == "start"]
    assert all(starts.count(t) == 1 for t in finished) and finished < set(starts)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """A chief and workers tuner0, tuner1 on 127.0.0.1; tuner1 is killed in its second trial."""
    directory, patience = tmp_path_factory.mktemp("distributed") / "s", 6
    address = f"127.0.0.1:{_free_port()}"
    args = [*TINY_IMAGE, "--max-trials", "6", "--output", str(directory), "--patience", str(patience)]
    chief = _tune(*args, "--chief", address)
    workers = [_tune(*args, "--worker", address, "--worker-id", f"tuner{i}") for i in range(2)]
    processes = [chief, *workers]
    try:
        def second_trial_of_tuner1():
            mine = [e["trial"] for e in _events(directory) if e["worker"] == "tuner1" and e["event"] == "start"]
            return len(mine) >= 2 and _statuses(directory).get(mine[-1]) == "RUNNING"
        _wait(second_trial_of_tuner1, 300, processes)
        killed_at = time.time()
        workers[1].send_signal(signal.SIGKILL)
        outputs = [p.communicate(timeout=300)[0] for p in (chief, workers[0])]
    finally:
        _stop(processes)
    return directory, patience, chief, workers, outputs, killed_at


def test_chief_and_two_workers_report_every_trial(distributed):
    directory, _, chief, workers, outputs, _ = distributed
    assert chief.returncode == 0 and workers[0].returncode == 0, outputs
    rows = _rows(directory)
    assert len(rows) == 6
    ran = {w for r in rows if r["status"] == "COMPLETED" for w in r["worker"].split("/")}
    assert ran == {"tuner0", "tuner1"}
    assert all(r["condition"] == "holds" for r in rows)


def test_a_worker_killed_mid_trial_is_reported_and_its_trial_rerun(distributed):
    directory, patience, chief, workers, outputs, killed_at = distributed
    lost = [e for e in _events(directory) if e["event"] == "lost"]
    assert [e["worker"] for e in lost] == ["tuner1"]
    row = next(r for r in _rows(directory) if r["trial"] == lost[0]["trial"])
    assert "lost by tuner1" in row["note"] and "run 2 times" in row["note"]
    # tuner0 is told to wait, not to stop, while tuner1's trial runs, so it re-runs the lost trial
    assert row["status"] == "COMPLETED" and row["worker"] == "tuner1/tuner0"
    # found lost within patience (+ the chief's 0.5 s check and the worker's last ping, patience / 4, before the kill)
    assert lost[0]["time"] - killed_at < 1.25 * patience + 1
    assert chief.returncode == 0 and workers[0].returncode == 0, outputs


def test_a_worker_whose_chief_is_gone_stops_within_patience(tmp_path):
    worker = _tune(*TINY_IMAGE, "--output", str(tmp_path / "s"), "--patience", "3",
                   "--worker", f"127.0.0.1:{_free_port()}", "--worker-id", "tuner0")
    try:
        output = worker.communicate(timeout=120)[0]
    finally:
        _stop([worker])
    assert worker.returncode == 3 and "the chief has not answered for 3 s; worker tuner0 stops" in output


@pytest.mark.parametrize("args, message", [
    (["--tuner", "grid"], "unknown tuner 'grid'; valid choices: random, bayesian, hyperband"),
    (["--width", "20", "16"], "width (M): min > max (20 > 16)"),
    (["--blocks", "4", "4", "4", "--features", "8", "--width", "4", "16"],
     "no M in [4, 16] satisfies the bottleneck condition M >= sum K_i for blocks=(4, 4, 4), K=(8, 8, 8): "
     "these depths need M >= 25"),
    (["--lr-range", "0.01", "inf"], "learning_rate must be a (min, max) pair of finite positive numbers"),
    (["--objective", "accuracy"], "unknown objective 'accuracy'; valid choices: val_accuracy, val_loss"),
    (["--worker", "127.0.0.1:9"], "a worker needs --worker-id"),
])
def test_the_command_reports_bad_input(tmp_path, capsys, args, message):
    from nestzoo import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--output", str(tmp_path / "s"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s" / tuning.PROJECT).exists()


def test_bad_names_are_refused_before_tensorflow_is_imported(tmp_path):
    code = ("import sys\nfrom nestzoo import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, "tune", "--tuner", "grdi", "--output", str(tmp_path / "s")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["exit", "2", "False"], result
    assert "unknown tuner 'grdi'; valid choices: random, bayesian, hyperband" in result.stderr


def test_a_chief_on_a_port_in_use_is_refused_at_once(tmp_path, capsys):
    from nestzoo import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            cli.main(["tune", "--output", str(tmp_path / "s"), "--chief", f"127.0.0.1:{port}"])
    assert exit_.value.code == 2
    assert f"the chief cannot serve on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_the_same_seed_gives_the_same_trials_and_scores_in_two_sweeps_at_once(tmp_path):
    """Two `nestzoo tune` started together with one --seed: the same widths and the same scores."""
    sweeps = [tmp_path / "a", tmp_path / "b"]
    processes = [_tune(*TINY_IMAGE, "--max-trials", "1", "--seed", "3", "--output", str(d)) for d in sweeps]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        _stop(processes)
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert not any("shuffle" in output for output in outputs)  # Keras's shuffle=True warning
    first, second = ([(r["M"], r["status"], r["score"]) for r in _rows(d)] for d in sweeps)
    assert first == second and {status for _, status, _ in first} == {"COMPLETED"}

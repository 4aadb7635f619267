"""`nestzoo train --chief/--worker`: a grid of runs on keras-tuner's distributed oracle, on 127.0.0.1.

One chief and two workers train resnet20 x {standard, a-resnest} x seeds {0, 1}, 2 epochs
each, on digits; the worker that owns the first run to commit epoch 1 is SIGKILLed, and
its run is finished by the other worker, bit for bit what the same run trains alone.
(One arch, not the issue's two: a second arch's runs would double the suite's time.)
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
GRID = ["--arch", "resnet20", "--variant", "standard", "a-resnest", "--seeds", "0", "1", "--dataset", "digits",
        "--epochs", "2", "--verbose", "0"]
PATIENCE = "3"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nestzoo(*argv):
    return subprocess.Popen([sys.executable, "-m", "nestzoo.cli", "train", *map(str, argv)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _committed(run_dir):
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _kill_first_owner(output, workers, deadline):
    """SIGKILL the worker training the first run that has committed epoch 1 (of 2); its run directory."""
    while time.monotonic() < deadline:
        for run_dir in sorted(output.glob("resnet20.*/seed*")):
            if _committed(run_dir) >= 1 and not (run_dir / "summary.json").exists():
                try:
                    pid = json.loads((run_dir / "nestzoo.lock").read_text())["pid"]
                except (OSError, ValueError):
                    continue
                victim = next((w for w in workers if w.pid == pid), None)
                if victim is not None:
                    victim.send_signal(signal.SIGKILL)
                    return run_dir, victim
        time.sleep(0.02)
    pytest.fail("no run committed its first epoch in time")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from nestzoo import training

    root = tmp_path_factory.mktemp("grid")
    output, port = root / "table", _free_port()
    address = f"127.0.0.1:{port}"
    chief = _nestzoo(*GRID, "--output", output, "--chief", address, "--patience", PATIENCE)
    workers = [_nestzoo(*GRID, "--output", output, "--worker", address, "--worker-id", f"w{i}",
                        "--patience", PATIENCE) for i in range(2)]
    lonely = _nestzoo(*GRID, "--output", root / "none", "--worker", f"127.0.0.1:{_free_port()}", "--worker-id",
                      "w9", "--patience", "2")  # a chief that never appears
    killed_dir, victim = _kill_first_owner(output, workers, time.monotonic() + 240)
    victim.wait()  # reaped: a zombie would still hold its run's claim on this host
    killed_epoch = _committed(killed_dir)
    survivor = next(w for w in workers if w is not victim)
    processes = {"chief": chief, "survivor": survivor, "victim": victim, "lonely": lonely}
    outputs = {name: p.communicate(timeout=300)[0] for name, p in processes.items()}
    codes = {name: p.returncode for name, p in processes.items()}
    # the same run alone, in this process (same machine, same TensorFlow defaults)
    alone = root / "alone"
    training.train(killed_dir.parent.name, "digits", "paper", output_dir=alone, seed=int(killed_dir.name[4:]),
                   epochs=2, verbose=0)
    return dict(output=output, killed_dir=killed_dir, killed_epoch=killed_epoch, outputs=outputs, codes=codes,
                alone=alone)


def test_every_run_is_trained_once_and_the_table_holds_every_cell(grid):
    assert grid["codes"]["chief"] == 0 and grid["codes"]["survivor"] == 0, grid["outputs"]
    assert grid["codes"]["victim"] == -signal.SIGKILL
    runs = sorted(grid["output"].glob("resnet20.*/seed*"))
    assert [f"{r.parent.name}/{r.name}" for r in runs] == [
        "resnet20.a-resnest/seed0", "resnet20.a-resnest/seed1", "resnet20.standard/seed0", "resnet20.standard/seed1"]
    for run in runs:
        epochs = [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()[1:]]
        assert epochs == ["1", "2"], (run, epochs)  # each epoch trained once: never restarted, never run twice
        assert (run / "summary.json").exists() and not (run / "checkpoint").exists()
    rows = {(r["arch"], r["variant"]): r for r in csv.DictReader(open(grid["output"] / "results.csv"))}
    assert set(rows) == {("resnet20", "standard"), ("resnet20", "a-resnest")}
    assert all(r["runs"] == "2" and r["seeds"] == "0 1" and r["accuracy_std"] != "" for r in rows.values())
    assert all(r["published"] == "" for r in rows.values())  # digits is not the paper's data set
    markdown = (grid["output"] / "results.md").read_text()
    assert "| resnet20 |" in markdown and "mean ± sample std over 2 seeds" in markdown
    assert "4 of 4 runs finished" in grid["outputs"]["chief"]


def test_a_killed_workers_run_is_finished_by_the_other_bit_for_bit(grid):
    import nestzoo

    run = grid["killed_dir"]
    events = [json.loads(line) for line in (grid["output"] / "trials.jsonl").read_text().splitlines()]
    lost = [e for e in events if e["event"] == "lost"]
    assert len(lost) == 1, events
    starts = [e["worker"] for e in events if e["event"] == "start" and e["trial"] == lost[0]["trial"]]
    assert len(starts) == 2 and starts[0] != starts[1]  # handed over to the other worker
    assert f"resuming {run} after epoch {grid['killed_epoch']} of 2" in grid["outputs"]["survivor"]
    ours, alone = nestzoo.load_model(run / "model.keras"), nestzoo.load_model(grid["alone"] / "model.keras")
    for mine, theirs in zip(ours.get_weights(), alone.get_weights(), strict=True):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


def test_a_worker_with_other_arguments_is_refused(tmp_path):
    """The chief's space holds the digest of its grid; a worker whose digest differs names what differs."""
    from types import SimpleNamespace

    from nestzoo.recipe import get_recipe
    from nestzoo.training import grid

    chiefs = grid.fingerprint(["resnet20.standard"], [0, 1], "digits", {"recipe": get_recipe("paper", epochs=2)})
    mine = grid.fingerprint(["resnet20.standard"], [0, 1], "digits", {"recipe": get_recipe("paper", epochs=3)})
    grid._prepare_directory(tmp_path, chiefs, resume=False)
    space = grid._hyperparameters(chiefs)
    searcher = SimpleNamespace(oracle=SimpleNamespace(get_space=lambda: space), output_dir=tmp_path)
    grid._check_worker(searcher, chiefs)  # the same arguments: accepted
    with pytest.raises(ValueError, match=r"other arguments than its chief \(recipe differ from the chief's"):
        grid._check_worker(searcher, mine)
    with pytest.raises(ValueError, match="holds another grid \\(recipe differ"):
        grid._prepare_directory(tmp_path, mine, resume=True)  # nor may a chief reuse its folder


def test_a_chief_that_never_appears_stops_the_worker(grid):
    assert grid["codes"]["lonely"] == 3, grid["outputs"]["lonely"]
    assert "the chief has not answered for 2 s" in grid["outputs"]["lonely"]


def test_two_workers_cannot_claim_one_run(tmp_path):
    """A run's folder is claimed by the process training it: a second one is refused before it trains."""
    from nestzoo import training
    from nestzoo.training import checkpoint

    run_dir = tmp_path / "resnet20.standard" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / checkpoint.LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                       "started": time.time()}))  # a live process's claim
    with pytest.raises(training.FolderInUse, match=f"in use by process {os.getppid()}"):
        training.train("resnet20.standard", "digits", output_dir=run_dir, resume=True, epochs=1)


def test_bad_grid_options_are_refused_before_tensorflow(nestzoo_cli, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out = nestzoo_cli("train", "--output", tmp_path, "--chief", f"127.0.0.1:{busy.getsockname()[1]}")
    assert code == 2 and "cannot serve on 127.0.0.1" in out and "pick a free port" in out
    code, out = nestzoo_cli("train", "--chief", "127.0.0.1:8000")
    assert code == 2 and "--chief/--worker need --output" in out
    code, out = nestzoo_cli("train", "--output", tmp_path, "--worker", "127.0.0.1:8000")
    assert code == 2 and "a worker needs --worker-id" in out
    code, out = nestzoo_cli("train", "--paper", "1", "--arch", "resnet20")
    assert code == 2 and "--paper 1 names the archs and variants of Table 1" in out


def test_a_reloaded_grid_continues_its_walk(tmp_path):
    """keras-tuner 1.4's GridSearchOracle does not save its walk of the grid; the chief restarted with
    --resume rebuilds it: the interrupted runs are handed out again, then the untried ones, each once."""
    from nestzoo.training import grid

    space = grid._hyperparameters(grid.fingerprint(["a.x", "b.y"], [0, 1], "digits", {}))

    def oracle():
        made = grid.GridOracle(objective=grid.OBJECTIVE, hyperparameters=space.copy(), max_retries_per_trial=1)
        made._set_project_dir(str(tmp_path), "grid")
        return made

    first = oracle()
    started = [first.create_trial(w) for w in ("w0", "w1")]  # the chief dies while they run
    again = oracle()
    again.reload()
    handed = [again.create_trial(w) for w in ("w0", "w1", "w2")]
    again.update_trial(handed[2].trial_id, {"test_accuracy": 0.5})
    handed[2].status = "COMPLETED"
    again.end_trial(handed[2])  # the grid walks on from a finished trial
    handed.append(again.create_trial("w2"))
    assert {t.trial_id for t in handed[:2]} == {t.trial_id for t in started}  # retried first
    values = [(t.hyperparameters.get("model"), t.hyperparameters.get("seed")) for t in handed]
    assert sorted(values) == [("a.x", 0), ("a.x", 1), ("b.y", 0), ("b.y", 1)]  # every cell once

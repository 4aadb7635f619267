"""A table's runs (arch x variant x seed) spread over machines by keras-tuner's distributed oracle.

    nestzoo train --paper 1 --output /shared/table1 --chief 10.0.0.1:8000               # one process
    nestzoo train --paper 1 --output /shared/table1 --worker 10.0.0.1:8000 --worker-id gpu0   # one per GPU

The grid is keras-tuner's `GridSearchOracle` over two choices, ``model`` (the registry
names) and ``seed``, with the test accuracy as its objective; each trial is one
`nestzoo.training.train` run into ``<output>/<arch.variant>/seed<s>/``, the folder a
local run uses, with ``resume=True``, so a trial handed to another worker continues
from the run's last committed epoch (bit for bit what the uninterrupted run computes on
the same machine type) and a finished run is never trained again. The hardening is
that of `nestzoo tune` (`nestzoo.tuning.distributed`, `nestzoo.tuning.tuners`):
atomic keras-tuner state, a trial whose worker is silent for ``patience`` s is handed
to keras-tuner's retry queue, workers stop within ``patience`` s of the chief's death,
and the chief restarted with ``resume=True`` reloads the grid. A run's folder is also
claimed by its process (`nestzoo.training.checkpoint.claim`), so two workers never
train one run. The chief's grid holds a digest of everything a run's result depends
on; a worker started with other arguments is refused on its first contact.
results.md / results.csv are rewritten after every finished run (by its worker) and
at the end (by the chief).
"""
import hashlib
import json
import os
import threading
from pathlib import Path

import keras_tuner

from nestzoo.training import checkpoint, report
from nestzoo.training.run import train
from nestzoo.tuning import _keras_tuner
from nestzoo.tuning.cluster import check_port, role
from nestzoo.tuning.distributed import EventLog, WatchedOracle, WorkerGuard, watch_chief
from nestzoo.tuning.tuners import SweepTuner, read_json

PROJECT = "grid"  # keras-tuner's project directory inside the output folder
FINGERPRINT_FILE = "grid.json"
OBJECTIVE = keras_tuner.Objective("test_accuracy", "max")


class GridOracle(WatchedOracle, _keras_tuner.AtomicOracleState, keras_tuner.oracles.GridSearchOracle):
    """keras-tuner's GridSearchOracle, watched, its state written atomically, and reloadable."""

    def reload(self):
        """keras-tuner's reload (its interrupted trials go to the retry queue), and the grid's walk rebuilt."""
        super().reload()
        _keras_tuner.rebuild_grid_order(self)


class GridTuner(SweepTuner, keras_tuner.Tuner):
    """keras-tuner tuner whose trial is one nestzoo training run (`train_options` go to `train`)."""

    oracle_class = GridOracle

    def __init__(self, *, output_dir, data, train_options, **options):
        self.output_dir, self.data, self.train_options = Path(output_dir), data, train_options
        super().__init__(None, **options)

    def run_trial(self, trial, *args, **kwargs):
        """Train (or continue, or just read) the trial's run; its test accuracy is the objective."""
        model, seed = trial.hyperparameters.get("model"), trial.hyperparameters.get("seed")
        summary = train(model, self.data, seed=seed, output_dir=self.output_dir / model / f"seed{seed}",
                        resume=True, **self.train_options)
        report.write_results(None, self.output_dir)
        return {"test_accuracy": summary["test_accuracy"]}


def fingerprint(models, seeds, data, train_options):
    """What every process of a grid must agree on, as JSON types (recipe, precision, ... of the runs)."""
    options = {k: v for k, v in train_options.items() if k != "verbose"}
    recipe = options.get("recipe")
    if hasattr(recipe, "to_dict"):
        options["recipe"] = recipe.to_dict()
    return json.loads(json.dumps({"models": list(models), "seeds": list(seeds), "data": data, **options},
                                 sort_keys=True, default=str))


def _digest(grid):
    return hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:16]


def _hyperparameters(grid):
    hp = keras_tuner.HyperParameters()
    hp.Choice("model", grid["models"])
    hp.Choice("seed", grid["seeds"])
    hp.Fixed("grid", _digest(grid))
    return hp


def _prepare_directory(output, grid, resume):
    """The chief's check: `output` holds no grid, or this one (with resume)."""
    path, started = output / FINGERPRINT_FILE, (output / PROJECT / "oracle.json").exists()
    if path.exists():
        stored = read_json(path)
        if stored != grid:
            changed = sorted(k for k in set(stored) | set(grid) if stored.get(k) != grid.get(k))
            raise ValueError(f"{output} holds another grid ({', '.join(changed)} differ); use another --output")
        if started and not resume:
            raise ValueError(f"{output} already holds this grid; --resume continues it")
    checkpoint.atomic_write_text(path, json.dumps(grid, indent=1))


def _check_worker(searcher, grid):
    """Refuse a worker whose arguments differ from its chief's (the grid digest of the chief's space)."""
    theirs = searcher.oracle.get_space().values.get("grid")
    if theirs != _digest(grid):
        stored, detail = searcher.output_dir / FINGERPRINT_FILE, ""
        if stored.exists():
            chief = read_json(stored)
            changed = sorted(k for k in set(chief) | set(grid) if chief.get(k) != grid.get(k))
            detail = f" ({', '.join(changed)} differ from the chief's, in {stored})"
        raise ValueError(f"this worker was started with other arguments than its chief{detail}: start every "
                         "worker with the chief's arguments (arch, variant, seeds, data set, recipe, output)")


def run_grid(models, data, seeds, *, output_dir, patience=60.0, resume=False, **train_options):
    """Train every model x seed as keras-tuner trials: the chief's or a worker's part (`nestzoo.tuning.cluster`
    environment), or alone (every run in this process, as `train_seeds` does).

    models: registry names; data: a data set name; `train_options` go to `train`
    (recipe, precision, validation, ...). patience: seconds of silence after which a
    worker stops, the chief hands a silent worker's run to another, and a chief with no
    run going and no worker ends. Returns (outcome, summaries of every finished run in
    `output_dir`): outcome "finished", "abandoned" (the chief heard no worker for
    `patience` s) or "worker done".
    """
    if not (isinstance(patience, (int, float)) and 0 < patience < float("inf")):
        raise ValueError(f"patience must be a finite number of seconds > 0, got {patience!r}")
    models, seeds = list(models), list(seeds)
    if not models or not seeds:
        raise ValueError("a grid needs at least one model and one seed")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    grid = fingerprint(models, seeds, data, train_options)
    mode = role()
    if mode == "chief":
        check_port(os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
    options = dict(output_dir=output, data=data, train_options=train_options, objective=OBJECTIVE,
                   hyperparameters=_hyperparameters(grid), directory=str(output), project_name=PROJECT,
                   max_retries_per_trial=1, events=EventLog(output / "trials.jsonl"))
    if mode == "worker":
        searcher = GridTuner(**options)
        searcher.guard = WorkerGuard(searcher.oracle, patience)
        searcher.guard.start()
        _check_worker(searcher, grid)
        searcher.search()
        searcher.guard.stopped.set()
        return "worker done", report.finished_summaries(output)
    (output / PROJECT).mkdir(exist_ok=True)
    with checkpoint.claim(output / PROJECT):
        _prepare_directory(output, grid, resume)
        searcher = GridTuner(**options)
        if mode == "chief":
            threading.Thread(target=searcher.search, daemon=True, name="nestzoo-chief").start()
            outcome = watch_chief(searcher.oracle, patience)
        else:
            searcher.search()
            outcome = "finished"
    summaries = report.finished_summaries(output)
    if summaries:
        report.write_results(summaries, output)
    return outcome, summaries

"""`run_sweep`: a width sweep in a directory, run, resumed, or joined as a keras-tuner worker."""
import json
import math
import os
import shutil
import threading
from pathlib import Path

import tensorflow as tf

from nestzoo.data import splits
from nestzoo.specs import positive_int
from nestzoo.training import checkpoint
from nestzoo.tuning.cluster import check_port, role
from nestzoo.tuning.distributed import EventLog, WorkerGuard, watch_chief
from nestzoo.tuning.hypermodel import WidthHyperModel
from nestzoo.tuning.report import Sweep, write_report
from nestzoo.tuning.space import OBJECTIVES, TUNERS as TUNER_NAMES, check_choice
from nestzoo.tuning.tuners import TUNERS, read_json

SPACE_FILE = "sweep.json"
EVENTS_FILE = "trials.jsonl"
PROJECT = "tuner"  # keras-tuner's project directory inside the sweep directory
DEFAULT_VALIDATION = 0.1  # of a data set name's training set, held out to score the trials


def _fingerprint(hypermodel, tuner, objective, epochs):
    return {"space": hypermodel.space.to_dict(), "bounds": {k: list(v) for k, v in hypermodel.bounds.items()},
            "input_shape": list(hypermodel.input_shape), "classes": hypermodel.classes,
            "outputs": hypermodel.outputs, "recipe": hypermodel.recipe.name, "seed": hypermodel.seed,
            "tuner": tuner, "objective": objective, "epochs": epochs}


def _prepare_directory(directory, fingerprint, resume, overwrite, worker):
    """Create the sweep directory, or refuse one holding a sweep that this call would mix up with.

    A worker joins whatever sweep of the same search space is there (its chief's).
    """
    path, started = directory / SPACE_FILE, (directory / PROJECT / "oracle.json").exists()
    if path.exists():
        stored = read_json(path)
        if stored != fingerprint and not (overwrite and not worker):
            changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ValueError(f"{directory} holds another sweep with a different search space ({', '.join(changed)} "
                             "differ); use another directory, or overwrite=True (--overwrite) to replace it")
        if overwrite and not worker:
            _empty(directory)
        elif started and not (resume or worker):
            raise ValueError(f"{directory} already holds this sweep; resume=True (--resume) continues it, "
                             "overwrite=True (--overwrite) starts it again")
    if not path.exists():
        checkpoint.atomic_write_text(path, json.dumps(fingerprint, indent=1))


def _empty(directory):
    """Remove a sweep's files, keeping this process's claim on the directory."""
    for path in directory.iterdir():
        if path.name != checkpoint.LOCK:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _flattened(dataset, size):
    """Images as vectors in R^size, size = h w c."""
    return dataset.map(lambda x, y: (tf.reshape(x, (-1, size)), y))


def _data(data, space, batch_size, seed, validation, epochs):
    """(splits, input shape, training batches, model.fit's other data arguments) of a sweep's data.

    The training batches of a data set name or arrays are `epochs` epochs of
    `Splits.epochs`, each epoch's order a function of (seed, epoch), as a trial repeats them.
    """
    if validation is None and isinstance(data, str):
        validation = DEFAULT_VALIDATION
    parts = splits(data, batch_size, seed=seed, validation=validation)
    if parts.validation is None:
        raise ValueError("a sweep scores its trials on validation data: give a validation fraction or count, "
                         "or (train, validation) datasets")
    train, steps = (parts.epochs(0, epochs), parts.steps_per_epoch) if parts.epochs else (parts.train, None)
    val, input_shape = parts.validation, parts.input_shape
    if space.inputs == "vector" and len(input_shape) == 3:
        input_shape = (math.prod(input_shape),)
        train, val = _flattened(train, input_shape[0]), _flattened(val, input_shape[0])
    return parts, input_shape, train, dict(validation_data=val, epochs=epochs, steps_per_epoch=steps)


def run_sweep(space, data, directory, *, tuner="random", objective="val_accuracy", max_trials=4, epochs=1,
              batch_size=64, recipe="quick", classes=None, outputs=None, validation=None, seed=1, resume=False,
              overwrite=False, patience=60.0, verbose=0):
    """Run (or, as a keras-tuner worker, join) a width sweep in `directory`, and report it.

    space: a `WidthSpace`. data: anything `nestzoo.data.splits` takes: a data set name
    (a `validation` fraction or count of its training set, default 0.1, is held out),
    `nestzoo.data.Datasets`, (train, validation) batched tf.data datasets (give
    `classes`, or `outputs` for regression), or (x, y) arrays with `validation`.
    tuner: "random", "bayesian" or "hyperband" (whose max_epochs is `epochs`).
    objective: "val_accuracy" or "val_loss" (regression: "val_loss"). seed: the
    tuner's, and with each trial's values its weights and data order, so the same
    seed repeats the same trials with the same scores on one machine. resume:
    continue the sweep in `directory` (keras-tuner reloads it; finished trials are
    not re-run). overwrite: replace the sweep there. patience: the distributed bound
    in seconds (`nestzoo.tuning.distributed`). Everything is checked before the first
    trial trains.

    Returns a `Sweep` (a worker's has no rows: the chief reports).
    """
    check_choice("tuner", tuner, TUNER_NAMES)
    check_choice("objective", objective, OBJECTIVES)
    positive_int("max_trials", max_trials)
    positive_int("epochs", epochs)
    if outputs is not None and objective != "val_loss":
        raise ValueError("a regression sweep (outputs=...) has no accuracy: use objective='val_loss'")
    if not (isinstance(patience, (int, float)) and math.isfinite(patience) and patience > 0):
        raise ValueError(f"patience must be a finite number of seconds > 0, got {patience!r}")
    mode = role()
    if mode == "chief":
        check_port(os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
    parts, input_shape, train, fit = _data(data, space, batch_size, seed, validation, epochs)
    fit["verbose"] = verbose
    if outputs is None:
        classes = classes or parts.num_classes
        if classes is None:
            raise ValueError("with tf.data datasets or arrays give classes=..., or outputs=... for regression")
    hypermodel = WidthHyperModel(space, input_shape, classes=classes, outputs=outputs, recipe=recipe, seed=seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(hypermodel, tuner, objective, epochs)
    if mode == "worker":  # a worker works in its chief's sweep directory
        _prepare_directory(directory, fingerprint, resume, overwrite, worker=True)
        searcher = _tuner(hypermodel, directory, tuner, objective, max_trials, epochs, seed)
        searcher.guard = WorkerGuard(searcher.oracle, patience)
        searcher.guard.start()
        searcher.search(train, **fit)
        searcher.guard.stopped.set()
        return Sweep(directory, [], objective, searcher, outcome="worker done")
    with checkpoint.claim(directory):
        _prepare_directory(directory, fingerprint, resume, overwrite, worker=False)
        searcher = _tuner(hypermodel, directory, tuner, objective, max_trials, epochs, seed)
        searcher.oracle.max_trials = max_trials  # Hyperband: caps its brackets
        if mode == "chief":  # keras-tuner's chief serves until the process ends; nestzoo decides when
            threading.Thread(target=searcher.search, daemon=True, name="nestzoo-chief").start()
            outcome = watch_chief(searcher.oracle, patience)
        else:
            searcher.search(train, **fit)
            outcome = "finished"
        return write_report(searcher, hypermodel, directory, objective, searcher.oracle.events.read(),
                            data_name=parts.name, epochs=epochs, outcome=outcome)


def _tuner(hypermodel, directory, tuner, objective, max_trials, epochs, seed):
    """The sweep's keras-tuner tuner (on a worker, its oracle is keras-tuner's client of the chief's)."""
    budget = {"max_epochs": epochs} if tuner == "hyperband" else {"max_trials": max_trials}
    return TUNERS[tuner](hypermodel, objective=objective, directory=str(directory), project_name=PROJECT,
                         seed=seed, max_retries_per_trial=1, events=EventLog(directory / EVENTS_FILE), **budget)

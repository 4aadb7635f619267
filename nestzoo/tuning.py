"""keras-tuner sweeps of the expansion width M that honour the bottleneck condition (Section 3.2).

    from nestzoo import tuning
    space = tuning.WidthSpace(family="image", blocks=(1, 1, 1), width=(4, 32), features=(2, 4, 8))
    sweep = tuning.run_sweep(space, "digits", "sweeps/w", tuner="bayesian", max_trials=8, epochs=2)
    print(sweep.markdown)          # also sweeps/w/report.csv, report.md, score_vs_width.png, best_model.keras

The user fixes the variant, the family (``"image"``: stages of residual blocks;
``"vector"``: ``arch="mlp"``), the depths and the block type; the search covers M (one
M with fixed stage ``ratios``, or one range per stage), and K and the learning rate
when ranges are given for them.

**The condition holds by construction.** Before any trial, each M range is raised to
the smallest width for which `nestzoo.theory.bottleneck_condition` holds for every
point of the search space (the largest K searched, and in per-stage mode the previous
stage at its upper bound, since a stage's input is its K_0); an upper bound that no
width satisfies is an error naming the width the depths need. So no trial is spent
on a violating network. ``allow_violations=True`` keeps the ranges as given, for
studying the paper's diminishing feature reuse; those trials are marked in the
report. As a guard, `WidthHyperModel.build` also checks the built model itself.

**Resumable.** Started again on the same directory with ``resume=True``,
keras-tuner reloads the sweep: finished trials are kept, the interrupted one re-runs.
keras-tuner writes its state files in place; nestzoo makes those writes atomic, so a
SIGKILL at any moment leaves a state that reloads.

**Distributed.** keras-tuner's own chief/worker mode (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``; ``nestzoo tune --chief`` /
``--worker`` set them). keras-tuner alone lets a worker wait up to an hour for a chief
that is gone and a chief wait forever for a dead worker's trial; nestzoo bounds both
with ``patience`` seconds (README, "Width sweeps"): a worker pings the chief every
``patience / 4`` s and exits (status 3) after ``patience`` s without an answer; the
chief declares a running trial lost after ``patience`` s without its worker's ping
and hands it to keras-tuner's retry queue (re-run once by another worker, else
failed), and ends when every worker has stopped, or after ``patience`` s with no
trial running and no worker heard from.
"""
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import keras
import keras_tuner
import tensorflow as tf
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine.trial import TrialStatus

from nestzoo import registry, specs, theory
from nestzoo.builders import build_model
from nestzoo.recipe import get_recipe
from nestzoo.training import checkpoint
from nestzoo.training.run import is_resnest, loss_for

FAMILIES = ("image", "vector")
OBJECTIVES = ("val_accuracy", "val_loss")
ROLES = ("chief", "worker")
SPACE_FILE = "sweep.json"
EVENTS_FILE = "trials.jsonl"
PROJECT = "tuner"  # keras-tuner's project directory inside the sweep directory
_SEARCH_LIMIT = 2 ** 20  # widths tried when telling the user which M the depths need


def _range(name, value, kind=int):
    """(min, max) of positive numbers, or a ValueError saying what is wrong."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ValueError(f"{name} must be a (min, max) pair of positive numbers, got {value!r}")
    low, high = (kind(v) for v in value)
    if low > high:
        raise ValueError(f"{name}: min > max ({low} > {high})")
    return low, high


@dataclasses.dataclass(frozen=True)
class WidthSpace:
    """What a width sweep searches, and what it keeps fixed.

    family: "image" (stages of residual blocks) or "vector" (``arch="mlp"``).
    variant: standard, resnest, bn-resnest or a-resnest. blocks: blocks per stage
    (image) or L (vector). block: "basic" or "pointwise" (image).
    width: the M range (min, max); image: one M, stage s getting ``M * ratios[s]``,
        or one (min, max) per stage to search every stage's M.
    ratios: image only: stage multipliers of M, and of a searched K.
    features: a fixed K (image: an int or one per stage), or None with feature_range.
    feature_range: (min, max) of K to search (image: K of stage s is ``K * ratios[s]``).
    learning_rate: (min, max) to search on a log scale; None keeps the recipe's.
    allow_violations: keep the M ranges as given, so violating trials train (marked).
    """

    family: str = "image"
    variant: str = "a-resnest"
    blocks: object = (1, 1, 1)
    block: str = "basic"
    width: tuple = (4, 32)
    ratios: tuple = (1, 2, 4)
    features: object = None
    feature_range: tuple = None
    learning_rate: tuple = None
    allow_violations: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; valid choices: {', '.join(FAMILIES)}")
        object.__setattr__(self, "variant", registry.canonical_variant(self.variant, "resnet"))
        if self.block not in specs.BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}; valid choices: {', '.join(specs.BLOCK_TYPES)}")
        if (self.features is None) == (self.feature_range is None):
            raise ValueError("give features (a fixed K) or feature_range (min, max) to search K, not both or neither")
        if self.feature_range is not None:
            object.__setattr__(self, "feature_range", _range("feature_range (K)", self.feature_range))
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", _range("learning_rate", self.learning_rate, float))
        if self.family == "vector":
            specs.positive_int("blocks (L)", self.blocks)
            object.__setattr__(self, "width", _range("width (M)", self.width))
            if self.features is not None:
                specs.positive_int("features (K)", self.features)
            return
        blocks = specs.positive_ints("blocks (per stage)", self.blocks, len(self.ratios or (1, 1, 1)))
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "ratios", specs.positive_ints("ratios (per stage)", self.ratios, len(blocks)))
        if len(self.ratios) != len(blocks):
            raise ValueError(f"ratios need one entry per stage ({len(blocks)}), got {self.ratios!r}")
        if self.per_stage:
            if len(self.width) != len(blocks):
                raise ValueError(f"per-stage width ranges need one (min, max) per stage ({len(blocks)})")
            object.__setattr__(self, "width", tuple(_range(f"width (M) of stage {s + 1}", w)
                                                    for s, w in enumerate(self.width)))
        else:
            object.__setattr__(self, "width", _range("width (M)", self.width))
        if self.features is not None:
            object.__setattr__(self, "features", specs.positive_ints("features (K per stage)", self.features, len(blocks)))

    @property
    def per_stage(self):
        """Whether every stage's M is searched (image, one range per stage)."""
        return self.family == "image" and isinstance(self.width[0], (tuple, list))

    def stage_features(self, k=None):
        """K of each stage (image) or K (vector), for a searched `k` or the fixed features."""
        if k is None:
            return self.features
        return k if self.family == "vector" else tuple(k * r for r in self.ratios)

    def stage_widths(self, m):
        """Widths of the stages for one M (image) or M itself (vector)."""
        return m if self.family == "vector" else tuple(m * r for r in self.ratios)

    def spec(self, widths, features):
        if self.family == "vector":
            return specs.VectorResNetSpec(width=widths, blocks=self.blocks, features=features)
        return specs.ResNetSpec(self.blocks, widths, features, self.block)

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self)))


_save_json = kt_utils.save_json


def _atomic_save_json(path, obj):
    """keras-tuner's ``save_json``, written under a temporary name and renamed.

    keras-tuner writes its state files (oracle, trials, tuner) in place, so a SIGKILL
    during a write leaves a truncated JSON file that its reload cannot read; renaming
    makes every state on disk a complete one. Remote paths ("gs://...") keep
    keras-tuner's own writer.
    """
    if "://" in str(path):
        return _save_json(path, obj)
    text = json.dumps(obj)
    checkpoint.atomic_write_text(path, text)
    return text


kt_utils.save_json = _atomic_save_json


def _first(predicate, low, high):
    """The smallest integer in [low, high] for which `predicate` holds, or None."""
    return next((m for m in range(low, high + 1) if predicate(m)), None)


def _needed(predicate, low):
    """The smallest width >= low for which `predicate` holds (doubling, then bisection), or None."""
    high = max(low, 1)
    while not predicate(high):
        if high > _SEARCH_LIMIT:
            return None
        low, high = high + 1, 2 * high
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if predicate(middle) else (middle + 1, high)
    return high


class WidthHyperModel(keras_tuner.HyperModel):
    """A keras-tuner HyperModel of nestzoo ResNet-family networks searched over M (and K, lr).

    input_shape: the data's (height, width, channels) or (N_in,). classes: a
    classifier's classes; outputs: N_o for regression instead. recipe: the trainer's
    recipe (CoupledSGD with its multi-step schedule), scaled to each trial's epochs.
    The constructor resolves the search space (`bounds`), so bad ranges fail before
    any training.
    """

    def __init__(self, space, input_shape, classes=None, outputs=None, recipe="quick"):
        super().__init__(name="nestzoo_width")
        self.space, self.input_shape = space, tuple(input_shape)
        if (classes is None) == (outputs is None):
            raise ValueError("give classes (a classifier) or outputs (regression), not both or neither")
        self.classes, self.outputs = classes, outputs
        self.recipe = get_recipe(recipe)
        rank = 1 if space.family == "vector" else 3
        if len(self.input_shape) != rank:
            raise ValueError(f"the {space.family} family needs inputs of rank {rank}, the data has {self.input_shape}")
        self.bounds = self._resolve()

    def condition(self, widths, features):
        """The bottleneck condition (nestzoo.theory) of the network with these widths and K."""
        return theory.bottleneck_condition(self.space.spec(widths, features), self.input_shape)

    def _worst_features(self):
        k = self.space.feature_range[1] if self.space.feature_range else None
        return self.space.stage_features(k)

    def _resolve(self):
        """{"M": (min, max)} or {"M1": ..., "M2": ...}: each M range raised to where the condition holds."""
        space, k = self.space, self._worst_features()
        if not space.per_stage:
            low, high = space.width
            holds = lambda m: self.condition(space.stage_widths(m), k).holds  # noqa: E731
            if space.allow_violations:
                return {"M": (low, high)}
            first = _first(holds, low, high)
            if first is None:
                needed = _needed(holds, high + 1)
                need = (f"these depths need M >= {needed}" if needed else
                        "no M satisfies it with these stage ratios (each stage must be wider than the one before)")
                raise ValueError(f"no M in [{low}, {high}] satisfies the bottleneck condition M >= sum K_i for "
                                 f"blocks={space.blocks}, K={k}: {need}")
            broken = [m for m in range(first, high + 1) if not holds(m)]
            if broken:
                raise ValueError(f"the bottleneck condition holds at M={first} but not at M={broken[0]}; narrow the range")
            return {"M": (first, high)}
        bounds, uppers = {}, [high for _, high in space.width]
        for s, (low, high) in enumerate(space.width):
            def holds(m, s=s):
                return self.condition(tuple(uppers[:s]) + (m,) + tuple(uppers[s + 1:]), k).stages[s].holds
            first = low if space.allow_violations else _first(holds, low, high)
            if first is None:
                needed = _needed(holds, high + 1)
                raise ValueError(f"no M in [{low}, {high}] for stage {s + 1} satisfies the bottleneck condition for "
                                 f"blocks={space.blocks}, K={k} (the previous stage up to its maximum): "
                                 f"it needs M >= {needed}")
            bounds[f"M{s + 1}"] = (first, high)
        return bounds

    def values(self, hp):
        """(stage widths, stage features, learning rate or None) of a trial, declaring the hyperparameters."""
        space = self.space
        if space.per_stage:
            widths = tuple(hp.Int(name, *bound) for name, bound in self.bounds.items())
        else:
            widths = space.stage_widths(hp.Int("M", *self.bounds["M"]))
        k = hp.Int("K", *space.feature_range) if space.feature_range else None
        lr = hp.Float("learning_rate", *space.learning_rate, sampling="log") if space.learning_rate else None
        return widths, space.stage_features(k), lr

    def model(self, hp):
        """The trial's network (no condition check)."""
        widths, features, _ = self.values(hp)
        space = self.space
        shape = {"width": widths, "blocks": space.blocks, "features": features}
        if space.family == "image":
            shape["block"] = space.block
        head = {"classes": self.classes} if self.outputs is None else {"outputs": self.outputs}
        return build_model("resnet", space.variant, "mlp" if space.family == "vector" else None,
                           input_shape=self.input_shape, **head, **shape)

    def build(self, hp):
        """The trial's network; a guard refuses (as a failed trial) one whose layers violate the condition."""
        model = self.model(hp)
        condition = theory.bottleneck_condition(model)
        if not condition and not self.space.allow_violations:
            raise keras_tuner.errors.FailedTrialError(
                f"{model.name} violates the bottleneck condition (margin {condition.margin}); not trained")
        return model

    def fit(self, hp, model, x, *args, epochs=1, **kwargs):
        """Compile with the recipe's optimizer scaled to `epochs`, then train."""
        lr = hp.values.get("learning_rate")
        steps = int(x.cardinality())
        recipe = scaled_recipe(self.recipe, epochs).override(learning_rate=lr)
        loss = loss_for(model) if self.outputs is None else keras.losses.MeanSquaredError()
        metrics = ["accuracy"] if self.outputs is None else []
        model.compile(optimizer=recipe.optimizer(is_resnest(model), steps), loss=loss, metrics=metrics)
        return model.fit(x, *args, epochs=epochs, **kwargs)


def scaled_recipe(recipe, epochs):
    """`recipe` for `epochs` epochs, its milestones moved in proportion (those before the last epoch kept)."""
    recipe = get_recipe(recipe)
    milestones = sorted({round(m * epochs / recipe.epochs) for m in recipe.milestones})
    return recipe.override(epochs=epochs, milestones=tuple(m for m in milestones if 1 <= m < epochs))


class _Hooks:
    """Tells the worker guard which trial runs, so its pings keep that trial alive on the chief."""

    guard = None

    def on_trial_begin(self, trial):
        if self.guard:
            self.guard.trial_id = trial.trial_id
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.guard:
            self.guard.trial_id = None


class RandomSearch(_Hooks, keras_tuner.RandomSearch):
    """keras-tuner's RandomSearch with nestzoo's worker heartbeat."""


class BayesianOptimization(_Hooks, keras_tuner.BayesianOptimization):
    """keras-tuner's BayesianOptimization with nestzoo's worker heartbeat."""


class Hyperband(_Hooks, keras_tuner.Hyperband):
    """keras-tuner's Hyperband with nestzoo's worker heartbeat (epochs is its max_epochs)."""


TUNERS = {"random": RandomSearch, "bayesian": BayesianOptimization, "hyperband": Hyperband}


def role():
    """"chief", "worker" or None (one process), from keras-tuner's environment variables."""
    if not dist_utils.has_chief_oracle():
        return None
    return "chief" if dist_utils.is_chief_oracle() else "worker"


class _OracleLog:
    """Records, on the process holding the oracle, which worker started each trial and when
    each worker was last heard from (keras-tuner's oracle methods, wrapped on the instance)."""

    def __init__(self, oracle, path):
        self.oracle, self.path = oracle, Path(path)
        self.last_contact, self.last_seen, self.stopped = time.time(), {}, False
        for name in ("create_trial", "get_trial", "get_space", "update_trial", "end_trial"):
            setattr(oracle, name, self._wrap(name, getattr(oracle, name)))

    def _wrap(self, name, method):
        def wrapped(*args, **kwargs):
            result = method(*args, **kwargs)
            self.last_contact = time.time()
            if name == "create_trial" and result.status == TrialStatus.RUNNING:
                self.last_seen[result.trial_id] = time.time()
                self.event("start", result.trial_id, args[0])
            elif name == "create_trial" and result.status == TrialStatus.STOPPED:
                self.stopped = True
            elif name in ("get_trial", "update_trial"):
                self.last_seen[args[0]] = time.time()
            return result
        return wrapped

    def event(self, kind, trial_id, worker, **extra):
        with self.path.open("a") as f:
            f.write(json.dumps({"event": kind, "trial": trial_id, "worker": worker, "time": time.time(), **extra}) + "\n")


@keras_tuner.synchronized
def _end_lost_trials(oracle, log, patience):
    """Hand the trials whose worker has been silent for `patience` s to keras-tuner's retry queue."""
    now = time.time()
    for worker, trial in list(oracle.ongoing_trials.items()):
        silent = now - log.last_seen.get(trial.trial_id, now)
        if silent > patience:
            trial.status = TrialStatus.INVALID
            trial.message = f"lost: worker {worker} silent for {silent:.0f} s"
            log.event("lost", trial.trial_id, worker, silent=round(silent, 1))
            oracle.end_trial(trial)
            oracle.tuner_ids.discard(worker)


def _guard_chief(oracle, log, patience, done):
    """Set `done` to "finished" or "abandoned" once the chief should end (see the module's docstring)."""
    while not done.is_set():
        time.sleep(0.5)
        _end_lost_trials(oracle, log, patience)
        if log.stopped and oracle_chief.exit_chief(oracle):
            done.outcome = "finished"
            done.set()
        elif not oracle.ongoing_trials and time.time() - log.last_contact > patience:
            done.outcome = "abandoned"
            done.set()


class _WorkerGuard(threading.Thread):
    """Pings the chief every patience/4 s (GetTrial of the running trial, else GetSpace); exits the
    process with status 3 after `patience` s without an answer."""

    def __init__(self, stub, patience):
        super().__init__(daemon=True, name="nestzoo-worker-guard")
        self.stub, self.patience, self.trial_id = stub, patience, None
        self.stopped = threading.Event()

    def run(self):
        import grpc
        from keras_tuner.src import protos

        service, answered = protos.get_service(), time.time()
        while not self.stopped.wait(self.patience / 4):
            trial_id = self.trial_id
            try:
                if trial_id is None:
                    self.stub.GetSpace(service.GetSpaceRequest(), timeout=self.patience / 4)
                else:
                    self.stub.GetTrial(service.GetTrialRequest(trial_id=trial_id), timeout=self.patience / 4)
                answered = time.time()
            except grpc.RpcError:
                if time.time() - answered > self.patience:
                    print(f"nestzoo tune: the chief has not answered for {self.patience:.0f} s; "
                          f"worker {os.environ.get('KERASTUNER_TUNER_ID')} stops", file=sys.stderr, flush=True)
                    os._exit(3)


def load_data(data, batch_size=64, seed=0, validation=0.1):
    """(train, validation, input_shape, classes) of a data set name, `nestzoo.data.Datasets`,
    or (train, validation) batched tf.data datasets (classes then None: give them)."""
    if isinstance(data, str):
        from nestzoo import data as nestzoo_data

        data = nestzoo_data.load(data, batch_size, seed=seed, validation=validation)
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(d, tf.data.Dataset) for d in data):
            raise ValueError("data must be a data set name, nestzoo.data.Datasets or (train, validation) "
                             "batched tf.data datasets")
        return data[0], data[1], tuple(data[0].element_spec[0].shape[1:]), None
    return data.train, data.validation, tuple(data.input_shape), data.num_classes


def _fingerprint(hypermodel, tuner, objective, epochs):
    return {"space": hypermodel.space.to_dict(), "bounds": {k: list(v) for k, v in hypermodel.bounds.items()},
            "input_shape": list(hypermodel.input_shape), "classes": hypermodel.classes,
            "outputs": hypermodel.outputs, "recipe": hypermodel.recipe.name, "tuner": tuner,
            "objective": objective, "epochs": epochs}


def _prepare_directory(directory, fingerprint, resume, overwrite, worker):
    """Create the sweep directory, or refuse one holding a sweep that this call would mix up with.

    A worker joins whatever sweep of the same search space is there (its chief's).
    """
    path, started = directory / SPACE_FILE, (directory / PROJECT / "oracle.json").exists()
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != fingerprint and not (overwrite and not worker):
            changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ValueError(f"{directory} holds another sweep with a different search space ({', '.join(changed)} "
                             "differ); use another directory, or overwrite=True (--overwrite) to replace it")
        if overwrite and not worker:
            shutil.rmtree(directory)
        elif started and not (resume or worker):
            raise ValueError(f"{directory} already holds this sweep; resume=True (--resume) continues it, "
                             "overwrite=True (--overwrite) starts it again")
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        checkpoint.atomic_write_text(path, json.dumps(fingerprint, indent=1))


@dataclasses.dataclass
class Sweep:
    """A sweep's report: `rows` (one dict per trial), the files written in `directory`, and the
    keras-tuner `tuner` (``tuner.load_model(trial)`` gives a trial's trained model)."""

    directory: Path
    rows: list
    objective: str
    tuner: object = None
    outcome: str = "finished"
    best_model: Path = None

    @property
    def markdown(self):
        return (self.directory / "report.md").read_text()


def run_sweep(space, data, directory, *, tuner="random", objective="val_accuracy", max_trials=4, epochs=1,
              batch_size=64, recipe="quick", classes=None, outputs=None, validation=0.1, seed=1, resume=False,
              overwrite=False, patience=60.0, verbose=0):
    """Run (or, as a keras-tuner worker, join) a width sweep in `directory`, and report it.

    space: a `WidthSpace`. data: a data set name (a `validation` fraction of the
    training set is held out), `nestzoo.data.Datasets`, or (train, validation) tf.data
    datasets (give `classes`, or `outputs` for regression). tuner: "random",
    "bayesian" or "hyperband" (whose max_epochs is `epochs`). objective: "val_accuracy"
    or "val_loss" (regression: "val_loss"). resume: continue the sweep in
    `directory` (keras-tuner reloads it; finished trials are not re-run). overwrite:
    replace the sweep there. patience: the distributed bound in seconds (see the
    module's docstring). Everything is checked before the first trial trains.

    Returns a `Sweep` (a worker's has no rows: the chief reports).
    """
    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner {tuner!r}; valid choices: {', '.join(TUNERS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid choices: {', '.join(OBJECTIVES)}")
    for name, value in (("max_trials", max_trials), ("epochs", epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if outputs is not None and objective != "val_loss":
        raise ValueError("a regression sweep (outputs=...) has no accuracy: use objective='val_loss'")
    if not patience > 0:
        raise ValueError(f"patience must be > 0 seconds, got {patience!r}")
    train, val, input_shape, data_classes = load_data(data, batch_size, seed, validation)
    if space.family == "vector" and len(input_shape) == 3:  # images as vectors in R^(h w c)
        train, val = (d.map(lambda x, y: (tf.reshape(x, (tf.shape(x)[0], -1)), y)) for d in (train, val))
        input_shape = (math.prod(input_shape),)
    if outputs is None:
        classes = classes or data_classes
        if classes is None:
            raise ValueError("with tf.data datasets give classes=..., or outputs=... for regression")
    hypermodel = WidthHyperModel(space, input_shape, classes=classes, outputs=outputs, recipe=recipe)
    directory, mode = Path(directory), role()
    _prepare_directory(directory, _fingerprint(hypermodel, tuner, objective, epochs), resume, overwrite,
                       mode == "worker")

    budget = {"max_epochs": epochs} if tuner == "hyperband" else {"max_trials": max_trials}
    searcher = TUNERS[tuner](hypermodel, objective=objective, directory=str(directory), project_name=PROJECT,
                             seed=seed, max_retries_per_trial=1, overwrite=False, **budget)
    if mode == "worker":
        searcher.guard = _WorkerGuard(searcher.oracle.stub, patience)
        searcher.guard.start()
        searcher.search(train, validation_data=val, epochs=epochs, verbose=verbose)
        searcher.guard.stopped.set()
        return Sweep(directory, [], objective, searcher, outcome="worker done")
    searcher.oracle.max_trials = max_trials  # Hyperband: caps its brackets
    log = _OracleLog(searcher.oracle, directory / EVENTS_FILE)
    outcome = "finished"
    if mode == "chief":
        done = threading.Event()
        threading.Thread(target=searcher.search, daemon=True, name="nestzoo-chief").start()
        threading.Thread(target=_guard_chief, args=(searcher.oracle, log, patience, done), daemon=True).start()
        done.wait()
        outcome = done.outcome
    else:
        searcher.search(train, validation_data=val, epochs=epochs, verbose=verbose)
    return write_report(searcher, hypermodel, directory, objective, outcome)


def _events(directory):
    """The trial events; a line cut short by a kill is skipped."""
    path, events = directory / EVENTS_FILE, []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _note(trial, starts, losses, holds):
    notes = [] if holds else ["violates the condition (allowed)"]
    for lost in losses:
        notes.append(f"lost by {lost['worker']} (silent {lost['silent']:.0f} s)")
    if len(starts) > 1:
        notes.append(f"run {len(starts)} times")
    if trial.status == TrialStatus.FAILED and trial.message:
        notes.append(trial.message.strip().splitlines()[-1][:120])
    return "; ".join(notes)


def report_rows(searcher, hypermodel, directory):
    """One dict per trial of the oracle: M, K, condition margin, parameters, score, status, workers."""
    events, rows = _events(directory), []
    for trial_id, trial in sorted(searcher.oracle.trials.items()):
        hp = trial.hyperparameters
        widths, features, lr = hypermodel.values(hp.copy())
        keras.backend.clear_session()
        model = hypermodel.model(hp.copy())
        condition = theory.bottleneck_condition(model)
        starts = [e for e in events if e["trial"] == trial_id and e["event"] == "start"]
        losses = [e for e in events if e["trial"] == trial_id and e["event"] == "lost"]
        join = lambda v: "/".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
        rows.append({
            "trial": trial_id, "worker": "/".join(dict.fromkeys(e["worker"] for e in starts)),
            "status": trial.status, "M": join(widths), "K": join(features),
            "learning_rate": "" if lr is None else f"{lr:.3g}",
            "epochs": hp.values.get("tuner/epochs", ""), "margin": condition.margin,
            "condition": "holds" if condition.holds else "violated", "parameters": model.count_params(),
            "score": "" if trial.score is None or math.isnan(trial.score) else round(float(trial.score), 4),
            "note": _note(trial, starts, losses, condition.holds),
        })
    return rows


def _markdown(rows, objective):
    header = list(rows[0]) if rows else ["trial"]
    lines = ["| " + " | ".join(objective if h == "score" else h for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{r[h]:,}" if h == "parameters" and r[h] else str(r[h]) for h in header) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows, objective, path, space):
    """Score against M (stage 1's width for images), violating trials marked with a red x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for holds, style in ((True, dict(marker="o", color="tab:blue", label="condition holds")),
                         (False, dict(marker="x", color="tab:red", s=60, label="violates the condition"))):
        points = [(int(str(r["M"]).split("/")[0]), r["score"]) for r in rows
                  if r["score"] != "" and (r["condition"] == "holds") == holds]
        if points:
            ax.scatter(*zip(*points), **style)
    ax.set_xlabel("M" if space.family == "vector" else "M (stage 1 width)")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(searcher, hypermodel, directory, objective, outcome="finished"):
    """report.csv, report.md, score_vs_width.png and best_model.keras in `directory`; returns a `Sweep`."""
    rows = report_rows(searcher, hypermodel, directory)
    with (directory / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    (directory / "report.md").write_text(_markdown(rows, objective))
    plot(rows, objective, directory / "score_vs_width.png", hypermodel.space)
    sweep = Sweep(directory, rows, objective, searcher, outcome)
    best = searcher.oracle.get_best_trials(1)
    if best and best[0].status == TrialStatus.COMPLETED:
        try:
            model = searcher.load_model(best[0])
        except (OSError, ValueError):  # a remote worker holds the checkpoint
            return sweep
        sweep.best_model = directory / "best_model.keras"
        model.save(sweep.best_model)
    return sweep

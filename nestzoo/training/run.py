"""One training run: a model, a data set, a recipe and a seed in a run directory.

A run directory holds, when the run has finished::

    config.json       what was trained and how (compared when a run is resumed)
    log.csv           one row per finished epoch
    tensorboard/      TensorBoard logs
    best.weights.h5   the weights of the epoch with the best validation accuracy
    model.keras       the final model (the paper reports its test accuracy)
    summary.json      config, seed, parameters, accuracies, time per epoch, images/s
    curves.png        loss and accuracy per epoch

While it runs, ``checkpoint/`` holds the last committed epoch (see
``nestzoo.training.checkpoint``): the variables that shape the rest of the run,
written in a background thread and committed by renaming ``state.json``, which
records each file's checksum. A run killed at any moment, SIGKILL included,
continues from its last committed epoch when started again with ``resume=True``,
and computes bit for bit what the uninterrupted run computes (nestzoo.data's epoch
order is a function of the seed and the epoch).
"""
import json
import math
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nestzoo import optimizers, registry  # noqa: F401  (optimizers registers CoupledSGD, MultiStepSchedule)
from nestzoo.heads import variant_of
from nestzoo.recipe import get_recipe
from nestzoo.training import checkpoint, report
from nestzoo.training.runtime import dtype_policy, resolve_jit_compile, resolve_precision

# Parts of config.json that may differ when a run is resumed on another machine.
RUNTIME_KEYS = ("jit_compile", "replicas", "deterministic")
# Parts of config.json that record what happened to the run (resumes that extended it, ...).
HISTORY_KEYS = ("extended", "learning_rate_changes")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or exploded; the last committed epoch's checkpoint is kept."""


def is_resnest(model):
    """Whether `model` is a ResNEst (eq. 2), read from its structure (`nestzoo.variant_of`), not its name."""
    return variant_of(model) == ("resnet", "resnest")


class _Data:
    """The splits of a data set and what the model builder needs to know about them."""

    def __init__(self, data, batch_size, seed, validation, data_options):
        if isinstance(data, str):
            from nestzoo import data as nestzoo_data

            data = nestzoo_data.load(data, batch_size, seed=seed, validation=validation, **(data_options or {}))
        if isinstance(data, (tuple, list)):
            if len(data) not in (2, 3) or not all(isinstance(d, tf.data.Dataset) for d in data):
                raise ValueError("data must be a data set name, nestzoo.data.Datasets, or (train, test) "
                                 "or (train, validation, test) batched tf.data datasets")
            self.train, self.validation, self.test = data if len(data) == 3 else (data[0], data[1], data[1])
            self.name, self.num_classes, self.validation_split = "tf.data", None, "given"
            self.input_shape = tuple(self.train.element_spec[0].shape[1:])
            self.num_train = int(self.train.reduce(0, lambda n, batch: n + tf.shape(batch[0])[0]))
            self.epochs, self.steps_per_epoch = None, int(self.train.cardinality())
        else:
            self.train, self.validation, self.test = data.train, data.validation, data.test
            self.name, self.num_classes, self.input_shape = data.spec.name, data.num_classes, data.input_shape
            self.num_train, self.validation_split = data.num_train, data.validation_split
            self.epochs = data.epochs if data.epoch_batches is not None else None
            self.steps_per_epoch = data.steps_per_epoch or int(self.train.cardinality())
        if self.steps_per_epoch < 1:
            raise ValueError("the training dataset must be finite with a known number of batches "
                             f"(cardinality {self.steps_per_epoch}); do not .repeat() it")


def _build_model(model, data, policy, strategy, model_options):
    """A registry name or a builder called under the strategy and the policy, or a model checked against them."""
    with strategy.scope(), dtype_policy(policy):
        if isinstance(model, str):
            options = {"input_shape": data.input_shape, "classes": data.num_classes, **(model_options or {})}
            if options["classes"] is None:
                raise ValueError("with tf.data datasets, give the number of classes: model_options={'classes': ...}")
            return registry.create_model(model, **options)
        if not isinstance(model, keras.Model):
            return model(**(model_options or {}))
    if model.dtype_policy.name != policy:
        raise ValueError(f"the model was built under the {model.dtype_policy.name} policy, not {policy}; build it "
                         f"under keras.mixed_precision.set_global_policy({policy!r}) or pass its registry name")
    if not strategy.extended.variable_created_in_scope(model.weights[0].value):
        raise ValueError("the model's variables were not created under strategy.scope(); "
                         "build it there or pass its registry name")
    return model


def loss_for(model):
    """Cross-entropy on the model's softmax probabilities, or on its logits."""
    probabilities = getattr(model.layers[-1], "activation", None) is keras.activations.softmax
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; `run_dir`, `epoch` (the last committed epoch) and `epochs` say where."""

    def __init__(self, run_dir, epoch, epochs):
        super().__init__(f"interrupted: {run_dir} holds epoch {epoch} of {epochs} committed")
        self.run_dir, self.epoch, self.epochs = run_dir, epoch, epochs


def explosion_bound(classes):
    """The mean training loss above which an epoch counts as exploded: 10 x a uniform guess's, 10 ln(classes)."""
    return 10 * math.log(max(int(classes), 2))


class _DivergenceGuard(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN or infinite, and at the first epoch whose mean
    training loss exceeds `explosion_bound(classes)`, before anything of that epoch is committed."""

    def __init__(self, model_name, resnest, initial_learning_rate, schedule, steps_per_epoch, classes, run_dir):
        super().__init__()
        self.model_name, self.resnest, self.initial_learning_rate = model_name, resnest, initial_learning_rate
        self.schedule, self.steps_per_epoch = schedule, steps_per_epoch
        self.bound = explosion_bound(classes) if classes else math.inf
        self.run_dir = run_dir

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _diverged(self, what):
        learning_rate = float(self.schedule(self.epoch * self.steps_per_epoch))
        cause = (
            f"{self.model_name} is a ResNEst trained from learning rate {self.initial_learning_rate:g}; the paper "
            "(appendix B.3) found that ResNEsts diverge at 0.1 and 0.05 and trained them at 0.01"
            if self.resnest and self.initial_learning_rate > 0.01
            else "the learning rate is likely too high for this model"
        )
        if self.epoch == 0:
            what_next = ("No epoch had finished, so there is no checkpoint to continue from: start again with a "
                         "lower learning rate (--lr, learning_rate=).")
        else:
            what_next = (f"Epoch {self.epoch}'s checkpoint is kept in {self.run_dir / 'checkpoint'}: continue from "
                         f"it at a lower rate with --resume --continue-lr {learning_rate / 10:g} "
                         f"(train(..., resume=True, continue_learning_rate={learning_rate / 10:g})), or start again "
                         "with a lower --lr.")
        raise TrainingDiverged(f"{what} at epoch {self.epoch + 1} (learning rate {learning_rate:g}): {cause}. "
                               + what_next)

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self._diverged(f"the loss became {loss} at batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if loss > self.bound:
            self._diverged(f"the mean training loss exploded to {loss:.4g}, above {self.bound:.3g} (10 times a "
                           "uniform guess's cross-entropy)")


class _RunState(keras.callbacks.Callback):
    """Commit every finished epoch: copy the state to host memory, let the Committer write it."""

    def __init__(self, run_dir, schedule, steps_per_epoch, num_train, state, model_name):
        super().__init__()
        self.run_dir, self.dir = run_dir, run_dir / "checkpoint"
        self.schedule, self.steps_per_epoch, self.num_train = schedule, steps_per_epoch, num_train
        self.model_name = model_name
        self.committer = checkpoint.Committer(self.dir, state, on_commit=self.publish_log)
        self.first_in_process = True
        self.best_arrays = None  # (epoch, value tensors) of the best epoch seen in this process
        self.commit_seconds = []
        self.writers = None
        self._read = self._description = None

    @property
    def state(self):
        return self.committer.state

    def publish_log(self, state):
        """log.csv and the TensorBoard scalars of the committed epoch (in the writer thread)."""
        report.write_csv(self.run_dir / "log.csv", state["history"])
        row = state["history"][-1]
        if self.writers is None:
            self.writers = {prefix: tf.summary.create_file_writer(str(self.run_dir / "tensorboard" / name))
                            for prefix, name in (("", "train"), ("val_", "validation"))}
        for prefix, writer in self.writers.items():
            with writer.as_default(step=row["epoch"] - 1):
                for key, value in row.items():
                    if prefix and key.startswith(prefix):
                        tf.summary.scalar("epoch_" + key[len(prefix):], value)
                    elif not prefix and key in ("loss", "accuracy", "learning_rate", "images_per_second"):
                        tf.summary.scalar("epoch_" + key, value)
            writer.flush()

    def read_values(self):
        """The value tensors of every state variable, read in one call (the commit's only main-thread work).

        Tensors are immutable: the training step that next updates a variable copies it first.
        """
        if self._read is None:
            variables = self.variables()
            self._read = tf.function(lambda: [tf.identity(v.value) for v in variables], autograph=False)
            self._description = checkpoint.describe(variables)
        return self._read()

    def variables(self):
        return checkpoint.state_variables(self.model)

    def restore(self):
        """Load the last committed epoch into the model and its optimizer (checked against state.json)."""
        state, state_path = self.state, self.dir / "state.json"
        variables = self.variables()
        checkpoint.check_compatible(state["variables"], variables, state_path, self.model_name)
        entry = state["last"]
        checkpoint.assign(variables, checkpoint.read_arrays(self.dir / entry["file"], entry, state["variables"],
                                                            state_path))
        best = state["best"]
        if best and best.get("file") and best["file"] != entry["file"]:
            checkpoint.read_arrays(self.dir / best["file"], best, state["variables"], state_path)  # verify

    def publish_best(self):
        """Write best.weights.h5 (Keras format) from the best committed epoch."""
        best = self.state["best"]
        if not best or not best.get("file"):
            return
        variables = self.variables()
        if self.best_arrays and self.best_arrays[0] == best["epoch"]:
            arrays = self.best_arrays[1]
        else:
            arrays = checkpoint.read_arrays(self.dir / best["file"], best, self.state["variables"],
                                            self.dir / "state.json")
        current = checkpoint.snapshot(variables)
        checkpoint.assign(variables, arrays)
        try:
            tmp = self.run_dir / "tmp-best.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self.run_dir / "best.weights.h5")
        finally:
            checkpoint.assign(variables, current)

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.train_seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self.train_seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        train_seconds = self.train_seconds or seconds
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "learning_rate": float(self.schedule(epoch * self.steps_per_epoch)),
               "seconds": seconds, "train_seconds": train_seconds,
               "images_per_second": self.num_train / train_seconds,
               "first_in_process": int(self.first_in_process)}
        self.first_in_process = False
        started = time.perf_counter()
        values = self.read_values()
        score = row.get("val_accuracy", row.get("accuracy"))
        best = self.state["best"]
        if best is None or score > best["val_accuracy"]:
            self.best_arrays = (epoch + 1, values)
        self.committer.submit(epoch + 1, values, row, self._description, score)
        self.commit_seconds.append(time.perf_counter() - started)


def _run_config(model, model_name, data, recipe, seed, policy, jit_compile, strategy, deterministic):
    """What is trained and how, as config.json stores it (JSON types, comparable on resume)."""
    variant = (variant_of(model) or (None, ""))[1]
    if "." in model_name:  # a registry name
        arch = registry.parse_name(model_name)[1]
    else:  # the model's name, less the builders' default "_{variant}"
        arch = model.name.removesuffix(f"_{variant}")
    return json.loads(json.dumps({
        "model": model_name,
        "arch": arch,
        "variant": variant,
        "data": data.name,
        "validation": data.validation_split,
        "recipe": recipe.to_dict(),
        "initial_learning_rate": recipe.initial_learning_rate(is_resnest(model)),
        "seed": seed,
        "precision": policy,
        "parameters": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "jit_compile": jit_compile,
        "replicas": strategy.num_replicas_in_sync,
        "deterministic": deterministic,
        "data_order": "epoch" if data.epochs else "dataset",
    }))


def _differences(old, new, prefix=""):
    """(dotted key, stored, given) of every differing field, nested dicts compared field by field."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _is_scratch(path):
    return path.name.endswith(".tmp") or path.name.startswith("tmp-")


def check_output_dir(path):
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise ValueError(f"output directory {str(path)!r} {where}; choose a folder path (--output)")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".nestzoo-write-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"output directory {str(path)!r} cannot be written ({error.strerror or error}); "
                         "make it writable or choose another folder (--output)") from None


def _read_config(run_dir):
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or "recipe" not in config:
            raise ValueError("not a run's config")
        return config
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error}); restore it, or train into a new directory") from None


def _check_run_dir(run_dir, config, resume):
    """Refuse a directory holding another run's files; returns the stored config when it holds this run.

    A stored config that differs only by more epochs is returned with "extend" set:
    the run continues to the new number of epochs, recorded in config.json.
    """
    entries = [p for p in run_dir.iterdir() if not _is_scratch(p)] if run_dir.exists() else []
    if not entries:
        return None  # new, empty, or killed before config.json's rename: a fresh start
    stored = run_dir / "config.json"
    if not resume:
        raise ValueError(f"output directory {str(run_dir)!r} holds another run's files; "
                         "pass resume=True (--resume) to continue it, or choose a new directory")
    if not stored.exists():
        raise ValueError(f"output directory {str(run_dir)!r} holds files that are not a nestzoo run "
                         f"({', '.join(sorted(p.name for p in entries)[:5])}); choose a new directory")
    old = _read_config(run_dir)
    ignored = RUNTIME_KEYS + HISTORY_KEYS
    comparable_old = {k: v for k, v in old.items() if k not in ignored}
    comparable_new = {k: v for k, v in config.items() if k not in ignored}
    differ = list(_differences(comparable_old, comparable_new))
    if any(key == "recipe.epochs" and given > stored for key, stored, given in differ):
        # more epochs may move milestones that lie ahead (a scaled schedule), never one already passed:
        # milestone m changes the rate from epoch m + 1 on
        done = old["recipe"]["epochs"]
        differ = [(key, a, b) for key, a, b in differ
                  if key != "recipe.milestones" or [m for m in a if m < done] != [m for m in b if m < done]]
        if [key for key, _, _ in differ] == ["recipe.epochs"]:
            return {**old, "extend": (differ[0][1], differ[0][2])}
    if differ:
        fields = "; ".join(f"{key}: stored {a!r}, given {b!r}" for key, a, b in differ)
        extra = (" (a run can be extended with more epochs, never shortened)"
                 if [d[0] for d in differ] == ["recipe.epochs"] else "")
        raise ValueError(f"cannot resume {str(run_dir)!r}: its config.json differs in {fields}{extra}. "
                         "Give the stored values, or train into a new directory")
    return old


def _restore_finished(model, run_dir):
    """Load a finished run's model.keras (weights and optimizer state) into `model`, checked."""
    finished = load_model(run_dir / "model.keras")
    source = checkpoint.state_variables(finished)
    target = checkpoint.state_variables(model)
    if [v[1:] for v in checkpoint.describe(source)] != [v[1:] for v in checkpoint.describe(target)]:
        raise checkpoint.CheckpointError(f"{run_dir / 'model.keras'} holds another model's variables; "
                                         "it cannot be extended with this model")
    checkpoint.assign(target, checkpoint.snapshot(source))


def load_model(path, compile=True):
    """Load a .keras file, refusing a missing, truncated or garbage file and non-finite weights by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras model file (a .keras file is a zip archive): it is truncated, "
                         "damaged, or of another format; save it again or use another copy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds for a damaged archive
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it is damaged or was written "
                         "by an incompatible version: save it again or use another copy") from None
    check_finite(model, str(path))
    return model


def check_finite(model, where):
    """Refuse a model holding NaN or infinite weights (a diverged run's, or a damaged file's)."""
    for weight in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(weight)).all():
            raise ValueError(f"{where} holds non-finite weights (NaN or infinity in {weight.path}): it was saved "
                             "from a diverged run or is damaged; do not use it. Train again, or use the run's "
                             "best.weights.h5")


def _wait_quietly(run_state):
    try:
        run_state.committer.wait()
    except (OSError, KeyboardInterrupt):
        pass


def train(model, data="digits", recipe="paper", *, output_dir, seed=0, precision="auto", jit_compile=None,
          strategy=None, resume=False, validation=None, model_options=None, data_options=None, verbose="auto",
          continue_learning_rate=None, deterministic=False, **overrides):
    """Train `model` on `data` with `recipe` into `output_dir`; returns the run's summary.

    model: a registry name ("resnet20.a-resnest", built for the data), a function
        returning a keras.Model (called with `model_options` after seeding, under the
        strategy and precision), or a keras.Model.
    data: a data set name of ``nestzoo.data`` ("digits", "cifar10", "cifar100"), a
        ``nestzoo.data.Datasets``, or (train, test) / (train, validation, test) batched
        tf.data datasets. The best weights are chosen on the validation split (the
        test set unless `validation` holds part of the training set out). With
        ``nestzoo.data``, epoch e's shuffle and augmentation are a function of (seed, e),
        so a resumed run equals an uninterrupted one; a tf.data dataset's order is its own.
        `data_options` go to ``nestzoo.data.load`` with a name (source=, data_dir=, download=).
    recipe: "paper" (appendix B.3), "quick", or a ``Recipe``; `overrides` change its
        fields (epochs=..., learning_rate=..., milestones=..., ...).
    precision: "auto" (mixed_float16 on a GPU, else float32), "float32",
        "mixed_float16" or "mixed_bfloat16". jit_compile: XLA; None is on for GPUs only.
    strategy: a ``tf.distribute`` strategy (e.g. MirroredStrategy); the model is built
        and compiled under its scope.
    resume: continue the run in `output_dir` from its last committed epoch; without it a
        directory holding another run's files is refused. More epochs than stored
        extend the run (recorded in config.json's "extended").
    continue_learning_rate: with resume, continue from the last committed epoch at this
        learning rate, multiplied by gamma at each later milestone (e.g. after a
        divergence); recorded in config.json's "learning_rate_changes".
    deterministic: ``tf.config.experimental.enable_op_determinism()`` (process-wide),
        for bit-identical results where kernels are not deterministic (GPUs).
    Raises TrainingDiverged when the loss becomes NaN or infinite, or an epoch's mean
    training loss exceeds 10 ln(classes); TrainingInterrupted on Ctrl-C.
    """
    recipe = get_recipe(recipe, **overrides)
    policy = resolve_precision(precision)
    if precision == "auto" and isinstance(model, keras.Model):
        policy = model.dtype_policy.name
    jit_compile = resolve_jit_compile(jit_compile)
    strategy = strategy or tf.distribute.get_strategy()
    if continue_learning_rate is not None:
        if not resume:
            raise ValueError("continue_learning_rate (--continue-lr) continues a run: pass resume=True (--resume)")
        if not isinstance(continue_learning_rate, (int, float)) or not math.isfinite(continue_learning_rate) \
                or continue_learning_rate <= 0:
            raise ValueError(f"continue_learning_rate must be a finite number > 0, got {continue_learning_rate!r}")
    run_dir = Path(output_dir)
    check_output_dir(run_dir)
    if deterministic:
        tf.config.experimental.enable_op_determinism()

    keras.utils.set_random_seed(seed)
    data = _Data(data, recipe.batch_size, seed, validation, data_options)
    built = _build_model(model, data, policy, strategy, model_options)
    model_name = model if isinstance(model, str) else built.name
    model = built
    config = _run_config(model, model_name, data, recipe, seed, policy, jit_compile, strategy, bool(deterministic))
    stored = _check_run_dir(run_dir, config, resume)
    extend = stored and stored.pop("extend", None)
    finished = stored is not None and (run_dir / "summary.json").exists()
    if finished and not extend:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # a kill may have fallen before the clean-up
        if continue_learning_rate is not None:
            raise ValueError(f"{run_dir} has finished; continue_learning_rate applies to an unfinished run")
        return json.loads((run_dir / "summary.json").read_text())  # finished already
    if stored:
        for key in HISTORY_KEYS:
            if key in stored:
                config[key] = stored[key]
    state = checkpoint.load_state(run_dir) if stored else checkpoint.load_state(run_dir / "missing")
    if finished:  # extending: the history is the log, the state the final model
        state = {"epoch": extend[0], "history": report.read_csv(run_dir / "log.csv"), "last": None,
                 "best": {"epoch": json.loads((run_dir / "summary.json").read_text())["best_epoch"],
                          "val_accuracy": json.loads((run_dir / "summary.json").read_text())["best_val_accuracy"],
                          "file": None},
                 "variables": None}
    if extend:
        config.setdefault("extended", []).append({"from_epochs": extend[0], "to_epochs": extend[1],
                                                  "after_epoch": state["epoch"]})
    if continue_learning_rate is not None:
        config.setdefault("learning_rate_changes", []).append(
            {"after_epoch": state["epoch"], "initial_learning_rate": float(continue_learning_rate)})
    resnest = is_resnest(model)
    if config.get("learning_rate_changes"):  # from the change on: its rate, then the later milestones
        change = config["learning_rate_changes"][-1]
        recipe = recipe.override(learning_rate=change["initial_learning_rate"],
                                 milestones=tuple(m for m in recipe.milestones if m > change["after_epoch"]))
    initial_learning_rate = recipe.initial_learning_rate(resnest)
    checkpoint.atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1))

    schedule = recipe.schedule(resnest, data.steps_per_epoch)
    with strategy.scope():
        optimizer = recipe.optimizer(resnest, data.steps_per_epoch)
        if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=loss_for(model),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        model.optimizer.build(model.trainable_variables)
    run_state = _RunState(run_dir, schedule, data.steps_per_epoch, data.num_train, state, model_name)
    run_state.set_model(model)
    if finished:
        _restore_finished(model, run_dir)
        print(f"extending {run_dir} from {extend[0]} to {extend[1]} epochs "
              f"(optimizer step {int(model.optimizer.iterations.numpy())})")
    elif state["epoch"]:
        run_state.restore()
        run_state.committer.remove_unreferenced()
        print(f"resuming {run_dir} after epoch {state['epoch']} of {recipe.epochs} "
              f"(optimizer step {int(model.optimizer.iterations.numpy())})")
    classes = data.num_classes or (model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None)
    callbacks = [
        _DivergenceGuard(model_name, resnest, initial_learning_rate, schedule, data.steps_per_epoch, classes,
                         run_dir),
        run_state,  # also writes log.csv and the TensorBoard scalars, in its writer thread
    ]
    if data.epochs:
        train_data, steps = data.epochs(state["epoch"], recipe.epochs), data.steps_per_epoch
    else:
        train_data, steps = data.train, None
    try:
        model.fit(train_data, validation_data=data.validation, epochs=recipe.epochs, initial_epoch=state["epoch"],
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose, shuffle=False)
        run_state.committer.wait()
    except TrainingDiverged:
        _wait_quietly(run_state)
        run_state.publish_best()
        raise
    except KeyboardInterrupt:
        _wait_quietly(run_state)
        raise TrainingInterrupted(run_dir, run_state.state["epoch"], recipe.epochs) from None
    except checkpoint.CommitError:
        raise

    test_loss, test_accuracy = model.evaluate(data.test, verbose=0)
    tmp = run_dir / "tmp-model.keras"
    model.save(tmp)
    os.replace(tmp, run_dir / "model.keras")
    run_state.publish_best()
    summary = report.summarize(config, run_state.state, test_loss, test_accuracy)
    report.plot_curves(run_state.state["history"], run_dir / "curves.png", config)
    checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return summary

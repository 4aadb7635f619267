"""One training run: a model, a data set, a recipe and a seed in a run directory.

A run directory holds, when the run has finished::

    config.json       what was trained and how (compared when a run is resumed), and on what
    log.csv           one row per finished epoch
    tensorboard/      TensorBoard logs
    best.weights.h5   the weights of the epoch with the best validation accuracy
    model.keras       the final model (the paper reports its test accuracy)
    summary.json      config, seed, parameters, accuracies, time per epoch, images/s
    curves.png        loss and accuracy per epoch

While it runs, ``nestzoo.lock`` claims the folder for its process, and ``checkpoint/``
holds the last committed epoch (see ``nestzoo.training.checkpoint``): the variables
that shape the rest of the run, written in a background thread and committed by
renaming ``state.json``, which records each file's checksum. A run killed at any
moment, SIGKILL included, continues from its last committed epoch when started again
with ``resume=True``, and computes bit for bit what the uninterrupted run computes on
the same setup (nestzoo.data's epoch order is a function of the seed and the epoch;
config.json's "environment" records the threads, oneDNN setting, CPU and versions,
and a resume on another warns, naming what differs).

`train` runs four steps: `_prepare` (seed, data, model, config), `_resume` (the state
to start from, config.json, compile), `_fit` (the epochs) and `_finish` (the final files).
"""
import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from nestzoo import basis
from nestzoo.builders import create_model
from nestzoo.data import splits
from nestzoo.recipe import get_recipe
from nestzoo.saving import load_model
from nestzoo.training import checkpoint, folder, multiworker, report
from nestzoo.training.callbacks import DeferredInterrupt, DivergenceGuard, RunState, TrainingDiverged
from nestzoo.training.runtime import dtype_policy, environment, resolve_jit_compile, resolve_precision, warn_if_slow


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; `run_dir`, `epoch` (the last committed epoch) and `epochs` say where."""

    def __init__(self, run_dir, epoch, epochs):
        super().__init__(f"interrupted: {run_dir} holds epoch {epoch} of {epochs} committed")
        self.run_dir, self.epoch, self.epochs = run_dir, epoch, epochs


def predicts_probabilities(model):
    """Whether the model ends in a softmax (its outputs are probabilities, not logits)."""
    return getattr(model.layers[-1], "activation", None) is keras.activations.softmax


def loss_for(model):
    """Cross-entropy on the model's softmax probabilities, or on its logits."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not predicts_probabilities(model))


def model_identity(model):
    """The nestzoo `Identity` of `model`, or None for a model that nestzoo's builders did not make."""
    return basis.identity(model) if basis.is_nestzoo_model(model) else None


def check_fits(model, data):
    """Refuse data (`nestzoo.data.Splits`) whose input shape or number of classes does not fit `model`."""
    expected, given = tuple(model.input_shape[1:]), tuple(data.input_shape)
    if len(expected) != len(given) or any(e is not None and e != g for e, g in zip(expected, given)):
        raise ValueError(f"{model.name} takes inputs of shape {expected}, and {data.name}'s are {given}: use the "
                         "data set the model was built for (a run's config.json names it)")
    classes = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if data.num_classes and classes is not None and classes != data.num_classes:
        raise ValueError(f"{model.name} predicts {classes} classes, and {data.name} has {data.num_classes}: use "
                         "the data set the model was built for (a run's config.json names it)")


def _build_model(model, data, policy, strategy, model_options):
    """A registry name or a builder called under the strategy and the policy, or a model checked against them."""
    with strategy.scope(), dtype_policy(policy):
        if isinstance(model, str):
            options = {"input_shape": data.input_shape, "classes": data.num_classes, **(model_options or {})}
            if options["classes"] is None:
                raise ValueError("with tf.data datasets or arrays, give the number of classes: "
                                 "model_options={'classes': ...}")
            return create_model(model, **options)
        if not isinstance(model, keras.Model):
            return model(**(model_options or {}))
    if model.dtype_policy.name != policy:
        raise ValueError(f"the model was built under the {model.dtype_policy.name} policy, not {policy}; build it "
                         f"under keras.mixed_precision.set_global_policy({policy!r}) or pass its registry name")
    if not strategy.extended.variable_created_in_scope(model.weights[0].value):
        raise ValueError("the model's variables were not created under strategy.scope(); "
                         "build it there or pass its registry name")
    return model


def _check_splits(data, strategy):
    if multiworker.is_multi_worker(strategy) and not data.epochs:
        raise ValueError("a multi-worker run shards nestzoo's epoch order: give a data set name or (x, y) arrays, "
                         "not tf.data datasets")
    if data.steps_per_epoch is None:
        raise ValueError("the training dataset is endless (a .repeat()?): give a finite one, whose batches make "
                         "one epoch")
    if data.steps_per_epoch < 1:
        raise ValueError(f"the training dataset holds no batch (cardinality {data.steps_per_epoch})")
    if data.test is None:
        raise ValueError("the data has no test split: give (train, test) or (train, validation, test), or hold "
                         "out part of the arrays with validation=")


def _run_config(model, name, data, recipe, seed, policy, jit_compile, strategy, deterministic):
    """What is trained and how, and on what, as config.json stores it (JSON types, comparable on resume)."""
    identity = model_identity(model)
    return json.loads(json.dumps({
        "model": name,
        "arch": (identity.arch or "custom") if identity else model.name,
        "variant": identity.variant if identity else "",
        "data": data.name,
        "validation": data.validation_split,
        "recipe": recipe.to_dict(),
        "initial_learning_rate": recipe.initial_learning_rate(bool(identity and identity.resnest)),
        "seed": seed,
        "precision": policy,
        "parameters": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "jit_compile": jit_compile,
        "replicas": strategy.num_replicas_in_sync,
        "deterministic": deterministic,
        "data_order": "epoch" if data.epochs else "dataset",
        "environment": environment(),
    }))


@dataclasses.dataclass
class _Run:
    """What the steps of `train` share."""

    run_dir: Path
    model: keras.Model
    name: str
    data: object  # nestzoo.data.Splits
    recipe: object
    config: dict
    stored: dict = None  # the config.json of the run being resumed
    extend: tuple = None  # (stored epochs, new epochs) of a run extended with more epochs
    summary: dict = None  # the summary.json of a finished run
    final: keras.Model = None  # and its model.keras, loaded and checked
    policy: str = "float32"
    strategy: object = None
    writes: bool = True  # False on a multi-worker run's non-chief worker, which trains into a temporary folder

    @property
    def resnest(self):
        identity = model_identity(self.model)
        return bool(identity and identity.resnest)


def _prepare(model, data, recipe, run_dir, *, seed, precision, jit_compile, strategy, resume, validation,
             model_options, data_options, deterministic):
    """Seed, data and model, and config.json's content checked against what `run_dir` holds."""
    policy = resolve_precision(precision)
    if precision == "auto" and isinstance(model, keras.Model):
        policy = model.dtype_policy.name
    warn_if_slow(policy)
    jit_compile = resolve_jit_compile(jit_compile)
    strategy = strategy or tf.distribute.get_strategy()
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    data = splits(data, recipe.batch_size, seed=seed, validation=validation, **(data_options or {}))
    _check_splits(data, strategy)
    if multiworker.is_multi_worker(strategy):  # before the model: its variables are broadcast when created
        multiworker.check_same_run(strategy, {
            "model": model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__),
            "model_options": model_options, "data": data.name, "validation": data.validation_split,
            "recipe": recipe.to_dict(), "seed": seed, "precision": policy})
    built = _build_model(model, data, policy, strategy, model_options)
    check_fits(built, data)
    name = (model_identity(built).name or model) if isinstance(model, str) else built.name
    config = _run_config(built, name, data, recipe, seed, policy, jit_compile, strategy, bool(deterministic))
    run = _Run(run_dir, built, name, data, recipe, config, policy=policy, strategy=strategy,
               writes=multiworker.writes_files(strategy))
    stored = folder.check_run_dir(run_dir, config, resume)
    if stored:
        run.extend = stored.pop("extend", None)
        run.stored = stored
        if (run_dir / "summary.json").exists():
            run.summary = folder.read_summary(run_dir)
    return run


def _final_model(run):
    """A finished run's model.keras, loaded and checked; a clear error if it is missing or damaged."""
    path = run.run_dir / "model.keras"
    try:
        return load_model(path)
    except (ValueError, FileNotFoundError) as error:
        raise checkpoint.CheckpointError(
            f"{run.run_dir} has finished (summary.json), but {error}. Its final weights cannot be rebuilt: the "
            f"checkpoint is removed when a run finishes, and best.weights.h5 holds epoch "
            f"{run.summary['best_epoch']}'s, not the last. Restore model.keras from a backup, or train again into "
            "a new directory") from None


def _finished(run, continue_learning_rate):
    """The summary of a run that has finished already."""
    shutil.rmtree(run.run_dir / "checkpoint", ignore_errors=True)  # a kill may have fallen before the clean-up
    if continue_learning_rate is not None:
        raise ValueError(f"{run.run_dir} has finished; continue_learning_rate applies to an unfinished run")
    return run.summary


def _start_state(run):
    """The commit record to continue from: the checkpoint's, a finished run's log (extending it), or a fresh one."""
    if run.summary:  # extending: the history is the log, the state the final model
        return {"epoch": run.extend[0], "history": report.read_csv(run.run_dir / "log.csv"), "last": None,
                "best": {"epoch": run.summary["best_epoch"], "val_accuracy": run.summary["best_val_accuracy"],
                         "file": None},
                "variables": None}
    return checkpoint.load_state(run.run_dir) if run.stored else checkpoint.new_state()


def _resume(run, continue_learning_rate):
    """The state to start from, config.json written with the run's history, and the model compiled."""
    state, config = _start_state(run), run.config
    if run.stored:
        folder.warn_if_inexact(run.run_dir, run.stored.get("environment"), config["environment"])
        config.update({key: run.stored[key] for key in folder.HISTORY_KEYS if key in run.stored})
    if run.extend:
        config.setdefault("extended", []).append({"from_epochs": run.extend[0], "to_epochs": run.extend[1],
                                                  "after_epoch": state["epoch"]})
    if continue_learning_rate is not None:
        config.setdefault("learning_rate_changes", []).append(
            {"after_epoch": state["epoch"], "initial_learning_rate": float(continue_learning_rate)})
    if config.get("learning_rate_changes"):  # from the change on: its rate, then the later milestones
        change = config["learning_rate_changes"][-1]
        run.recipe = run.recipe.override(learning_rate=change["initial_learning_rate"],
                                         milestones=tuple(m for m in run.recipe.milestones
                                                          if m > change["after_epoch"]))
    checkpoint.atomic_write_text(run.run_dir / "config.json", json.dumps(config, indent=1))
    with run.strategy.scope():
        optimizer = run.recipe.optimizer(run.resnest, run.data.steps_per_epoch)
        if run.policy == "mixed_float16":  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        run.model.compile(optimizer=optimizer, loss=loss_for(run.model), metrics=["accuracy"],
                          jit_compile=config["jit_compile"])
        run.model.optimizer.build(run.model.trainable_variables)
    return state


def _restore(run, run_state):
    """Load what the run continues from into the model and its optimizer: a finished run's model, or a commit."""
    state = run_state.state
    if run.summary:
        source, target = checkpoint.state_variables(run.final), checkpoint.state_variables(run.model)
        if [v[1:] for v in checkpoint.describe(source)] != [v[1:] for v in checkpoint.describe(target)]:
            raise checkpoint.CheckpointError(f"{run.run_dir / 'model.keras'} holds another model's variables; "
                                             "it cannot be extended with this model")
        checkpoint.assign(target, checkpoint.snapshot(source))
        print(f"extending {run.run_dir} from {run.extend[0]} to {run.extend[1]} epochs "
              f"(optimizer step {int(run.model.optimizer.iterations.numpy())})")
    elif state["epoch"]:
        run_state.restore()
        run_state.committer.remove_unreferenced()
        print(f"resuming {run.run_dir} after epoch {state['epoch']} of {run.recipe.epochs} "
              f"(optimizer step {int(run.model.optimizer.iterations.numpy())})")


def _wait_quietly(run_state):
    try:
        run_state.committer.wait()
    except (OSError, KeyboardInterrupt):
        pass


def _fit(run, state, verbose):
    """Train the epochs after the state's, committing each; returns the RunState callback."""
    data, recipe, model = run.data, run.recipe, run.model
    schedule = recipe.schedule(run.resnest, data.steps_per_epoch)
    run_state = RunState(run.run_dir, schedule, data.steps_per_epoch, data.num_train, state, run.name)
    run_state.set_model(model)
    _restore(run, run_state)
    start = state["epoch"]
    if multiworker.is_multi_worker(run.strategy):  # every worker starts from the chief's commit
        variables = run_state.variables()
        *values, start = multiworker.from_chief(run.strategy, [v.value for v in variables] + [tf.constant(start)])
        checkpoint.assign(variables, [v.numpy() for v in values])
        start = int(start)
    classes = data.num_classes or (model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None)
    interrupt = DeferredInterrupt()
    callbacks = [
        DivergenceGuard(run.name, run.resnest, recipe.initial_learning_rate(run.resnest), schedule,
                        data.steps_per_epoch, classes, run.run_dir),
        run_state,  # also writes log.csv and the TensorBoard scalars, in its writer thread
        interrupt,
    ]
    if data.epochs:
        train_data, steps = data.epochs(start, recipe.epochs), data.steps_per_epoch
    else:
        train_data, steps = data.train, None
    try:
        with interrupt:
            if multiworker.is_multi_worker(run.strategy):
                multiworker.fit(model, run.strategy, train_data, data.validation,
                                from_logits=not predicts_probabilities(model), epochs=recipe.epochs,
                                initial_epoch=start, steps_per_epoch=steps, callbacks=callbacks,
                                verbose=(1 if verbose == "auto" else verbose) if run.writes else 0)
            else:
                model.fit(train_data, validation_data=data.validation, epochs=recipe.epochs, initial_epoch=start,
                          steps_per_epoch=steps, callbacks=callbacks, verbose=verbose, shuffle=False)
        run_state.committer.wait()
    except TrainingDiverged:
        _wait_quietly(run_state)
        run_state.publish_best()
        raise
    except KeyboardInterrupt:
        _wait_quietly(run_state)
        raise TrainingInterrupted(run.run_dir, run_state.state["epoch"], recipe.epochs) from None
    return run_state


def _finish(run, run_state):
    """Test the final model, write model.keras, best.weights.h5, summary.json and curves.png; drop the checkpoint."""
    model, run_dir, state = run.model, run.run_dir, run_state.state
    if multiworker.is_multi_worker(run.strategy):
        test_loss, test_accuracy = multiworker.evaluator(model, not predicts_probabilities(model))(run.data.test)
    else:
        test_loss, test_accuracy = model.evaluate(run.data.test, verbose=0)
    folder.write_final(run_dir, "model.keras", model.save, folder.bytes_of(checkpoint.state_variables(model)),
                       state["epoch"])
    run_state.publish_best()
    summary = report.summarize(run.config, state, test_loss, test_accuracy)
    report.plot_curves(state["history"], run_dir / "curves.png", run.config)
    checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return summary


def _check_continue_learning_rate(continue_learning_rate, resume):
    if continue_learning_rate is None:
        return
    if not resume:
        raise ValueError("continue_learning_rate (--continue-lr) continues a run: pass resume=True (--resume)")
    if isinstance(continue_learning_rate, bool) or not isinstance(continue_learning_rate, (int, float)) \
            or not math.isfinite(continue_learning_rate) or continue_learning_rate <= 0:
        raise ValueError(f"continue_learning_rate must be a finite number > 0, got {continue_learning_rate!r}")


def train(model, data="digits", recipe="paper", *, output_dir, seed=0, precision="auto", jit_compile=None,
          strategy=None, resume=False, validation=None, model_options=None, data_options=None, verbose="auto",
          continue_learning_rate=None, deterministic=False, **overrides):
    """Train `model` on `data` with `recipe` into `output_dir`; returns the run's summary.

    model: a registry name ("resnet20.a-resnest", built for the data), a function
        returning a keras.Model (called with `model_options` after seeding, under the
        strategy and precision), or a keras.Model.
    data: anything ``nestzoo.data.splits`` takes: a data set name ("digits", "cifar10",
        "cifar100"), a ``nestzoo.data.Datasets``, (train, test) / (train, validation,
        test) batched tf.data datasets or (x, y) arrays, or (x, y) arrays with
        `validation`. The best weights are chosen on the validation split (the test set
        unless `validation` holds part of the training set out). With a name or arrays,
        epoch e's order (and augmentation) is a function of (seed, e), so a resumed run
        equals an uninterrupted one; a tf.data dataset's order is its own.
        `data_options` go to ``nestzoo.data.load`` with a name (source=, data_dir=, download=).
    recipe: "paper" (appendix B.3), "quick", or a ``Recipe``; `overrides` change its
        fields (epochs=..., learning_rate=..., milestones=..., ...).
    precision: "auto" (mixed_float16 on a GPU, else float32), "float32",
        "mixed_float16" or "mixed_bfloat16" (slow on a CPU: a warning says so).
        jit_compile: XLA; None is on for GPUs only.
    strategy: a ``tf.distribute`` strategy (e.g. MirroredStrategy); the model is built
        and compiled under its scope. Under a ``MultiWorkerMirroredStrategy`` every
        worker calls `train` alike; the epochs run on `nestzoo.training.multiworker`'s
        loop, only the chief writes `output_dir`, and the other workers return None.
    resume: continue the run in `output_dir` from its last committed epoch; without it a
        directory holding another run's files is refused. More epochs than stored
        extend the run (recorded in config.json's "extended").
    continue_learning_rate: with resume, continue from the last committed epoch at this
        learning rate, multiplied by gamma at each later milestone (e.g. after a
        divergence); recorded in config.json's "learning_rate_changes".
    deterministic: ``tf.config.experimental.enable_op_determinism()`` (process-wide),
        for bit-identical results where kernels are not deterministic (GPUs).
    Raises TrainingDiverged when the loss becomes NaN or infinite, or an epoch's mean
    training loss exceeds 10 ln(classes); TrainingInterrupted on Ctrl-C;
    checkpoint.FolderInUse when another process trains in `output_dir`.
    """
    recipe = get_recipe(recipe, **overrides)
    _check_continue_learning_rate(continue_learning_rate, resume)
    with contextlib.ExitStack() as stack:
        if multiworker.writes_files(strategy):
            run_dir = Path(output_dir)
            folder.check_output_dir(run_dir)
        else:  # TensorFlow's multi-worker pattern: a private folder, discarded
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nestzoo-worker-")))
            resume = True
        stack.enter_context(checkpoint.claim(run_dir))
        run = _prepare(model, data, recipe, run_dir, seed=seed, precision=precision, jit_compile=jit_compile,
                       strategy=strategy, resume=resume, validation=validation, model_options=model_options,
                       data_options=data_options, deterministic=deterministic)
        if run.summary:
            run.final = _final_model(run)  # checked before anything is written
        finished = bool(run.summary and not run.extend)
        if multiworker.is_multi_worker(run.strategy):  # the chief's folder decides for every worker
            finished = bool(multiworker.from_chief(run.strategy, [tf.constant(int(finished))])[0])
        if finished:
            return _finished(run, continue_learning_rate) if run.writes else None
        state = _resume(run, continue_learning_rate)
        run_state = _fit(run, state, verbose)
        summary = _finish(run, run_state)
        return summary if run.writes else None

"""One training run: a model, a data set, a recipe and a seed in a run directory.

A run directory holds, when the run has finished::

    config.json       what was trained and how (compared when a run is resumed)
    log.csv           one row per finished epoch
    tensorboard/      TensorBoard logs
    best.weights.h5   the weights of the epoch with the best validation accuracy
    model.keras       the final model (the paper reports its test accuracy)
    summary.json      config, seed, parameters, accuracies, time per epoch, images/s
    curves.png        loss and accuracy per epoch

While it runs, ``checkpoint/`` holds the last finished epoch (weights, optimizer
state and schedule position) and ``checkpoint/state.json`` commits it: every file is
written under a temporary name and renamed, so a run killed at any moment, SIGKILL
included, continues from its last finished epoch when started again with
``resume=True``.
"""
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from nestzoo import registry
from nestzoo.heads import variant_of
from nestzoo.training import report
from nestzoo.recipe import get_recipe
from nestzoo.training.runtime import dtype_policy, resolve_jit_compile, resolve_precision

# Parts of config.json that may differ when a run is resumed on another machine.
RUNTIME_KEYS = ("jit_compile", "replicas")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last finished epoch's checkpoint is kept."""


def is_resnest(model):
    """Whether `model` is a ResNEst (eq. 2), read from its structure (`nestzoo.variant_of`), not its name."""
    return variant_of(model) == ("resnet", "resnest")


def _atomic_write_text(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _publish(src, dst):
    """Make `dst` a copy of `src` atomically (a hard link where the file system allows)."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already published; renaming a link onto its twin would be a no-op leaving tmp
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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
        else:
            self.train, self.validation, self.test = data.train, data.validation, data.test
            self.name, self.num_classes, self.input_shape = data.spec.name, data.num_classes, data.input_shape
            self.num_train, self.validation_split = data.num_train, data.validation_split
        self.steps_per_epoch = int(self.train.cardinality())
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


class _DivergenceGuard(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN or infinite, before anything is saved."""

    def __init__(self, model_name, resnest, initial_learning_rate, schedule, steps_per_epoch):
        super().__init__()
        self.model_name, self.resnest, self.initial_learning_rate = model_name, resnest, initial_learning_rate
        self.schedule, self.steps_per_epoch = schedule, steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if math.isfinite(loss):
            return
        learning_rate = float(self.schedule(self.epoch * self.steps_per_epoch))
        cause = (
            f"{self.model_name} is a ResNEst trained from learning rate {self.initial_learning_rate:g}; the paper "
            "(appendix B.3) found that ResNEsts diverge at 0.1 and 0.05 and trained them at 0.01"
            if self.resnest and self.initial_learning_rate > 0.01
            else "the learning rate is likely too high for this model"
        )
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1} (learning rate {learning_rate:g}): "
            f"{cause}. "
            "Lower the learning rate (--lr); the last finished epoch's checkpoint is kept."
        )


class _RunState(keras.callbacks.Callback):
    """Commit every finished epoch: checkpoint, state.json, log.csv, best weights."""

    def __init__(self, run_dir, schedule, steps_per_epoch, num_train, state):
        super().__init__()
        self.run_dir, self.dir = run_dir, run_dir / "checkpoint"
        self.schedule, self.steps_per_epoch, self.num_train = schedule, steps_per_epoch, num_train
        self.state = state

    @staticmethod
    def load(run_dir):
        path = run_dir / "checkpoint" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"epoch": 0, "history": [], "best": None}

    def publish(self):
        """Remove files no commit refers to; publish the log and the best weights."""
        keep = {"state.json"} | {self.state[k]["file"] for k in ("last", "best") if self.state.get(k)}
        for path in self.dir.glob("*"):
            if path.name not in keep:
                path.unlink()
        report.write_csv(self.run_dir / "log.csv", self.state["history"])
        if self.state["best"]:
            _publish(self.dir / self.state["best"]["file"], self.run_dir / "best.weights.h5")

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
               "images_per_second": self.num_train / train_seconds}
        self.dir.mkdir(exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.dir / f"tmp-{name}"
        self.model.save_weights(tmp)
        os.replace(tmp, self.dir / name)
        last = {"epoch": epoch + 1, "file": name}
        best = self.state["best"]
        score = row.get("val_accuracy", row.get("accuracy"))
        if best is None or score > best["val_accuracy"]:
            best = {**last, "val_accuracy": score}
        self.state = {"epoch": epoch + 1, "history": self.state["history"] + [row], "last": last, "best": best}
        _atomic_write_text(self.dir / "state.json", json.dumps(self.state, indent=1))  # the commit
        self.publish()


def _run_config(model, model_name, data, recipe, seed, policy, jit_compile, strategy):
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
    }))


def _check_run_dir(run_dir, config, resume):
    """Refuse a directory holding another run's files; returns whether it holds this run."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return False
    stored = run_dir / "config.json"
    if not resume:
        raise ValueError(f"output directory {str(run_dir)!r} holds another run's files; "
                         "pass resume=True (--resume) to continue it, or choose a new directory")
    if not stored.exists():
        raise ValueError(f"output directory {str(run_dir)!r} holds files that are not a nestzoo run; "
                         "choose a new directory")
    old = json.loads(stored.read_text())
    differ = sorted(k for k in set(old) | set(config) if k not in RUNTIME_KEYS and old.get(k) != config.get(k))
    if differ:
        raise ValueError(f"cannot resume {str(run_dir)!r}: it holds a run with other {', '.join(differ)} "
                         f"({', '.join(f'{k}={old.get(k)!r}' for k in differ)})")
    return True


def train(model, data="digits", recipe="paper", *, output_dir, seed=0, precision="auto", jit_compile=None,
          strategy=None, resume=False, validation=None, model_options=None, data_options=None, verbose="auto",
          **overrides):
    """Train `model` on `data` with `recipe` into `output_dir`; returns the run's summary.

    model: a registry name ("resnet20.a-resnest", built for the data), a function
        returning a keras.Model (called with `model_options` after seeding, under the
        strategy and precision), or a keras.Model.
    data: a data set name of ``nestzoo.data`` ("digits", "cifar10", "cifar100"), a
        ``nestzoo.data.Datasets``, or (train, test) / (train, validation, test) batched
        tf.data datasets. The best weights are chosen on the validation split (the
        test set unless `validation` holds part of the training set out).
        `data_options` go to ``nestzoo.data.load`` with a name (source=, data_dir=, download=).
    recipe: "paper" (appendix B.3), "quick", or a ``Recipe``; `overrides` change its
        fields (epochs=..., learning_rate=..., milestones=..., ...).
    precision: "auto" (mixed_float16 on a GPU, else float32), "float32",
        "mixed_float16" or "mixed_bfloat16". jit_compile: XLA; None is on for GPUs only.
    strategy: a ``tf.distribute`` strategy (e.g. MirroredStrategy); the model is built
        and compiled under its scope.
    resume: continue the run in `output_dir` from its last finished epoch; without it a
        directory holding another run's files is refused.
    Raises TrainingDiverged when the loss becomes NaN or infinite.
    """
    recipe = get_recipe(recipe, **overrides)
    policy = resolve_precision(precision)
    if precision == "auto" and isinstance(model, keras.Model):
        policy = model.dtype_policy.name
    jit_compile = resolve_jit_compile(jit_compile)
    strategy = strategy or tf.distribute.get_strategy()
    run_dir = Path(output_dir)

    keras.utils.set_random_seed(seed)
    data = _Data(data, recipe.batch_size, seed, validation, data_options)
    built = _build_model(model, data, policy, strategy, model_options)
    model_name = model if isinstance(model, str) else built.name
    model = built
    config = _run_config(model, model_name, data, recipe, seed, policy, jit_compile, strategy)
    if _check_run_dir(run_dir, config, resume) and (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text())  # finished already
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1))

    resnest = is_resnest(model)
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
    state = _RunState.load(run_dir)
    run_state = _RunState(run_dir, schedule, data.steps_per_epoch, data.num_train, state)
    if state["epoch"]:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(run_dir / "checkpoint" / state["last"]["file"])
        run_state.publish()
        print(f"resuming {run_dir} after epoch {state['epoch']} of {recipe.epochs} "
              f"(optimizer step {int(model.optimizer.iterations.numpy())})")
    callbacks = [
        _DivergenceGuard(model_name, resnest, config["initial_learning_rate"], schedule, data.steps_per_epoch),
        run_state,
        keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False),
    ]
    model.fit(data.train, validation_data=data.validation, epochs=recipe.epochs, initial_epoch=state["epoch"],
              callbacks=callbacks, verbose=verbose, shuffle=False)

    test_loss, test_accuracy = model.evaluate(data.test, verbose=0)
    model.save(run_dir / "model.keras")
    summary = report.summarize(config, run_state.state, test_loss, test_accuracy)
    report.plot_curves(run_state.state["history"], run_dir / "curves.png", config)
    _atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    shutil.rmtree(run_dir / "checkpoint")
    return summary

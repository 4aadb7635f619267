"""The callbacks of a run: the divergence guard and the epoch commits (``nestzoo.training.checkpoint``)."""
import math
import signal
import threading
import time

import keras
import tensorflow as tf

from nestzoo.training import checkpoint, folder, report


class DeferredInterrupt(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) during `model.fit`, raised as KeyboardInterrupt at the next batch's end.

    Python raises KeyboardInterrupt wherever the main thread is, and code that catches
    every exception there (Keras's trace-time structure checks do) can swallow it, so the
    run would go on. As a context manager around fit, this installs a handler that only
    records the signal; the callback raises it between steps, where nothing catches it.
    A second Ctrl-C raises at once. Outside the main thread it does nothing.
    """

    def __init__(self):
        super().__init__()
        self.pending, self._previous = False, None

    def _record(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._record)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.pending and exc[0] is None:
            raise KeyboardInterrupt  # pressed during fit's last step: the run stops here

    def _raise_if_pending(self, *args, **kwargs):
        if self.pending:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _raise_if_pending


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or exploded; the last committed epoch's checkpoint is kept."""


def explosion_bound(classes):
    """The mean training loss above which an epoch counts as exploded: 10 x a uniform guess's, 10 ln(classes)."""
    return 10 * math.log(max(int(classes), 2))


class DivergenceGuard(keras.callbacks.Callback):
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


class RunState(keras.callbacks.Callback):
    """Commit every finished epoch: copy the state to host memory, let the Committer write it."""

    def __init__(self, run_dir, schedule, steps_per_epoch, num_train, state, model_name):
        super().__init__()
        self.run_dir, self.dir = run_dir, run_dir / "checkpoint"
        self.schedule, self.steps_per_epoch, self.num_train = schedule, steps_per_epoch, num_train
        self.model_name = model_name
        self.committer = checkpoint.Committer(self.dir, state, on_commit=self.publish_log)
        self.first_in_process = True
        self.best_arrays = None  # (epoch, value tensors) of the best epoch seen in this process
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
            folder.write_final(self.run_dir, "best.weights.h5", self.model.save_weights,
                               folder.bytes_of(self.model.weights), self.state["epoch"])
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
        values = self.read_values()
        score = row.get("val_accuracy", row.get("accuracy"))
        best = self.state["best"]
        if best is None or score > best["val_accuracy"]:
            self.best_arrays = (epoch + 1, values)
        self.committer.submit(epoch + 1, values, row, self._description, score)

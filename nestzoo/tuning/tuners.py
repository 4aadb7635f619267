"""keras-tuner's tuners with nestzoo's guarantees, by subclassing keras-tuner's oracles and tuners.

- their state files are written atomically (a SIGKILL at any moment leaves a state that reloads);
- the oracle logs which worker started each trial (`distributed.WatchedOracle`);
- a worker's heartbeat follows the running trial (`on_trial_begin` / `on_trial_end`), and a
  worker told to wait asks again a second later (`pre_create_trial`);
- each completed trial's checkpoint gets a SHA-256 beside it, and a sweep whose state
  is damaged (a file that does not parse, a trial's folder gone, a checkpoint gone or
  swapped) is refused on reload, naming what is wrong.
"""
import hashlib
import json
import time
from pathlib import Path

import keras_tuner
from keras_tuner.engine.trial import TrialStatus

from nestzoo.training.checkpoint import atomic_write_text
from nestzoo.tuning import _keras_tuner
from nestzoo.tuning.cluster import role
from nestzoo.tuning.distributed import WatchedOracle

DIGEST = "checkpoint.sha256"  # beside keras-tuner's checkpoint in each trial's folder


def read_json(path):
    """The JSON data of `path`, or a ValueError naming the file that does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:
        raise ValueError(f"{path} is damaged (not JSON: {error}); restore it, or start the sweep again "
                         "(--overwrite)") from None


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class RandomSearchOracle(WatchedOracle, _keras_tuner.AtomicOracleState, keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's RandomSearchOracle, watched, its state written atomically."""


class BayesianOptimizationOracle(WatchedOracle, _keras_tuner.AtomicOracleState,
                                 keras_tuner.oracles.BayesianOptimizationOracle):
    """keras-tuner's BayesianOptimizationOracle, watched, its state written atomically."""


class HyperbandOracle(WatchedOracle, _keras_tuner.AtomicOracleState, keras_tuner.oracles.HyperbandOracle):
    """keras-tuner's HyperbandOracle, watched, its state written atomically."""


class SweepTuner(_keras_tuner.AtomicTunerState):
    """Mixin of a keras-tuner tuner class whose `oracle_class` is one of the oracles above.

    Takes the tuner's own arguments: hypermodel, directory, project_name, overwrite, and
    the oracle's (objective, max_trials or max_epochs, seed, ...), plus `events` (an
    `EventLog` or None). `guard`: a worker's `WorkerGuard`, told which trial runs.
    """

    oracle_class = None
    guard = None
    _asked = False  # whether the last trial asked for has not begun (the oracle said IDLE)

    def __init__(self, hypermodel=None, *, directory=None, project_name=None, overwrite=False, events=None,
                 **oracle_options):
        oracle = self.oracle_class(events=events, **oracle_options)
        # keras-tuner's RandomSearch, BayesianOptimization and Hyperband constructors only build
        # their oracle and pass it on; ours is built above and passed on the same way.
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, directory=directory, project_name=project_name,
                                   overwrite=overwrite)

    def checkpoint(self, trial_id):
        """Path of a trial's checkpoint (keras-tuner's file)."""
        return _keras_tuner.checkpoint_path(self, trial_id)

    def pre_create_trial(self):
        if self._asked:  # the oracle said wait: ask again in a second, not at once
            time.sleep(1)
        self._asked = True
        super().pre_create_trial()

    def on_trial_begin(self, trial):
        self._asked = False
        if self.guard:
            self.guard.trial_id = trial.trial_id
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        checkpoint = self.checkpoint(trial.trial_id)
        if trial.status == TrialStatus.COMPLETED and checkpoint.exists():
            atomic_write_text(checkpoint.with_name(DIGEST), _sha256(checkpoint))
        super().on_trial_end(trial)
        if self.guard:
            self.guard.trial_id = None

    def reload(self):
        """keras-tuner's reload, refused with the file named when the sweep's state is damaged."""
        worker = role() == "worker"
        if not worker:
            self._check_state()
        super().reload()
        if not worker:
            self._check_checkpoints()

    def _check_state(self):
        project = Path(self.project_dir)
        for path in sorted(project.glob("**/*.json")):
            read_json(path)
        state = read_json(project / "oracle.json")
        recorded = set(state.get("start_order", [])) | set(state.get("ongoing_trials", {}).values())
        for trial_id in sorted(recorded):
            path = Path(self.get_trial_dir(trial_id)) / "trial.json"
            if not path.exists():
                raise ValueError(f"trial {trial_id} of the sweep in {project.parent} is damaged: {path} is missing "
                                 f"(oracle.json records the trial); restore its folder, or start the sweep again "
                                 "(--overwrite)")

    def _check_checkpoints(self):
        for trial_id, trial in sorted(self.oracle.trials.items()):
            checkpoint = self.checkpoint(trial_id)
            digest = checkpoint.with_name(DIGEST)
            if trial.status != TrialStatus.COMPLETED or not digest.exists():
                continue  # a remote worker keeps the checkpoint of its trials
            problem = ("is missing" if not checkpoint.exists() else
                       "is not the one the trial wrote (its SHA-256 differs)"
                       if _sha256(checkpoint) != digest.read_text().strip() else None)
            if problem:
                raise ValueError(f"trial {trial_id} of the sweep in {Path(self.project_dir).parent} is damaged: "
                                 f"{checkpoint} {problem}; restore it, or start the sweep again (--overwrite)")


class RandomSearch(SweepTuner, keras_tuner.RandomSearch):
    """keras-tuner's RandomSearch with nestzoo's guarantees (see the module's docstring)."""

    oracle_class = RandomSearchOracle


class BayesianOptimization(SweepTuner, keras_tuner.BayesianOptimization):
    """keras-tuner's BayesianOptimization with nestzoo's guarantees."""

    oracle_class = BayesianOptimizationOracle


class Hyperband(SweepTuner, keras_tuner.Hyperband):
    """keras-tuner's Hyperband with nestzoo's guarantees (max_epochs: the trials' most epochs)."""

    oracle_class = HyperbandOracle


TUNERS = {"random": RandomSearch, "bayesian": BayesianOptimization, "hyperband": Hyperband}

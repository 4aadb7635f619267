"""The one module that uses keras-tuner's private API (pinned in setup.cfg: keras-tuner>=1.4.8,<1.5).

Three guarantees need it, and keras-tuner 1.4 has no public hook for any of them:

- **Atomic state.** keras-tuner writes its state (``oracle.json``, each
  ``trial_*/trial.json``, the tuner's ``<tuner_id>.json``) in place, so a SIGKILL
  during a write leaves a truncated file that its reload cannot read. `Oracle.save`
  and `BaseTuner.save` are public and overridden here, but the paths they write come
  from private methods (``_get_oracle_fname``, ``_get_tuner_fname``), a trial's file
  is written by the private ``Oracle._save_trial``, and a worker's tuner skips the
  oracle by the private ``_is_worker``; a trial's checkpoint is named by the private
  ``_get_checkpoint_fname`` (nestzoo keeps its SHA-256 beside it).
- **A heartbeat with a deadline.** A worker's `OracleClient` waits up to an hour for
  each answer of the chief; a ping that fails within seconds needs the client's gRPC
  stub (``OracleClient.stub``) and keras-tuner's request messages (``keras_tuner.src.protos``).

- **A finished trial is not run again.** keras-tuner 1.4's ``Oracle.end_trial`` writes
  the trial's file, then ``oracle.json`` still listing the trial as running (it leaves
  ``ongoing_trials`` only afterwards), and ``Oracle.reload`` sends every trial listed as
  running to the private ``_retry_queue``: a kill between the two writes re-ran a
  finished trial on resume.

tests/test_tuning_private.py fails when an installed keras-tuner changes any of these.
"""
import json
import os
from pathlib import Path

from keras_tuner.engine.trial import TrialStatus

from nestzoo.training.checkpoint import atomic_write_text

FINISHED = (TrialStatus.COMPLETED, TrialStatus.FAILED)  # a trial's statuses that end_trial leaves for good
USED = {  # class: the private methods used here (and the oracle's attribute _retry_queue)
    "keras_tuner.Oracle": ("_get_oracle_fname", "_get_trial_dir", "_save_trial"),
    "keras_tuner.Tuner": ("_get_tuner_fname", "_is_worker", "_get_checkpoint_fname"),
}


def write_state(path, state):
    """Write a keras-tuner state dict as JSON, atomically (what keras-tuner's own writer does in place)."""
    atomic_write_text(path, json.dumps(state))


class AtomicOracleState:
    """Mixin of a `keras_tuner.Oracle` subclass: the oracle's and the trials' files are written atomically."""

    def save(self):
        write_state(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_state(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())

    def reload(self):
        """keras-tuner's reload, less the retry of a trial whose own file says it finished."""
        super().reload()
        for trial_id in [t for t in self._retry_queue if self.trials[t].status in FINISHED]:
            self._retry_queue.remove(trial_id)
            if trial_id not in self.end_order:
                self.end_order.append(trial_id)


class AtomicTunerState:
    """Mixin of a `keras_tuner.Tuner` subclass: the tuner's file (and, on the oracle's process, the
    oracle's) are written atomically."""

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        write_state(self._get_tuner_fname(), self.get_state())


def checkpoint_path(tuner, trial_id):
    """Path of the checkpoint keras-tuner keeps of a trial's best epoch."""
    return Path(tuner._get_checkpoint_fname(trial_id))


def ping(client, trial_id, timeout):
    """Ask the chief behind `client` (a worker's `OracleClient`) for `trial_id` (None: the search space),
    waiting at most `timeout` seconds; raises grpc.RpcError when it does not answer."""
    from keras_tuner.src import protos

    service = protos.get_service()
    if trial_id is None:
        client.stub.GetSpace(service.GetSpaceRequest(), timeout=timeout)
    else:
        client.stub.GetTrial(service.GetTrialRequest(trial_id=trial_id), timeout=timeout)


def rebuild_grid_order(oracle):
    """After a reload, rebuild a GridSearchOracle's walk of the grid (its private ``_ordered_ids``
    linked list and ``_populate_next`` queue), which keras-tuner 1.4 does not save: without it a
    reloaded grid fails on its next trial (KeyError of a trial id). Every known trial, in grid
    order (the oracle's own ``_compare``), is a point from which the walk continues."""
    import functools

    from keras_tuner.src.tuners.gridsearch import LinkedList

    def compare(a, b):
        return oracle._compare(oracle.trials[a].hyperparameters.values, oracle.trials[b].hyperparameters.values)

    ids = sorted(oracle.trials, key=functools.cmp_to_key(compare))
    oracle._ordered_ids = LinkedList()
    for trial_id in ids:
        oracle._ordered_ids.insert(trial_id)
    oracle._populate_next = list(ids)

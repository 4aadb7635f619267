"""keras-tuner's chief/worker mode, with bounds on how long a process waits for a silent peer.

keras-tuner configures it by environment variables (`nestzoo.tuning.cluster`;
``nestzoo tune --chief`` / ``--worker`` set them). Alone, it lets a worker wait up to an hour for a chief that is
gone and a chief wait forever for a dead worker's trial; nestzoo bounds both with
``patience`` seconds: a worker pings the chief every ``patience / 4`` s and exits
(status 3) after ``patience`` s without an answer (`WorkerGuard`); the chief declares
a running trial lost after ``patience`` s without its worker's ping and hands it to
keras-tuner's retry queue (re-run once by another worker, else failed), and ends when
every worker has stopped, or after ``patience`` s with no trial running and no
worker heard from (`watch_chief`). `WatchedOracle` records who started each trial
(``trials.jsonl``) and when each worker was last heard from.
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus

from nestzoo.tuning import _keras_tuner


class EventLog:
    """``trials.jsonl``: one JSON line per trial event (start, lost), appended."""

    def __init__(self, path):
        self.path = Path(path)

    def write(self, kind, trial_id, worker, **extra):
        event = {"event": kind, "trial": trial_id, "worker": worker, "time": time.time(), **extra}
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def read(self):
        """The events; a line cut short by a kill is skipped."""
        events = []
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


class WatchedOracle:
    """Mixin of a keras-tuner oracle: logs each trial's start (`events`, an `EventLog` or None) and
    when each worker and each running trial was last heard from."""

    def __init__(self, *args, events=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = events
        self.last_contact, self.last_seen, self.stopped = time.time(), {}, False

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        """keras-tuner's next trial for `tuner_id`; while other workers' trials run (one may be lost and
        need a re-run), a worker that would be stopped is told to wait (IDLE) instead."""
        trial = super().create_trial(tuner_id)
        self.last_contact = time.time()
        if trial.status == TrialStatus.STOPPED and self.ongoing_trials:
            self.tuner_ids.add(tuner_id)  # keras-tuner removed it with the STOPPED answer
            return Trial(self.hyperparameters.copy(), trial_id=trial.trial_id, status=TrialStatus.IDLE)
        if trial.status == TrialStatus.RUNNING:
            self.last_seen[trial.trial_id] = time.time()
            if self.events:
                self.events.write("start", trial.trial_id, tuner_id)
        elif trial.status == TrialStatus.STOPPED:
            self.stopped = True
        return trial

    @keras_tuner.synchronized
    def get_trial(self, trial_id):
        self.last_contact = self.last_seen[trial_id] = time.time()
        return super().get_trial(trial_id)

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        self.last_contact = self.last_seen[trial_id] = time.time()
        return super().update_trial(trial_id, metrics, step=step)

    @keras_tuner.synchronized
    def get_space(self):
        self.last_contact = time.time()
        return super().get_space()

    @keras_tuner.synchronized
    def end_trial(self, trial):
        self.last_contact = time.time()
        return super().end_trial(trial)

    @keras_tuner.synchronized
    def end_lost_trials(self, patience):
        """Hand the trials whose worker has been silent for `patience` s to keras-tuner's retry queue."""
        now = time.time()
        for worker, trial in list(self.ongoing_trials.items()):
            silent = now - self.last_seen.get(trial.trial_id, now)
            if silent > patience:
                trial.status = TrialStatus.INVALID
                trial.message = f"lost: worker {worker} silent for {silent:.0f} s"
                if self.events:
                    self.events.write("lost", trial.trial_id, worker, silent=round(silent, 1))
                self.end_trial(trial)
                self.tuner_ids.discard(worker)

    @keras_tuner.synchronized
    def finished(self):
        """Whether the oracle has no more trials and every worker has been told so."""
        return self.stopped and not self.ongoing_trials and not self.tuner_ids


def watch_chief(oracle, patience):
    """Block until the chief should end: "finished", or "abandoned" (no trial running, no worker
    heard from for `patience` s); trials of silent workers are re-queued meanwhile."""
    while True:
        time.sleep(0.5)
        oracle.end_lost_trials(patience)
        if oracle.finished():
            return "finished"
        if not oracle.ongoing_trials and time.time() - oracle.last_contact > patience:
            return "abandoned"


class WorkerGuard(threading.Thread):
    """Pings the chief every patience/4 s (the running trial, else the search space); exits the
    process with status 3 after `patience` s without an answer. `trial_id` is set by the tuner."""

    def __init__(self, client, patience):
        super().__init__(daemon=True, name="nestzoo-worker-guard")
        self.client, self.patience, self.trial_id = client, patience, None
        self.stopped = threading.Event()

    def run(self):
        import grpc

        answered = time.time()
        while not self.stopped.wait(self.patience / 4):
            try:
                _keras_tuner.ping(self.client, self.trial_id, timeout=self.patience / 4)
                answered = time.time()
            except grpc.RpcError:
                if time.time() - answered > self.patience:
                    print(f"nestzoo tune: the chief has not answered for {self.patience:.0f} s; "
                          f"worker {os.environ.get('KERASTUNER_TUNER_ID')} stops", file=sys.stderr, flush=True)
                    os._exit(3)

"""The checkpoint of a run: what resuming needs, written in the background, committed atomically.

``checkpoint/`` holds, for the last finished epoch (and for the best one, while it is
another), one file ``epoch-NNNN.ckpt``: the raw bytes of every variable that shapes
the rest of the trajectory (the model's weights and BN statistics, any seed-generator
state, and the optimizer's slots, iteration counter and loss-scale state), one after
the other. ``checkpoint/state.json`` is the commit record: the epoch, the log rows,
the variables' paths, shapes and dtypes, and each file's size and SHA-256. It is
written last, under a temporary name and renamed, so the files it names are complete
whenever it exists; a file that does not match its checksum is refused by name.

The main thread only reads the variables' values (one call; tensors are immutable, the
next update of a variable copies it); a background thread copies them to the host,
writes, hashes, syncs and commits, and the next epoch's commit (or the end of the
run) waits for it.

A run's folder is claimed by one process at a time (`claim`): ``nestzoo.lock`` holds
the owner's pid, host and start time while it works there.
"""
import contextlib
import errno
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

STATE_KEYS = ("epoch", "history", "last", "best", "variables")
CHUNK = 1 << 24
LOCK = "nestzoo.lock"
TAKEOVER_SECONDS = 30  # a takeover guard older than this was left by a process that died taking over


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete, or of another model."""


class CommitError(OSError):
    """An epoch could not be committed (a full disk, a folder turned read-only, ...)."""


class FolderInUse(ValueError):
    """Another live process works in the folder (its ``nestzoo.lock`` names it)."""


def read_json(path, remedy):
    """The JSON in `path`; a file that is not valid JSON is refused naming it, with `remedy`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is damaged: not valid JSON ({error}); {remedy}") from None


def read_config(run_dir):
    """A run's config.json (what was trained and how); a damaged one is refused naming the file."""
    path = Path(run_dir) / "config.json"
    remedy = "restore it, or train into a new directory"
    config = read_json(path, remedy)
    if not isinstance(config, dict) or not {"recipe", "data", "model"} <= set(config):
        raise CheckpointError(f"{path} is not a nestzoo run's config (no recipe, data or model); {remedy}")
    return config


def _owner(path):
    """The lock's record {"pid", "host", "started"}, or None if it vanished."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FolderInUse(f"{path} is not a nestzoo lock; remove it if no nestzoo process works in "
                          f"{path.parent}") from None


def _alive(owner):
    """Whether the lock's owner may still run: always for another host's, which cannot be asked."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _take_over(path, stale):
    """Remove the stale lock `stale`, unless another process took it over first (a guard file serializes)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > TAKEOVER_SECONDS:
                guard.unlink()
        time.sleep(0.05)
        return
    try:
        if _owner(path) == stale:
            path.unlink()
    finally:
        os.close(fd)
        guard.unlink()


def _create_exclusively(complete, path):
    """Create `path` with the content of the file `complete`, failing with FileExistsError if it exists.

    A hard link makes it appear complete; where the file system has none, an O_EXCL create.
    """
    try:
        os.link(complete, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(complete.read_text())


@contextlib.contextmanager
def claim(directory):
    """Hold `directory` for this process while the block runs, or raise FolderInUse naming its owner.

    The claim is an exclusive create of ``directory/nestzoo.lock`` (a complete file
    hard-linked into place) recording the pid, host and start time. A lock whose process
    has died on this host (a killed run) is taken over; a live one is refused.
    """
    directory = Path(directory)
    path = directory / LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    tmp = directory / f"tmp-{LOCK}.{os.getpid()}-{threading.get_ident()}"
    tmp.write_text(json.dumps(record))
    try:
        while True:
            try:
                _create_exclusively(tmp, path)
                break
            except FileExistsError:
                owner = _owner(path)
                if owner is None:
                    continue
                if _alive(owner):
                    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
                    raise FolderInUse(
                        f"{directory} is in use by process {owner.get('pid')} on {owner.get('host')} (started "
                        f"{started}); wait for it to end, or choose another folder. If no such process runs, "
                        f"remove {path}") from None
                _take_over(path, owner)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield record
    finally:
        if _owner(path) == record:
            path.unlink(missing_ok=True)


def state_variables(model):
    """The variables a resumed run needs, in a fixed order: the model's, then the optimizer's."""
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    return variables


def describe(variables):
    """[path, shape, dtype] of each variable, as state.json stores them."""
    return [[v.path, list(v.shape), str(np.dtype(v.dtype))] for v in variables]


def snapshot(variables):
    """Host copies of the variables' values (what the background writer writes)."""
    return [np.array(v.numpy(), copy=True) for v in variables]


def _host(value):
    """A numpy view of a tensor (copied to the host if it lives on an accelerator) or an array."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def assign(variables, arrays):
    for variable, array in zip(variables, arrays):
        variable.assign(array)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_arrays(path, arrays):
    """Write the arrays' bytes to `path` (through a temporary name); returns {"bytes", "sha256"}."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    digest, size = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for array in arrays:
            data = memoryview(np.ascontiguousarray(_host(array))).cast("B")
            digest.update(data)
            f.write(data)
            size += data.nbytes
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"bytes": size, "sha256": digest.hexdigest()}


def atomic_write_text(path, text):
    """Write `text` to `path` under a temporary name unique to this process and thread, then rename:
    a reader, or a kill, never sees a partial file, and concurrent writers never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_arrays(path, entry, variables_description, state_path):
    """The arrays stored in checkpoint file `path`, after checking its size and checksum."""
    path = Path(path)
    redo = (f"it cannot be resumed from; restore the file from a backup, or move {path.parent.parent} "
            "aside and train it again")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} named in {state_path} is missing; {redo}")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise CheckpointError(f"checkpoint file {path} is damaged: {size} bytes where {state_path} recorded "
                              f"{entry.get('bytes')} (truncated or overwritten); {redo}")
    digest = hashlib.sha256()
    content = bytearray(size)
    view = memoryview(content)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            count = f.readinto(view[offset:offset + CHUNK])
            if not count:
                break
            offset += count
    digest.update(content)
    if digest.hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"checkpoint file {path} is damaged: its SHA-256 does not match the one {state_path} "
                              f"recorded (overwritten or corrupted on disk); {redo}")
    arrays, offset = [], 0
    for _, shape, dtype in variables_description:
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        arrays.append(np.frombuffer(content, dtype, count // np.dtype(dtype).itemsize, offset).reshape(shape))
        offset += count
    if offset != size:
        raise CheckpointError(f"checkpoint file {path} holds {size} bytes where its variables need {offset}; {redo}")
    return arrays


def check_compatible(stored, variables, state_path, model_name):
    """Refuse a checkpoint written for other variables (another architecture or optimizer)."""
    current = describe(variables)
    # paths carry names Keras makes unique per process (coupled_sgd_1/...): compare shapes and dtypes
    if [v[1:] for v in stored] == [v[1:] for v in current]:
        return
    detail = f"it holds {len(stored)} variables, {model_name} has {len(current)}"
    for old, new in zip(stored, current):
        if old[1:] != new[1:]:
            detail += f"; the first that differs is {old[0]} {tuple(old[1])} against {new[0]} {tuple(new[1])}"
            break
    raise CheckpointError(f"the checkpoint in {Path(state_path).parent} was written for another model ({detail}); "
                          "resume it with the model it was trained with, or train into a new directory")


def new_state():
    """The commit record of a run that has committed nothing."""
    return {"epoch": 0, "history": [], "last": None, "best": None, "variables": None}


def load_state(run_dir):
    """The commit record of `run_dir`, or a fresh one; refuses a damaged or foreign state.json."""
    path = Path(run_dir) / "checkpoint" / "state.json"
    if not path.exists():
        return new_state()
    redo = f"move {path.parent} aside (the run then restarts from epoch 0), or restore state.json from a backup"
    state = read_json(path, redo)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a nestzoo commit record (missing {', '.join(missing)}); {redo}")
    if not isinstance(state["epoch"], int) or state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        raise CheckpointError(f"{path} is inconsistent (epoch {state['epoch']!r} with {len(state['history'])} "
                              f"log rows); {redo}")
    return state


class Committer:
    """Writes one epoch's checkpoint at a time in a background thread; state.json is the commit point.

    `on_commit(state)` runs in the writer thread after each commit (publishing the log).
    """

    def __init__(self, directory, state, on_commit=None):
        self.dir, self.state, self.on_commit = Path(directory), state, on_commit
        self.thread, self.error = None, None
        self.write_seconds = []

    @property
    def committed_epoch(self):
        return self.state["epoch"]

    def submit(self, epoch, arrays, row, variables_description, best_score=None):
        """Commit epoch `epoch` (1-based) with the host `arrays` and its log `row`."""
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(epoch, arrays, row, variables_description,
                                                                 best_score), name="nestzoo-commit", daemon=True)
        self.thread.start()

    def wait(self):
        """Wait for the write in flight; raise CommitError if it failed (nothing after it is committed)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self, epoch, arrays, row, variables_description, best_score):
        started = time.perf_counter()
        name = f"epoch-{epoch:04d}.ckpt"
        try:
            self.dir.mkdir(exist_ok=True)
            entry = {"epoch": epoch, "file": name, **write_arrays(self.dir / name, arrays)}
            best = self.state["best"]
            if best is None or best_score > best["val_accuracy"]:
                best = {**entry, "val_accuracy": best_score}
            state = {"epoch": epoch, "history": self.state["history"] + [row], "last": entry, "best": best,
                     "variables": variables_description}
            state.update({k: v for k, v in self.state.items() if k not in state})
            atomic_write_text(self.dir / "state.json", json.dumps(state, indent=1))  # the commit
            _fsync_dir(self.dir)
            self.state = state
            self.remove_unreferenced()
            if self.on_commit:
                self.on_commit(state)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            hint = " (the folder or disk is read-only)" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
                else " (the disk is full)" if error.errno == errno.ENOSPC else ""
            self.error = CommitError(
                error.errno, f"cannot commit epoch {epoch} to {self.dir}: {reason}{hint}: {error.filename or ''}. "
                f"Epochs 1..{self.state['epoch']} are committed there and kept; make the folder writable "
                "and run the same command again with --resume (resume=True)")
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            self.error = error
        finally:
            self.write_seconds.append(time.perf_counter() - started)

    def remove_unreferenced(self):
        """Remove files that no commit refers to (older epochs, temporary files)."""
        keep = {"state.json"} | {self.state[k]["file"] for k in ("last", "best") if self.state.get(k)
                                 and self.state[k].get("file")}
        for path in self.dir.glob("*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

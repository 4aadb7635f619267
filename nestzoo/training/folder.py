"""A run's folder: whether it may be written, whether it holds this run, and its final files.

No TensorFlow here: the checks run before any work.
"""
import errno
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from nestzoo.training import checkpoint

# Parts of config.json that may differ when a run is resumed on another machine.
RUNTIME_KEYS = ("jit_compile", "replicas", "deterministic", "environment")
# Parts of config.json that record what happened to the run (resumes that extended it, ...).
HISTORY_KEYS = ("extended", "learning_rate_changes")
# Bytes the final files need beyond the weights (config, summary, curves, archive headers).
SPARE_BYTES = 1 << 20


class InexactResume(UserWarning):
    """A run resumed where the arithmetic may differ in the last bits from where it started."""


def is_scratch(path):
    """Temporary files and the claim's lock, which a fresh start may find in its folder."""
    return path.name.endswith(".tmp") or path.name.startswith(("tmp-", checkpoint.LOCK))


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


def differences(old, new, prefix=""):
    """(dotted key, stored, given) of every differing field, nested dicts compared field by field."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def check_run_dir(run_dir, config, resume):
    """Refuse a directory holding another run's files; returns the stored config when it holds this run.

    A stored config that differs only by more epochs is returned with "extend" set:
    the run continues to the new number of epochs, recorded in config.json.
    """
    entries = [p for p in run_dir.iterdir() if not is_scratch(p)] if run_dir.exists() else []
    if not entries:
        return None  # new, empty, or killed before config.json's rename: a fresh start
    stored = run_dir / "config.json"
    if not resume:
        raise ValueError(f"output directory {str(run_dir)!r} holds another run's files; "
                         "pass resume=True (--resume) to continue it, or choose a new directory")
    if not stored.exists():
        raise ValueError(f"output directory {str(run_dir)!r} holds files that are not a nestzoo run "
                         f"({', '.join(sorted(p.name for p in entries)[:5])}); choose a new directory")
    old = checkpoint.read_config(run_dir)
    ignored = RUNTIME_KEYS + HISTORY_KEYS
    comparable_old = {k: v for k, v in old.items() if k not in ignored}
    comparable_new = {k: v for k, v in config.items() if k not in ignored}
    differ = list(differences(comparable_old, comparable_new))
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


def warn_if_inexact(run_dir, stored, current):
    """Warn once, naming each difference, when a run resumes on another setup than the one it was on.

    stored, current: config.json's "environment" (threads, oneDNN, CPU, versions); a
    run recorded before environments were kept is not compared.
    """
    if not stored:
        return
    changed = [f"{key} {stored.get(key)!r} then, {current.get(key)!r} now"
               for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]
    if changed:
        warnings.warn(f"resuming {run_dir} on another setup ({'; '.join(changed)}): kernels may round differently, "
                      "so the rest of the run may differ in the last bits from an uninterrupted one. Resume with "
                      "the same threads, TF_ENABLE_ONEDNN_OPTS, CPU type and versions for a bit-exact run",
                      InexactResume, stacklevel=4)  # the caller of train()


def read_summary(run_dir):
    """A finished run's summary.json (refused naming the file if damaged)."""
    return checkpoint.read_json(Path(run_dir) / "summary.json", "restore it, or train into a new directory")


def bytes_of(variables):
    """The bytes the values of `variables` take."""
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


def _cannot_write(run_dir, name, needed, epoch, cause, code=errno.ENOSPC):
    return checkpoint.CommitError(
        code, f"cannot write {name} to {run_dir} ({cause}); it needs about {needed / 1e6:.1f} MB free. "
        f"Epochs 1..{epoch} are committed in {run_dir / 'checkpoint'} and kept: free some space (or make the "
        "folder writable) and run the same command again with --resume (resume=True)")


def write_final(run_dir, name, write, nbytes, epoch):
    """`write(path)` a final file of the run under a temporary name, then rename it into place.

    The free space is checked first (HDF5 can crash the process on a full disk), and a
    failed write leaves no temporary file; the commits in checkpoint/ are untouched.
    `nbytes` is what the file holds, `epoch` the last committed epoch (for the message).
    """
    run_dir = Path(run_dir)
    needed = nbytes + SPARE_BYTES
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise _cannot_write(run_dir, name, needed, epoch, f"{free / 1e6:.1f} MB free")
    tmp = run_dir / f"tmp-{name}"
    try:
        write(tmp)
        os.replace(tmp, run_dir / name)
    except OSError as error:
        cause = os.strerror(error.errno) if error.errno else str(error)
        raise _cannot_write(run_dir, name, needed, epoch, cause, error.errno or errno.EIO) from None
    finally:
        tmp.unlink(missing_ok=True)

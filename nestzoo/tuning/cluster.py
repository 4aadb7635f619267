"""keras-tuner's chief/worker environment (no TensorFlow): who this process is, and the chief's address.

keras-tuner reads ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT``; the process whose id contains "chief" serves the oracle.
"""
import os
import socket

VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def role():
    """"chief", "worker" or None (one process), from keras-tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def environment(address, worker_id=None):
    """keras-tuner's variables for a chief serving on `address` (HOST:PORT), or for the worker
    `worker_id` of that chief; a ValueError for a malformed address or id."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--chief/--worker take HOST:PORT, e.g. 127.0.0.1:8000; got {address!r}")
    if worker_id is not None and (not worker_id or "chief" in worker_id):
        raise ValueError("a worker needs --worker-id, a unique name without 'chief' (e.g. tuner0)")
    return dict(zip(VARIABLES, (worker_id or "chief", host, port)))


def check_port(host, port):
    """A ValueError, at once, when the chief cannot serve on HOST:PORT (in use, or not this machine's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, int(port)))
        except OSError as error:
            raise ValueError(f"the chief cannot serve on {host}:{port}: {error.strerror}; "
                             "pick a free port (or stop the process using it)") from None

"""One run across machines with ``tf.distribute.MultiWorkerMirroredStrategy``: what works with the pinned versions.

``nestzoo train --strategy multi-worker`` reads the standard ``TF_CONFIG`` (TensorFlow's
multi-worker guide: ``{"cluster": {"chief": [...], "worker": [...]}, "task": {"type":
..., "index": ...}}``) and checks it (`read_tf_config`), then stops with `BLOCKER`:

- **``model.fit`` under the strategy fails** with TensorFlow 2.21.0 and Keras 3.15.1, as
  keras-team/keras#20585 reports since TF 2.16 (TensorFlow's own multi-worker Keras
  tutorial): the first training step raises ``ValueError: Attempt to convert a value
  (PerReplica:{0: <tf.Tensor ...>}) with an unsupported type (<class
  'tensorflow.python.distribute.values.PerReplica'>) to a Tensor``. Keras 3's
  TensorFlow trainer distributes the dataset itself and then hands the per-replica
  batch to an op that expects a tensor.
- **A step run by ``strategy.run``** (a ``tf.GradientTape`` step, the loss scaled by
  ``tf.nn.compute_average_loss`` over the global batch, ``optimizer.apply_gradients``)
  **works**: two workers on 127.0.0.1 train in lockstep, and their weights agree.
- **Not done:** nestzoo's run (epoch commits, exact resume, the divergence guard, the
  log) is built on ``model.fit`` callbacks; a ``strategy.run`` loop with the same
  recipe and the same commits (chief only, every worker restoring the chief's commit)
  is the remaining work. Until then, spread whole runs over machines with
  ``--chief``/``--worker`` (`nestzoo.training.grid`), which needs no collective ops.

The reproduction: ``python -m nestzoo.training.multiworker`` starts two workers on
loopback ports, tries ``model.fit`` then a ``strategy.run`` step in each, and prints
one line per try (run it after an upgrade: a fixed Keras shows there).
"""
import json
import os
import socket
import subprocess
import sys

KERAS_ISSUE = "https://github.com/keras-team/keras/issues/20585"
BLOCKER = ("--strategy multi-worker is not available: model.fit under tf.distribute.MultiWorkerMirroredStrategy "
           "fails with TensorFlow {tf} and Keras {keras} (ValueError: Attempt to convert a value (PerReplica...) "
           "to a Tensor; " + KERAS_ISSUE + "), and nestzoo's strategy.run training loop is not written yet. "
           "Spread the runs over machines with --chief HOST:PORT / --worker HOST:PORT instead; "
           "`python -m nestzoo.training.multiworker` reproduces the failure")
ROLES = ("chief", "worker")


def read_tf_config(text=None):
    """The parsed ``TF_CONFIG`` (default: the environment's), checked; a ValueError saying what is wrong.

    It needs a "cluster" of "chief" (at most one) and "worker" address lists (HOST:PORT)
    and a "task" whose "type" is one of them and whose "index" is in its list.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise ValueError(f"--strategy multi-worker reads the cluster from TF_CONFIG, which is not set; {example}")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG does not parse as JSON ({error}); {example}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or set(cluster) - set(ROLES):
        raise ValueError(f"TF_CONFIG's \"cluster\" must map {' and/or '.join(ROLES)} to lists of HOST:PORT; "
                         f"got {cluster!r}")
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(_address(a) for a in addresses):
            raise ValueError(f"TF_CONFIG's cluster[{role!r}] must be a non-empty list of HOST:PORT, got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG's cluster has {len(cluster['chief'])} chiefs; a cluster has at most one")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's \"task\" must name this process's role, one of {sorted(cluster)}, and its "
                         f"index: {{\"type\": \"worker\", \"index\": 0}}; got {task!r}")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG's task index must be 0..{len(cluster[task['type']]) - 1} for "
                         f"{task['type']!r}, got {index!r}")
    return config


def _address(text):
    host, _, port = str(text).rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def strategy_from_environment():
    """What ``--strategy multi-worker`` would train under; today: TF_CONFIG checked, then `BLOCKER` (a ValueError)."""
    read_tf_config()
    import keras
    import tensorflow as tf

    raise ValueError(BLOCKER.format(tf=tf.__version__, keras=keras.__version__))


_WORKER = r'''
import json, os, sys
os.environ["TF_CONFIG"] = sys.argv[1]
import numpy as np, tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
x = np.random.RandomState(0).rand(64, 4).astype("float32")
y = (x.sum(1) > 2).astype("int32")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
try:
    model.fit(data, epochs=1, verbose=0)
    print("model.fit: works", flush=True)
except Exception as error:
    print(f"model.fit: fails: {type(error).__name__}: {str(error).splitlines()[0]}", flush=True)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

@tf.function
def step(batch):
    def replica(xb, yb):
        with tf.GradientTape() as tape:
            value = tf.nn.compute_average_loss(loss(yb, model(xb, training=True)), global_batch_size=16)
        grads = tape.gradient(value, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value
    return strategy.reduce("SUM", strategy.run(replica, args=batch), axis=None)

for batch in strategy.experimental_distribute_dataset(data):
    step(batch)
print("strategy.run: works, kernel sum", repr(float(model.weights[0].numpy().sum())), flush=True)
'''


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def reproduce(count=2, timeout=240):
    """`count` workers on 127.0.0.1 try ``model.fit`` and a ``strategy.run`` step; their output lines, per worker."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(count)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for i in range(count)]
    return [[line for line in p.communicate(timeout=timeout)[0].splitlines()
             if line.startswith(("model.fit", "strategy.run"))] for p in processes]


if __name__ == "__main__":
    import keras
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, 2 workers on 127.0.0.1")
    for index, lines in enumerate(reproduce()):
        for line in lines:
            print(f"worker {index}: {line}")

"""One run across machines: ``tf.distribute.MultiWorkerMirroredStrategy`` on a ``strategy.run`` loop.

``nestzoo train --strategy multi-worker`` reads the standard ``TF_CONFIG`` (TensorFlow's
multi-worker guide: ``{"cluster": {"chief": [...], "worker": [...]}, "task": {"type":
..., "index": ...}}``), checked by `read_tf_config`, and every machine runs the same
command. The run is the single-process run, data-parallel:

- **The data**: every worker builds the single-process epoch stream (nestzoo.data's
  order, a function of the seed and the epoch) and takes its replica's contiguous rows
  of each global batch (`shard`): the recipe's batch of 128 is split across the
  replicas, the loss is averaged over the global batch, the learning rate is unchanged.
- **The step** (`fit`): a ``tf.GradientTape`` step run by ``strategy.run``; the
  optimizer sums the gradients over the replicas (Keras's TensorFlow optimizer
  all-reduces them), and batch normalization uses the global batch's statistics
  (``synchronized``, while training), so a 2-worker run equals the single-process run up
  to the order of float reductions.
- **Files**: only the chief (``strategy.extended.should_checkpoint``) writes the run
  folder: commits, log, final files. The other workers train into a private temporary
  folder, as TensorFlow's multi-worker guide prescribes, and discard it. Every worker
  starts from the chief's state: its last commit, broadcast over the collective
  (`from_chief`), so only the chief needs the output folder.
- **A machine dies** (a worker or the chief): TensorFlow's coordination service notices
  the missing heartbeats and the collective ops of the others fail (5 to 10 s on
  127.0.0.1); `fit` raises `WorkerLost`, naming the restart: the same commands with
  ``--resume`` continue from the chief's last committed epoch.

Why not ``model.fit``: with TensorFlow 2.21.0 and Keras 3.15.1 it fails under this
strategy (keras-team/keras#20585, since TF 2.16): ``TensorFlowTrainer._maybe_symbolic_build``
passes the whole (x, y) batch of ``PerReplica`` values to ``strategy.reduce``, which
takes one value ("ValueError: Attempt to convert a value (PerReplica...) to a Tensor"),
and past that ``reduce_per_replica`` reduces the scalar metrics with ``axis=0``
("Invalid reduction dimension 0 for input with 0 dimensions").
``python -m nestzoo.training.multiworker`` reproduces it on 127.0.0.1; run it after an
upgrade: a fixed Keras shows there.
"""
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys

ROLES = ("chief", "worker")


class WorkerLost(RuntimeError):
    """A machine of the cluster (a worker or the chief) stopped, so the collective ops of the others failed."""


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
    """The ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG`` (checked first); a ValueError if this task's port is taken.

    It returns once every task of the cluster has started.
    """
    config = read_tf_config()
    task = config["task"]
    host, _, port = config["cluster"][task["type"]][task["index"]].rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind(("", int(port)))
        except OSError as error:
            raise ValueError(f"TF_CONFIG gives this task ({task['type']} {task['index']}) {host}:{port}, and port "
                             f"{port} is in use here ({error.strerror}): free it or give another port") from None
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy):
    """Whether `strategy` is a ``MultiWorkerMirroredStrategy`` (a `fit` loop, not ``model.fit``)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def writes_files(strategy):
    """Whether this process writes the run's files: the chief of a multi-worker cluster, or any single process."""
    return not is_multi_worker(strategy) or bool(strategy.extended.should_checkpoint)


def from_chief(strategy, values):
    """The chief's `values` (tensors of any dtype), on every worker."""
    return _sum_over_workers(strategy, values, bool(strategy.extended.should_checkpoint))


def _sum_over_workers(strategy, values, contribute):
    """The sum over the workers of their `values`, or zeros where `contribute` is False (one SUM all-reduce,
    to which only a worker's first replica contributes)."""
    with _lost_worker():
        return _all_reduce(strategy, contribute)(list(values))


@functools.lru_cache(maxsize=None)
def _all_reduce(strategy, contribute):
    """`_sum_over_workers`'s tf.function, one per (strategy, contribute): traced once per list of shapes and
    dtypes, not on every call (which TensorFlow warns of as retracing)."""
    import tensorflow as tf

    local = len(strategy.extended.worker_devices)

    def replica(values):
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group % local, 0) if contribute else tf.constant(False)
        return [context.all_reduce("SUM", tf.where(first, tf.identity(v), tf.zeros_like(v))) for v in values]

    @tf.function(autograph=False)
    def total(values):
        return [strategy.experimental_local_results(v)[0] for v in strategy.run(replica, args=(values,))]

    return total


def check_same_run(strategy, arguments):
    """Refuse, on every machine at once, a cluster whose workers were given other `arguments` (JSON: the
    model, data, recipe, seed...) than the chief; each worker's error names what differs."""
    import numpy as np
    import tensorflow as tf

    from nestzoo.training import folder

    mine = json.loads(json.dumps(arguments, sort_keys=True, default=str))
    text = json.dumps(mine, sort_keys=True).encode()
    size = int(from_chief(strategy, [tf.constant(len(text))])[0])
    codes = np.frombuffer(text.ljust(size, b" ")[:size], np.uint8).astype(np.int32)  # the chief's: its text
    chiefs = json.loads(bytes(from_chief(strategy, [tf.constant(codes)])[0].numpy().astype(np.uint8)))
    changed = [key for key, _, _ in folder.differences(chiefs, mine)]
    others = int(_sum_over_workers(strategy, [tf.constant(int(bool(changed)))], True)[0])
    if changed:
        raise ValueError(f"this worker was started with other arguments than the chief ({', '.join(changed)} "
                         "differ from the chief's): start every machine of the cluster with the same command")
    if others:
        raise ValueError(f"{others} worker(s) of the cluster were started with other arguments than this "
                         "machine (their errors name what differs): start every machine with the same command")


def shard(strategy, dataset):
    """Each replica's part of every batch of `dataset`: contiguous rows, (x, y, the global batch's size).

    Replica r of R takes rows [n r / R, n (r + 1) / R) of a batch of n, so the replicas
    together see the single-process batches in the single-process order.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def per_worker(context):
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def parts(x, y):
            size = tf.shape(y)[0]

            def part(j):
                r = tf.cast(j, tf.int32) + first
                begin, end = size * r // replicas, size * (r + 1) // replicas
                return x[begin:end], y[begin:end], size
            return tf.data.Dataset.range(local).map(part)
        return dataset.flat_map(parts)

    return strategy.distribute_datasets_from_function(per_worker)


@contextlib.contextmanager
def synchronized_batch_norms(model):
    """Batch normalization on the global batch's statistics across replicas (Keras's ``synchronized``), inside.

    Only training reads the flag; it is reset after, so the saved model loads under every backend.
    """
    import keras

    norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    before = [layer.synchronized for layer in norms]
    for layer in norms:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer, flag in zip(norms, before):
            layer.synchronized = flag


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


@contextlib.contextmanager
def _lost_worker():
    """A collective op that failed because a worker stopped, as `WorkerLost` naming the restart."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as error:
        # what a dead peer gives (UnavailableError on 127.0.0.1, for a lost worker and a lost chief alike)
        cause = next((line.strip() for line in str(error).splitlines() if "unhealthy" in line or "aborted" in line),
                     str(error).splitlines()[0])
        raise WorkerLost(f"a machine of the cluster stopped ({type(error).__name__}: {cause}). Restart every "
                         "machine with the same command and --resume: the run continues from the chief's last "
                         "committed epoch") from None


def evaluator(model, from_logits):
    """A function of a batched (x, y) dataset: (mean loss, accuracy) of `model` on it, on this worker alone.

    ``model.evaluate`` under the strategy fails as ``model.fit`` does (the same symbolic build).
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def sums(x, y):
        out = model(x, training=False)
        return (tf.reduce_sum(_crossentropy(y, out, from_logits)), _correct(y, out),
                tf.cast(tf.shape(y)[0], tf.float32))

    def evaluate(dataset):
        total = [0.0, 0.0, 0.0]
        for x, y in dataset:
            total = [a + float(b) for a, b in zip(total, sums(x, y))]
        return total[0] / total[2], total[1] / total[2]
    return evaluate


def _crossentropy(y, out, from_logits):
    import keras

    return keras.losses.sparse_categorical_crossentropy(y, out, from_logits=from_logits)


def _correct(y, out):
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, -1, output_type=tf.int64), tf.cast(y, tf.int64)),
                                 tf.float32))


def fit(model, strategy, batches, validation, *, from_logits, epochs, initial_epoch, steps_per_epoch, callbacks,
        verbose):
    """Train epochs `initial_epoch`..`epochs`-1 of the single-process `batches` stream under `strategy`, calling
    `callbacks` as ``model.fit`` does (batch and epoch ends, with loss and accuracy; validation at epoch ends).

    The step (eq. (1)'s empirical risk over the global batch, its gradient summed over
    replicas) runs in ``strategy.run``; `validation` is evaluated on every worker.
    Raises `WorkerLost` when another worker stops.
    """
    import keras
    import tensorflow as tf

    optimizer, evaluate = model.optimizer, evaluator(model, from_logits)

    @tf.function
    def step(batch):
        def replica(x, y, size):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                loss = tf.reduce_sum(_crossentropy(y, out, from_logits)) / tf.cast(size, out.dtype)
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss * tf.cast(size, loss.dtype), _correct(y, out), tf.cast(tf.shape(y)[0], tf.float32)
        return [strategy.reduce("SUM", value, axis=None) for value in strategy.run(replica, args=batch)]

    hooks = keras.callbacks.CallbackList(callbacks, add_progbar=bool(verbose), model=model, verbose=verbose,
                                         epochs=epochs, steps=steps_per_epoch)
    iterator = iter(shard(strategy, batches))
    with synchronized_batch_norms(model), _lost_worker():
        hooks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            hooks.on_epoch_begin(epoch)
            loss_sum = correct = seen = 0.0
            for index in range(steps_per_epoch):
                hooks.on_train_batch_begin(index)
                batch_loss_sum, batch_correct, batch_size = (float(v) for v in step(next(iterator)))
                loss_sum, correct, seen = loss_sum + batch_loss_sum, correct + batch_correct, seen + batch_size
                logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
                hooks.on_train_batch_end(index, logs)
            hooks.on_test_begin()
            val_loss, val_accuracy = evaluate(validation)
            hooks.on_epoch_end(epoch, {**logs, "val_loss": val_loss, "val_accuracy": val_accuracy})
        hooks.on_train_end()


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
'''


def free_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def reproduce(count=2, timeout=240):
    """`count` workers on 127.0.0.1 try ``model.fit`` under the strategy; their output lines, per worker."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(count)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for i in range(count)]
    return [[line for line in p.communicate(timeout=timeout)[0].splitlines()
             if line.startswith("model.fit")] for p in processes]


if __name__ == "__main__":
    import keras
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, 2 workers on 127.0.0.1")
    for index, lines in enumerate(reproduce()):
        for line in lines:
            print(f"worker {index}: {line}")

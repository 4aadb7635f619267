"""Training in separate processes: killed and resumed, and mirrored on two logical CPUs."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TF_LOG = re.compile(r"WARNING: All log messages before absl|[IWE]\d{4} ")  # TensorFlow's C++ start-up lines

def _rows(path):
    return list(csv.DictReader(open(path)))


def _committed_epoch(run_dir):
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _train_command(output, *extra):
    # resnet20 on 8x8 digits, 3 epochs, the learning rate divided by 5 after the second
    return [sys.executable, "-m", "nestzoo.cli", "train", "--arch", "resnet20", "--variant", "standard",
            "--dataset", "digits", "--epochs", "3", "--milestones", "2", "--output", str(output), "--verbose", "0",
            *extra]


def _stop_after(process, run_dir, epoch, sig):
    """Send `sig` to `process` once `epoch` is committed (while it trains the next one)."""
    deadline = time.monotonic() + 240
    while _committed_epoch(run_dir) < epoch and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped:\n" + process.communicate()[0]
    process.send_signal(sig)
    output = process.communicate(timeout=120)[0]
    return process.returncode, output


def _weights(path):
    import nestzoo

    return nestzoo.load_model(path).get_weights()


def test_interrupted_and_killed_run_resumes_bit_for_bit(tmp_path):
    """Ctrl-C after epoch 1 and SIGKILL after epoch 2, resumed each time: the final weights equal an
    uninterrupted run's, trained in another process, bit for bit (the README's determinism claim: CPU
    kernels are deterministic here; no op determinism needed)."""
    reference = subprocess.Popen(_train_command(tmp_path / "a"), env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "b" / "resnet20.standard" / "seed0"
    first = subprocess.Popen(_train_command(tmp_path / "b"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _committed_epoch(run_dir) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the run ended before it could be stopped:\n" + "".join(first.communicate())
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not TF_LOG.match(line)]
    assert "Traceback" not in stderr and len(lines) == 1, stderr  # one line, no KeyboardInterrupt traceback
    interrupted_after = _committed_epoch(run_dir)
    assert re.search(rf"interrupted; \S+seed0 has epoch {interrupted_after} of 3 committed\. Continue with: "
                     r"nestzoo train --arch resnet20 .*--output \S+ --verbose 0 --resume$", lines[0]), stderr
    assert 1 <= interrupted_after < 3

    second = subprocess.Popen(_train_command(tmp_path / "b", "--resume"), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    code, output = _stop_after(second, run_dir, interrupted_after + 1, signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert f"resuming {run_dir} after epoch {interrupted_after} of 3 (optimizer step {interrupted_after * 12})" \
        in output
    killed_after = _committed_epoch(run_dir)
    assert killed_after > interrupted_after
    before = _rows(run_dir / "log.csv")  # may lag the commit by one epoch if killed in between

    third = subprocess.run(_train_command(tmp_path / "b", "--resume"), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    assert reference.wait(timeout=300) == 0, reference.communicate()[0]
    after = _rows(run_dir / "log.csv")
    assert [int(r["epoch"]) for r in after] == [1, 2, 3]  # no epoch repeated or missing
    assert after[: len(before)] == before  # nothing finished is lost or rewritten
    assert [float(r["learning_rate"]) for r in after] == pytest.approx([0.1, 0.1, 0.02])
    expected = _rows(tmp_path / "a" / "resnet20.standard" / "seed0" / "log.csv")
    columns = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[r[c] for c in columns] for r in after] == [[r[c] for c in columns] for r in expected]
    for mine, theirs in zip(_weights(run_dir / "model.keras"),
                            _weights(tmp_path / "a" / "resnet20.standard" / "seed0" / "model.keras")):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 3 and not (run_dir / "checkpoint").exists()


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import nestzoo
    from nestzoo import training

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    def tiny():
        return nestzoo.AResNEst(blocks=1, width=(8, 16, 32), input_shape=(8, 8, 1), classes=10)
    summary = training.train(tiny, (data, data), output_dir=sys.argv[1], epochs=2, strategy=strategy, verbose=0)
    predictions = keras.saving.load_model(sys.argv[1] + "/model.keras").predict(x, verbose=0)
    summary["numpy_accuracy"] = float(np.mean(predictions.argmax(axis=1) == y))  # independent of evaluate()
    summary["numpy_loss"] = float(np.mean(-np.log(predictions[np.arange(len(y)), y])))
    # nestzoo's digits pipeline feeding Keras's own model.fit under the same strategy
    from nestzoo import data
    d = data.load("digits", 64, validation=0.1, drop_remainder=True)
    with strategy.scope():
        model = nestzoo.ResNet(blocks=1, width=(8, 16, 32), input_shape=(8, 8, 1), classes=10)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    before = model.evaluate(d.validation, verbose=0)
    history = model.fit(d.train, validation_data=d.validation, epochs=1, verbose=0)
    summary["pipeline_fit"] = {"before": before, "after": history.history["val_loss"][-1]}
    print(json.dumps(summary))
""")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=ENV, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["config"]["replicas"] == 2 and summary["epochs"] == 2
    # the saved model is the one evaluated: evaluate() under MirroredStrategy and a single-device predict
    # agree to ~1e-4 in the loss (measured), enough to flip one near-tie example of 64
    assert summary["test_loss"] == pytest.approx(summary["numpy_loss"], rel=1e-3)
    assert abs(summary["test_accuracy"] - summary["numpy_accuracy"]) <= 1 / 64 + 1e-9
    assert summary["images_per_second"] > 0
    fit = summary["pipeline_fit"]  # the digits pipeline fed model.fit on both replicas, and it learned
    assert fit["after"] < 0.9 * fit["before"], fit


def _quick_command(output, *extra):
    # the quickstart's network on digits, 1 epoch of 4 batches: a few seconds
    return [sys.executable, "-m", "nestzoo.cli", "train", "--recipe", "quick", "--epochs", "1", "--batch-size", "384",
            "--output", str(output), "--verbose", "0", *extra]


def test_a_second_train_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    """Two `nestzoo train` started at once on one --output: one trains, the other is refused (it claims the
    run's folder, nestzoo.lock, before it reads or writes anything there)."""
    processes = [subprocess.Popen(_quick_command(tmp_path, "--epochs", "6"), env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    results = [(process.wait(timeout=300), process.communicate()[0]) for process in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(out for code, out in results if code == 2)
    run_dir = tmp_path / "resnet20.a-resnest" / "seed0"
    assert re.search(rf"nestzoo train: error: {re.escape(str(run_dir))} is in use by process \d+ on ", refused), refused
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 6
    assert not (run_dir / "nestzoo.lock").exists()

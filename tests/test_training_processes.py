"""Training in separate processes: killed and resumed, and mirrored on two logical CPUs."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

RESUMABLE = textwrap.dedent("""
    import sys
    import nestzoo
    from nestzoo import training

    def tiny():
        return nestzoo.ResNet(blocks=1, width=(8, 16, 32), input_shape=(8, 8, 1), classes=10)

    training.train(tiny, "digits", output_dir=sys.argv[1], epochs=8, milestones=(3,), resume=True, verbose=0)
""")


def _rows(path):
    return list(csv.DictReader(open(path)))


def _committed_epoch(run_dir):
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_killed_run_resumes_from_last_finished_epoch(tmp_path):
    script, run_dir = tmp_path / "train.py", tmp_path / "run"
    script.write_text(RESUMABLE)
    command = [sys.executable, str(script), str(run_dir)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _committed_epoch(run_dir) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed:\n" + process.stdout.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = _committed_epoch(run_dir)
    assert 2 <= killed_after < 8
    before = _rows(run_dir / "log.csv")  # may lag the commit by one epoch if killed in between

    resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = 12  # 1,437 digits training images in batches of 128
    assert f"after epoch {killed_after} of 8 (optimizer step {killed_after * steps})" in resumed.stdout
    after = _rows(run_dir / "log.csv")
    assert [int(r["epoch"]) for r in after] == list(range(1, 9))  # no epoch repeated or missing
    assert after[: len(before)] == before  # nothing finished is lost or rewritten
    assert [float(r["learning_rate"]) for r in after] == pytest.approx([0.1] * 3 + [0.02] * 5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 8 and not (run_dir / "checkpoint").exists()


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
    assert summary["test_accuracy"] == pytest.approx(summary["numpy_accuracy"]) and summary["images_per_second"] > 0

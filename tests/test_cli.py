"""The nestzoo command, called in-process, and in subprocesses where start-up is what is tested."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nestzoo import cli

ROOT = Path(__file__).resolve().parents[1]
# A line of TensorFlow's C++ log: "I0000 00:00:1795426178.647889   15179 port.cc:153] oneDNN ..."
CPP_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] ", re.M)


def test_models_lists_the_registry(nestzoo_cli):
    code, out = nestzoo_cli("models", "resnet20")
    assert code == 0 and out.split() == ["resnet20.a-resnest", "resnet20.bn-resnest", "resnet20.resnest",
                                         "resnet20.standard"]


@pytest.mark.parametrize("command, words", [
    ("train", ["--arch", "--variant", "--dataset", "--recipe", "--epochs", "--lr", "--milestones", "--seeds",
               "--precision", "--jit-compile", "--mirrored", "--output", "--resume", "coupled weight decay"]),
    ("evaluate", ["RUN_DIR_OR_MODEL", "--dataset", "--batch-size"]),
])
def test_help_describes_options(nestzoo_cli, command, words):
    code, out = nestzoo_cli(command, "--help")
    assert code == 0 and all(w in out for w in words)


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--precision", "float16"], "invalid choice: 'float16'"),
    (["--epochs", "0"], "argument --epochs: '0': the value must be a positive integer, got 0"),
    (["--batch-size", "-1"], "argument --batch-size: '-1': the value must be a positive integer, got -1"),
    (["--epochs", "2.5"], "argument --epochs: '2.5' is not an integer"),
    (["--milestones", "60", "30"], "milestones must be strictly increasing"),
    (["--seeds"], "seeds is empty"),
    (["--arch", "resnet21"], "unknown arch 'resnet21'; valid choices: resnet20, resnet110"),
    (["--variant", "densenest"], "unknown resnet variant 'densenest'; valid choices: standard, resnest"),
])
def test_bad_train_options_are_refused(nestzoo_cli, argv, message):
    code, out = nestzoo_cli("train", *argv)
    assert code == 2 and message in out


def test_train_then_evaluate(nestzoo_cli, tmp_path):
    output = tmp_path / "runs"
    code, out = nestzoo_cli("train", "--variant", "resnest", "--epochs", "2", "--batch-size", "256",
                    "--output", str(output), "--verbose", "0")
    assert code == 0, out
    run_dir = output / "resnet20.resnest" / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["data"] == "digits" and summary["config"]["initial_learning_rate"] == 0.01
    assert f"test accuracy: {100 * summary['test_accuracy']:.2f}%" in out and "resnet20.resnest" in out

    for given in (run_dir, run_dir / "model.keras"):  # the data set is the run's (config.json)
        code, out = nestzoo_cli("evaluate", given, "--verbose", "0")
        assert code == 0 and f"on digits (test): loss" in out and f"accuracy {100 * summary['test_accuracy']:.2f}%" in out

    served = tmp_path / "saved_models" / "resnet20_resnest" / "1"
    code, out = nestzoo_cli("export", str(run_dir), "--base-dir", str(tmp_path / "saved_models"))  # data from config
    assert code == 0 and (served / "saved_model.pb").is_file(), out
    code, out = nestzoo_cli("export", str(run_dir), "--base-dir", str(tmp_path / "saved_models"), "--version", "1")
    assert code == 2 and "an export never overwrites a version" in out

    code, out = nestzoo_cli("train", "--variant", "resnest", "--output", str(output), "--verbose", "0")
    assert code == 2 and "holds another run's files; pass resume=True (--resume)" in out


def test_train_accepts_typed_spellings_and_validation_counts(nestzoo_cli, monkeypatch):
    seen = {}

    def fake_train_seeds(models, data, seeds, **kwargs):
        seen.update(models=models, validation=kwargs["validation"])
        raise ValueError("stop here")

    monkeypatch.setattr(cli.training, "train_seeds", fake_train_seeds)
    nestzoo_cli("train", "--arch", "WRN-16-8", "--variant", "AResNEst", "BN_ResNEst", "--validation", "5000")
    assert seen == {"models": ["wrn16-8.a-resnest", "wrn16-8.bn-resnest"], "validation": 5000}
    nestzoo_cli("train", "--validation", "0.1")
    assert seen["validation"] == 0.1


def test_missing_data_is_one_clear_error(nestzoo_cli, monkeypatch):
    def no_data(*args, **kwargs):
        raise cli.DatasetNotFoundError("cifar10 is not in ~/tensorflow_datasets; local layouts accepted: ...")

    monkeypatch.setattr(cli.training, "train_seeds", no_data)
    code, out = nestzoo_cli("train", "--dataset", "cifar10")
    assert code == 2 and "\nnestzoo train: error: cifar10 is not in ~/tensorflow_datasets" in out
    assert "Traceback" not in out


def test_data_options_reach_the_loader(nestzoo_cli, monkeypatch, tmp_path):
    seen = {}

    def fake_train_seeds(models, data, seeds, **kwargs):
        seen.update(kwargs["data_options"])
        raise ValueError("stop here")

    monkeypatch.setattr(cli.training, "train_seeds", fake_train_seeds)
    nestzoo_cli("train", "--dataset", "cifar10", "--source", "~/cifar-10-batches-py", "--data-dir", "/d", "--no-download")
    assert seen == {"source": "~/cifar-10-batches-py", "data_dir": "/d", "download": False}
    import nestzoo

    nestzoo.create_model("resnet20.standard", input_shape=(32, 32, 3), classes=100).save(tmp_path / "model.keras")
    code, out = nestzoo_cli("evaluate", tmp_path / "model.keras", "--dataset", "cifar100", "--data-dir", tmp_path,
                            "--no-download")
    assert code == 2 and f"CIFAR-100 is not prepared in {tmp_path / 'cifar100'}" in out and "download=False" in out


LISTING = """
import runpy, sys
sys.argv[0] = "nestzoo"
try:
    runpy.run_module("nestzoo.cli", run_name="__main__")
finally:
    print("imported:", sorted(m for m in ("keras", "tensorflow", "tensorflow_datasets") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["models", "wrn*"], ["train", "--help"], ["--version"]])
def test_help_and_listing_import_no_tensorflow(argv):
    result = subprocess.run([sys.executable, "-c", LISTING, *argv], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.splitlines()[-1] == "imported: []", result.stderr[-2000:]
    assert "usage: nestzoo" in result.stdout or "wrn16-8.standard" in result.stdout or "nestzoo 0." in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "--arch", "resnet21"], "unknown arch 'resnet21'; valid choices: resnet20, resnet110"),
    (["train", "--variant", "a-resnets"], "unknown resnet variant 'a-resnets'; valid choices: standard, resnest"),
    (["train", "--arch", "densenet40-12", "--variant", "a-resnest"], "unknown densenet variant 'a-resnest'"),
    (["summary", "resnet20.a-resnst"], "unknown resnet variant 'a-resnst'"),
    (["evaluate", "no/such/run"], "no/such/run does not exist"),
    (["models", "zzz"], "no model matches 'zzz'; patterns that match: resnet*, wrn*, densenet*"),
])
def test_typos_are_refused_before_tensorflow_is_imported(argv, message):
    result = subprocess.run([sys.executable, "-c", LISTING, *argv], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.splitlines()[-1] == "imported: []", result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.splitlines() == ["imported: []"]  # not even the recipe line


def test_version_variant_spellings_and_listing_misses(nestzoo_cli):
    import nestzoo

    code, out = nestzoo_cli("--version")
    assert code == 0 and out.strip() == f"nestzoo {nestzoo.__version__}"
    code, out = nestzoo_cli("train", "--help")
    assert "AResNEst, aresnest, a_resnest are a-resnest" in " ".join(out.split())
    code, out = nestzoo_cli("models", "wrn16-9")
    assert code == 2 and "no model matches 'wrn16-9'; patterns that match: wrn16-8, " in out


def test_evaluate_names_a_data_set_that_does_not_fit_the_model(nestzoo_cli, tmp_path):
    import nestzoo

    nestzoo.create_model("resnet20.standard", input_shape=(32, 32, 3), classes=10).save(tmp_path / "model.keras")
    code, out = nestzoo_cli("evaluate", tmp_path / "model.keras", "--dataset", "digits")
    assert code == 2 and "takes inputs of shape (32, 32, 3), and digits's are (8, 8, 1): use the data set the " \
        "model was built for" in out and "Traceback" not in out


def test_train_help_states_each_default_once(nestzoo_cli):
    code, out = nestzoo_cli("train", "--help")
    text = " ".join(out.split())
    assert code == 0 and "(default: None)" not in text and "(default: False)" not in text
    assert "(default: the test set, as the paper)" in text and "as the paper) (default" not in text
    assert "(default: paper)" in text and "(default: resnet20)" in text and "(default: 0)" in text


def test_train_prints_and_records_the_milestones_with_tensorflow_quiet(tmp_path):
    """A real `nestzoo train` process: the recipe it prints, what config.json records, no C++ start-up log."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.TF_LOG_VARIABLE)}
    result = subprocess.run(
        [sys.executable, "-m", "nestzoo.cli", "train", "--recipe", "quick", "--epochs", "2", "--batch-size", "512",
         "--output", str(tmp_path), "--verbose", "0"],
        capture_output=True, text=True, timeout=600, env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 epochs, batch 512, learning rate 0.1 (0.01 for ResNEsts) x0.2 after epochs 1 (the recipe's " \
           "15, 22, 27 of 30 epochs, scaled)" in result.stdout
    assert not CPP_LOG.search(result.stderr) and "cuda drivers" not in result.stderr, result.stderr[-3000:]
    run_dir = tmp_path / "resnet20.a-resnest" / "seed0"
    assert json.loads((run_dir / "config.json").read_text())["recipe"]["milestones"] == [1]
    rates = [float(row["learning_rate"]) for row in csv.DictReader(open(run_dir / "log.csv"))]
    assert rates == pytest.approx([0.1, 0.02])

    loud = subprocess.run([sys.executable, "-m", "nestzoo.cli", "summary", "resnet20.standard"], capture_output=True,
                          text=True, timeout=600, env={**env, "PYTHONPATH": str(ROOT), cli.TF_LOG_VARIABLE: "1"})
    assert loud.returncode == 0 and CPP_LOG.search(loud.stderr), loud.stderr[-3000:]


def test_summary_into_a_file_is_not_cut_at_80_columns(nestzoo_cli, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # restored after the test
    code, out = nestzoo_cli("summary", "resnet20.a-resnest")
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) > 100
    assert re.search(r"│ block\d+_\w+ \(BatchNormalization\) +│", out)  # a name and its type on one line
    assert any("Total params:" in line for line in lines)


def test_cli_analyze_writes_the_report_beside_the_model(tmp_path, capsys):
    import nestzoo

    model = nestzoo.ResNEst(blocks=(1,), width=(4,), features=(2,), input_shape=(8, 8, 1), classes=10)
    model.save(tmp_path / "model.keras")
    cli.main(["analyze", str(tmp_path), "--dataset", "digits", "--max-iter", "50"])
    out = capsys.readouterr().out
    assert "stage 0: M = 4 >= sum K = 1 = 1" in out and "epsilon = R - A" in out and "block i" in out
    report = json.loads((tmp_path / "model_theory.json").read_text())
    assert report["erlb"]["epsilon"] >= 0 and report["erlb"]["taps"] == ["v0: pooled + border", "v1: pooled + border"]
    assert len(report["block_risks"]["blocks"]) == 2 and len(report["block_risks"]["augmented"]) == 2
    assert (tmp_path / "model_theory.png").stat().st_size > 1000


def test_cli_analyze_refuses_non_finite_weights(tmp_path, nestzoo_cli):
    import numpy as np

    import nestzoo

    model = nestzoo.ResNEst(blocks=(1,), width=(4,), features=(2,), input_shape=(8, 8, 1), classes=10)
    weights = model.get_weights()
    weights[0][...] = np.inf
    model.set_weights(weights)
    model.save(tmp_path / "model.keras")
    code, out = nestzoo_cli("analyze", tmp_path, "--dataset", "digits")
    assert code == 2 and "model.keras holds non-finite weights (NaN or infinity in " in out
    assert not (tmp_path / "model_theory.json").exists()


@pytest.mark.parametrize("option", ["--max-iter", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_cli_analyze_refuses_non_positive_counts(tmp_path, nestzoo_cli, option, value):
    code, out = nestzoo_cli("analyze", tmp_path, option, value)
    assert code == 2 and f"argument {option}: {value!r}" in out and "positive integer" in out
    assert not list(tmp_path.iterdir())  # refused before any model is read or report written

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
from nestzoo.recipe import RECIPES, get_recipe, scale_milestones
from nestzoo.training import report

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
    ("evaluate", ["model", "--dataset", "--batch-size"]),
])
def test_help_describes_options(nestzoo_cli, command, words):
    code, out = nestzoo_cli(command, "--help")
    assert code == 0 and all(w in out for w in words)


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--precision", "float16"], "invalid choice: 'float16'"),
    (["--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["--batch-size", "-1"], "batch_size must be an integer >= 1, got -1"),
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

    code, out = nestzoo_cli("evaluate", str(run_dir / "model.keras"), "--verbose", "0")
    assert code == 0 and f"accuracy {100 * summary['test_accuracy']:.2f}%" in out

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
    code, out = nestzoo_cli("evaluate", "model.keras", "--dataset", "cifar100", "--data-dir", str(tmp_path),
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


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["models", "wrn*"], ["train", "--help"]])
def test_help_and_listing_import_no_tensorflow(argv):
    result = subprocess.run([sys.executable, "-c", LISTING, *argv], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.splitlines()[-1] == "imported: []", result.stderr[-2000:]
    assert "usage: nestzoo" in result.stdout or "wrn16-8.standard" in result.stdout


def test_train_help_states_each_default_once(nestzoo_cli):
    code, out = nestzoo_cli("train", "--help")
    text = " ".join(out.split())
    assert code == 0 and "(default: None)" not in text and "(default: False)" not in text
    assert "(default: the test set, as the paper)" in text and "as the paper) (default" not in text
    assert "(default: paper)" in text and "(default: resnet20)" in text and "(default: 0)" in text


@pytest.mark.parametrize("recipe, epochs, expected", [
    ("quick", 5, (2, 3, 4)),
    ("paper", 30, (9, 18, 24)),
    ("paper", 400, (120, 240, 320)),
    ("quick", 2, (1,)),  # 15, 22 and 27 of 30 all land on epoch 1 of 2
    ("quick", 30, (15, 22, 27)),
])
def test_milestones_scale_with_overridden_epochs(recipe, epochs, expected):
    assert get_recipe(recipe, epochs=epochs).milestones == expected
    assert scale_milestones(RECIPES[recipe].milestones, RECIPES[recipe].epochs, epochs) == expected
    assert get_recipe(recipe, epochs=epochs, milestones=[1, 2]).milestones == (1, 2)  # given ones are kept


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


def history(epochs=3):
    return [{"epoch": e, "loss": 1 / e, "accuracy": 0.5, "val_loss": 1.2 / e, "val_accuracy": 0.4,
             "learning_rate": 0.1 * 0.2 ** (e > 2)} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("validation, label", [("test", "test"), ("held out: last 143 training examples", "validation")])
def test_curves_have_a_title_the_learning_rate_and_name_the_test_set(validation, label):
    config = {"model": "resnet20.a-resnest", "data": "digits", "seed": 3, "validation": validation}
    fig = report.curves_figure(history(), config)
    assert fig._suptitle.get_text() == "resnet20.a-resnest on digits, seed 3"
    loss, accuracy, rate = fig.axes
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", label]
    assert rate.get_ylabel() == "learning rate" and list(rate.lines[0].get_ydata()) == pytest.approx([0.1, 0.1, 0.02])


def test_results_of_a_single_seed_show_no_std(tmp_path):
    def summary(variant, seed, accuracy):
        return {"config": {"data": "digits", "arch": "resnet20", "variant": variant}, "seed": seed,
                "test_accuracy": accuracy, "parameters": 272_282}

    markdown = report.write_results([summary("standard", 0, 0.925)], tmp_path)
    assert markdown.splitlines()[0] == "Test accuracy (%) on digits, one seed (parameters)"
    assert "| resnet20 | 92.50 (0.27M) |" in markdown and "±" not in markdown
    assert list(csv.DictReader(open(tmp_path / "results.csv")))[0]["accuracy_std"] == ""
    mixed = report.results_markdown(report.results_rows(
        [summary("standard", 0, 0.92), summary("standard", 1, 0.93), summary("resnest", 0, 0.9)]))
    assert "over 1/2 seeds (parameters); one seed: no std" in mixed
    assert "| resnet20 | 92.50 ± 0.71 (0.27M) | 90.00 (0.27M) |" in mixed

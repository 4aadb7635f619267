"""The nestzoo command, called in-process."""
import json

import pytest

from nestzoo import cli


def run(capsys, *argv):
    """Exit code and output of `nestzoo argv...`."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_models_lists_the_registry(capsys):
    code, out = run(capsys, "models", "resnet20")
    assert code == 0 and out.split() == ["resnet20.a-resnest", "resnet20.bn-resnest", "resnet20.resnest",
                                         "resnet20.standard"]


@pytest.mark.parametrize("command, words", [
    ("train", ["--arch", "--variant", "--dataset", "--recipe", "--epochs", "--lr", "--milestones", "--seeds",
               "--precision", "--jit-compile", "--mirrored", "--output", "--resume", "coupled weight decay"]),
    ("evaluate", ["model", "--dataset", "--batch-size"]),
])
def test_help_describes_options(capsys, command, words):
    code, out = run(capsys, command, "--help")
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
def test_bad_train_options_are_refused(capsys, argv, message):
    code, out = run(capsys, "train", *argv)
    assert code == 2 and message in out


def test_train_then_evaluate(capsys, tmp_path):
    output = tmp_path / "runs"
    code, out = run(capsys, "train", "--variant", "resnest", "--epochs", "2", "--batch-size", "256",
                    "--output", str(output), "--verbose", "0")
    assert code == 0, out
    run_dir = output / "resnet20.resnest" / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["data"] == "digits" and summary["config"]["initial_learning_rate"] == 0.01
    assert f"test accuracy: {100 * summary['test_accuracy']:.2f}%" in out and "resnet20.resnest" in out

    code, out = run(capsys, "evaluate", str(run_dir / "model.keras"), "--verbose", "0")
    assert code == 0 and f"accuracy {100 * summary['test_accuracy']:.2f}%" in out

    served = tmp_path / "saved_models" / "resnet20_resnest" / "1"
    code, out = run(capsys, "export", str(run_dir), "--base-dir", str(tmp_path / "saved_models"))  # data from config
    assert code == 0 and (served / "saved_model.pb").is_file(), out
    code, out = run(capsys, "export", str(run_dir), "--base-dir", str(tmp_path / "saved_models"), "--version", "1")
    assert code == 2 and "an export never overwrites a version" in out

    code, out = run(capsys, "train", "--variant", "resnest", "--output", str(output), "--verbose", "0")
    assert code == 2 and "holds another run's files; pass resume=True (--resume)" in out


def test_train_accepts_typed_spellings_and_validation_counts(capsys, monkeypatch):
    seen = {}

    def fake_train_seeds(models, data, seeds, **kwargs):
        seen.update(models=models, validation=kwargs["validation"])
        raise ValueError("stop here")

    monkeypatch.setattr(cli.training, "train_seeds", fake_train_seeds)
    run(capsys, "train", "--arch", "WRN-16-8", "--variant", "AResNEst", "BN_ResNEst", "--validation", "5000")
    assert seen == {"models": ["wrn16-8.a-resnest", "wrn16-8.bn-resnest"], "validation": 5000}
    run(capsys, "train", "--validation", "0.1")
    assert seen["validation"] == 0.1


def test_missing_data_is_one_clear_error(capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise cli.DatasetNotFoundError("cifar10 is not in ~/tensorflow_datasets; local layouts accepted: ...")

    monkeypatch.setattr(cli.training, "train_seeds", no_data)
    code, out = run(capsys, "train", "--dataset", "cifar10")
    assert code == 2 and out.startswith("nestzoo train: error: cifar10 is not in ~/tensorflow_datasets")

"""What a run leaves behind: the summary's timings, the curves, and the results tables (Tables 1 and 2)."""
import csv

import numpy as np
import pytest

from nestzoo import training
from nestzoo.training import report


def test_timings_leave_out_each_process_start_up():
    rows = [{"epoch": 1, "seconds": 9.0, "images_per_second": 10.0, "first_in_process": 1},
            {"epoch": 2, "seconds": 1.0, "images_per_second": 100.0, "first_in_process": 0},
            {"epoch": 3, "seconds": 7.0, "images_per_second": 12.0, "first_in_process": 1},  # resumed here
            {"epoch": 4, "seconds": 3.0, "images_per_second": 50.0, "first_in_process": 0}]
    state = {"epoch": 4, "history": rows, "best": {"epoch": 4, "val_accuracy": 0.5}}
    summary = report.summarize({"seed": 0, "parameters": 1}, state, 0.1, 0.5)
    assert summary["seconds_per_epoch"] == 2.0 and summary["images_per_second"] == 75.0


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


def test_results_table_has_mean_std_and_parameters():
    def summary(model, seed, accuracy, parameters=272_282):
        arch, variant = model.split(".")
        return {"config": {"model": model, "arch": arch, "variant": variant, "data": "cifar10"}, "seed": seed,
                "test_accuracy": accuracy,
                "parameters": parameters}

    summaries = [summary("resnet20.standard", 0, 0.92), summary("resnet20.standard", 1, 0.93),
                 summary("resnet20.a-resnest", 0, 0.91, 238_130), summary("resnet20.a-resnest", 1, 0.94, 238_130),
                 summary("wrn16-8.standard", 0, 0.955, 11_091_594), summary("wrn16-8.standard", 1, 0.957, 11_091_594)]
    rows = training.results_rows(summaries)
    first = rows[0]
    assert (first["arch"], first["variant"], first["runs"], first["seeds"]) == ("resnet20", "standard", 2, "0 1")
    assert first["accuracy_mean"] == pytest.approx(92.5) and first["accuracy_std"] == pytest.approx(np.std([92, 93], ddof=1))
    table = training.results_markdown(rows).splitlines()
    assert table[0].startswith("Test accuracy (%) on cifar10: mean ± sample std over 2 seeds")
    assert table[2] == "| arch | standard | a-resnest |"
    assert table[4] == ("| resnet20 | 92.50 ± 0.71 (0.27M); paper 92.60 (-0.10) | 92.50 ± 2.12 (0.24M); paper 92.47 "
                        "(+0.03) |")  # the published value (appendix B.4) and the difference beside
    assert table[5] == "| wrn16-8 | 95.60 ± 0.14 (11M); paper 95.56 (+0.04) |  |"

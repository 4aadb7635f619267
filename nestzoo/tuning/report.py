"""A sweep's report: report.csv, report.md, score_vs_width.png and best_model.keras."""
import csv
import dataclasses
import math
from pathlib import Path

import keras
from keras_tuner.engine.trial import TrialStatus

from nestzoo import basis, theory


@dataclasses.dataclass
class Sweep:
    """A sweep's report: `rows` (one dict per trial), the files written in `directory`, and the
    keras-tuner `tuner` (``tuner.load_model(trial)`` gives a trial's trained model)."""

    directory: Path
    rows: list
    objective: str
    tuner: object = None
    outcome: str = "finished"
    best_model: Path = None

    @property
    def markdown(self):
        return (self.directory / "report.md").read_text()


def _note(trial, starts, losses, holds):
    notes = [] if holds else ["violates the condition (allowed)"]
    for lost in losses:
        notes.append(f"lost by {lost['worker']} (silent {lost['silent']:.0f} s)")
    if len(starts) > 1:
        notes.append(f"run {len(starts)} times")
    if trial.status == TrialStatus.FAILED and trial.message:
        notes.append(trial.message.strip().splitlines()[-1][:120])
    return "; ".join(notes)


def _joined(value):
    return "/".join(map(str, value)) if isinstance(value, tuple) else value


def report_rows(searcher, hypermodel, events, epochs):
    """One dict per trial of the oracle: M, K, learning rate, epochs, condition margin, parameters,
    score, status, workers. `events`: the `EventLog`'s events; `epochs`: the sweep's (Hyperband's
    trials give their own)."""
    rows = []
    for trial_id, trial in sorted(searcher.oracle.trials.items()):
        hp = trial.hyperparameters
        widths, features, lr = hypermodel.values(hp.copy())
        keras.backend.clear_session()
        model = hypermodel.model(hp.copy())
        lr = lr or hypermodel.recipe.initial_learning_rate(basis.identity(model).resnest)
        condition = theory.bottleneck_condition(model)
        starts = [e for e in events if e["trial"] == trial_id and e["event"] == "start"]
        losses = [e for e in events if e["trial"] == trial_id and e["event"] == "lost"]
        rows.append({
            "trial": trial_id, "worker": "/".join(dict.fromkeys(e["worker"] for e in starts)),
            "status": trial.status, "M": _joined(widths), "K": _joined(features), "learning_rate": f"{lr:.3g}",
            "epochs": hp.values.get("tuner/epochs", epochs), "margin": condition.margin,
            "condition": "holds" if condition.holds else "violated", "parameters": model.count_params(),
            "score": "" if trial.score is None or math.isnan(trial.score) else round(float(trial.score), 4),
            "note": _note(trial, starts, losses, condition.holds),
        })
    return rows


def markdown(rows, objective):
    """The rows as a Markdown table (the score column named by the objective)."""
    header = list(rows[0]) if rows else ["trial"]
    lines = ["| " + " | ".join(objective if h == "score" else h for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{r[h]:,}" if h == "parameters" and r[h] else str(r[h]) for h in header) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def title(space, data_name, epochs):
    """What a sweep trained: variant, inputs, data set, blocks and epochs."""
    return f"{space.variant} ({space.inputs}) on {data_name}: blocks {_joined(space.blocks)}, {epochs} epochs"


def plot(rows, objective, path, space, title=None):
    """Score against M (stage 0's width for images), violating trials marked with a red x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for holds, style in ((True, dict(marker="o", color="tab:blue", label="condition holds")),
                         (False, dict(marker="x", color="tab:red", s=60, label="violates the condition"))):
        points = [(int(str(r["M"]).split("/")[0]), r["score"]) for r in rows
                  if r["score"] != "" and (r["condition"] == "holds") == holds]
        if points:
            ax.scatter(*zip(*points), **style)
    ax.set_xlabel("M" if space.inputs == "vector" else "M (stage 0 width)")
    ax.set_ylabel(objective)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_best_model(searcher, path):
    """The best completed trial's model saved to `path`, or None where no trial completed or its
    checkpoint is on a remote worker's machine; a checkpoint that does not load is an error naming it."""
    best = searcher.oracle.get_best_trials(1)
    if not best or best[0].status != TrialStatus.COMPLETED:
        return None
    checkpoint = searcher.checkpoint(best[0].trial_id)
    if not checkpoint.exists():
        return None
    try:
        model = searcher.load_model(best[0])
    except (OSError, ValueError) as error:
        raise ValueError(f"the best trial {best[0].trial_id}'s checkpoint {checkpoint} does not load into its "
                         f"network: {error}") from None
    model.save(path)
    return path


def write_report(searcher, hypermodel, directory, objective, events, *, data_name, epochs, outcome="finished"):
    """report.csv, report.md, score_vs_width.png and best_model.keras in `directory`; returns a `Sweep`."""
    directory = Path(directory)
    rows = report_rows(searcher, hypermodel, events, epochs)
    with (directory / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    (directory / "report.md").write_text(markdown(rows, objective))
    plot(rows, objective, directory / "score_vs_width.png", hypermodel.space,
         title(hypermodel.space, data_name, epochs))
    best_model = save_best_model(searcher, directory / "best_model.keras")
    return Sweep(directory, rows, objective, searcher, outcome, best_model)

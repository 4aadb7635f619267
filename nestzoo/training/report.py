"""What a run leaves behind: the epoch log, the summary, the curves, and the
multi-seed results table in the form of the paper's Tables 1 and 2."""
import csv
import os
import statistics
import threading
from pathlib import Path

from nestzoo.published import published_accuracy
from nestzoo.training.checkpoint import atomic_write_text


def write_csv(path, rows):
    """Write dict rows (keys of the first row as header) under a temporary name, then rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # concurrent writers
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_csv(path):
    """The rows of a log.csv as dicts of numbers (what write_csv wrote)."""
    with open(path, newline="") as f:
        return [{k: int(float(v)) if k in ("epoch", "first_in_process") else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def summarize(config, state, test_loss, test_accuracy):
    """The run's summary: config, accuracies, time per epoch and training images/s.

    Only training time counts: the first epoch of each process (tracing, compilation;
    after every resume too) is left out of the timings when there are others.
    """
    history = state["history"]
    first = [i == 0 or bool(row.get("first_in_process")) for i, row in enumerate(history)]
    steady = [row for row, warm_up in zip(history, first) if not warm_up] or history
    return {
        "config": config,
        "seed": config["seed"],
        "parameters": config["parameters"],
        "epochs": state["epoch"],
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "final_val_accuracy": history[-1].get("val_accuracy"),
        "best_val_accuracy": state["best"]["val_accuracy"],
        "best_epoch": state["best"]["epoch"],
        "seconds_per_epoch": sum(row["seconds"] for row in steady) / len(steady),
        "images_per_second": sum(row["images_per_second"] for row in steady) / len(steady),
    }


def curves_figure(history, config):
    """The loss, the accuracy and the learning rate per epoch, titled with the run's model, data and seed.

    The validation curve is labelled "test" when the test set validates (the paper's protocol).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    validation = "test" if config["validation"] == "test" else "validation"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", validation)):
            if prefix + metric in history[0]:
                ax.plot(epochs, [row[prefix + metric] for row in history], marker=".", label=label)
        ax.set_ylabel(metric)
        ax.legend()
    axes[2].step(epochs, [row["learning_rate"] for row in history], where="post", marker=".")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{config['model']} on {config['data']}, seed {config['seed']}")
    fig.tight_layout()
    return fig


def plot_curves(history, path, config):
    """Save `curves_figure` as a PNG."""
    from matplotlib import pyplot as plt

    fig = curves_figure(history, config)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _millions(parameters):
    """Parameter counts as the paper prints them: 11M, 8.7M, 0.27M."""
    return f"{parameters / 1e6:.2g}M"


def results_rows(summaries):
    """One row per (data, arch, variant): test accuracy mean and sample std over seeds, in %.

    The std of a single seed is undefined: None (an empty cell in results.csv). Where
    the paper has the cell (CIFAR-10/100, its archs and variants), "published" is its
    value (`nestzoo.published`) and "difference" the measured mean minus it; else None.
    """
    groups = {}
    for s in summaries:
        key = (s["config"]["data"], s["config"]["arch"], s["config"]["variant"])
        groups.setdefault(key, []).append(s)
    rows = []
    for (data, arch, variant), runs in groups.items():
        accuracies = [100 * r["test_accuracy"] for r in runs]
        rows.append({
            "data": data,
            "arch": arch,
            "variant": variant,
            "seeds": " ".join(str(r["seed"]) for r in runs),
            "runs": len(runs),
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else None,
            "parameters": runs[0]["parameters"],
            "published": published_accuracy(data, arch, variant),
        })
        published = rows[-1]["published"]
        rows[-1]["difference"] = None if published is None else rows[-1]["accuracy_mean"] - published
    return rows


def _seeds_heading(data, runs):
    """The line above a data set's table, saying over how many seeds the std is taken."""
    if runs == [1]:
        return f"Test accuracy (%) on {data}, one seed (parameters)"
    heading = f"Test accuracy (%) on {data}: mean ± sample std over {'/'.join(map(str, runs))} seeds (parameters)"
    return heading + ("; one seed: no std" if 1 in runs else "")


def _cell(row):
    std = "" if row["accuracy_std"] is None else f" ± {row['accuracy_std']:.2f}"
    cell = f"{row['accuracy_mean']:.2f}{std} ({_millions(row['parameters'])})"
    if row.get("published") is not None:
        cell += f"; paper {row['published']:.2f} ({row['difference']:+.2f})"
    return cell


def results_markdown(rows):
    """Tables 1 and 2 of the paper: an arch per row, a variant per column, per data set; a cell the
    paper has also gives its published value and the difference ("; paper 92.47 (-0.31)")."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        table = [r for r in rows if r["data"] == data]
        variants = list(dict.fromkeys(r["variant"] for r in table))
        lines += [
            _seeds_heading(data, sorted({r["runs"] for r in table})),
            "",
            "| arch | " + " | ".join(variants) + " |",
            "|---" * (len(variants) + 1) + "|",
        ]
        for arch in dict.fromkeys(r["arch"] for r in table):
            cells = {r["variant"]: _cell(r) for r in table if r["arch"] == arch}
            lines.append(f"| {arch} | " + " | ".join(cells.get(v, "") for v in variants) + " |")
        lines.append("")
    return "\n".join(lines)


def finished_summaries(directory):
    """The summaries of every finished run under `directory` (any depth), in path order."""
    import json

    summaries = []
    for path in sorted(Path(directory).rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # not a run's summary; a finished run's is written atomically
        if isinstance(summary, dict) and {"config", "test_accuracy", "seed", "parameters"} <= set(summary):
            summaries.append(summary)
    return summaries


def write_results(summaries, directory):
    """Write results.md and results.csv for the summaries of finished runs; returns the markdown.

    `summaries` None: every finished run in `directory` (so a second `nestzoo train`
    into the same folder adds its rows to the first one's).
    """
    if summaries is None:
        summaries = finished_summaries(directory)
    rows = results_rows(summaries)
    markdown = results_markdown(rows)
    atomic_write_text(Path(directory, "results.md"), markdown)  # workers of a grid write concurrently
    write_csv(Path(directory, "results.csv"), rows)
    return markdown


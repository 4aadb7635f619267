"""The paper's claims measured on trained models, on data that ship offline (issue 22).

Three measurements, each written as a CSV beside a PNG under --output:

1. ``epsilon.csv`` / ``epsilon.png``, Theorem 1(b): R, A and epsilon = R - A
   (Proposition 2, eq. 6; `nestzoo.theory.erlb`) tracked during training, for a
   ResNEst that satisfies the bottleneck condition (Section 3.2, M >= sum_{i<L} K_i)
   and one that violates it. Vector family on diabetes (squared error) and
   single-stage image ResNEsts on digits (cross-entropy).
2. ``depth.csv`` / ``depth.png``, Corollary 1 ("adding blocks does not decrease
   performance"): the training risk and the ERLB against L = 1..--max-blocks for a
   wide A-ResNEst (eq. 4), a DenseNEst (eq. 9), a narrow ResNEst that violates the
   bottleneck condition and a wide one that satisfies it, on diabetes.
3. ``reuse.csv`` / ``reuse.png``, diminishing feature reuse (Section 2.4, eq. 7):
   per block i, the R^2 of the best affine prediction of v_i from v_0..v_{i-1}, for
   the trained narrow and wide ResNEsts of measurement 1 (diabetes).

Every model is trained with Adam and a cosine learning-rate decay to 1% (our stand-in
for "near a local minimum": the step size shrinks to where the iterates settle);
diabetes full batch (one step per epoch), digits in mini-batches. Both data sets are
split once (seed 0) 80/20 into train and test; every row carries the training risk
and the train and test accuracy (digits) or R^2 (diabetes). ``summary.md`` gives the
final values as mean ± sd over the seeds.

    python benchmarks/paper_claims.py                      # default: 3 seeds, a few minutes on 2 cores
    python benchmarks/paper_claims.py --seeds 5 --epochs 120 --vector-epochs 4000
    python benchmarks/paper_claims.py --replot             # redraw the PNGs from the CSVs under --output
"""
import argparse
import csv
import math
import os
import statistics
import sys
import time

import numpy as np

import nestzoo  # sets nestzoo's TensorFlow defaults before TensorFlow is imported

EPSILON_COLUMNS = ("data", "model", "condition_holds", "width", "blocks", "features", "seed", "epoch", "train_risk",
                   "test_risk", "train_score", "test_score", "score", "R", "A", "epsilon", "epsilon_over_R",
                   "converged", "class_residual")
DEPTH_COLUMNS = ("data", "model", "condition_holds", "width", "blocks", "features", "seed", "epochs", "train_risk",
                 "test_risk", "train_score", "test_score", "score", "erlb", "epsilon")
REUSE_COLUMNS = ("data", "model", "condition_holds", "width", "blocks", "features", "seed", "block", "r2",
                 "train_risk", "train_score", "test_score", "score")

# The models. Diabetes: N_in = 10, N_o = 1; digits: 8x8x1 images, 10 classes.
VECTOR_K = 4
VECTOR_WIDE = 32  # 10 + 3 * 4 = 22 <= 32 for L <= 4: the bottleneck condition holds
VECTOR_NARROW = 8  # < N_in = 10: it fails at every L (and M = 8 >= N_o = 1)
IMAGE_MODELS = {  # single stage, three blocks: the condition counts K_0 = 1 and blocks 1, 2
    "resnest-pointwise-M32": dict(blocks=(3,), width=(32,), features=(4,), block="pointwise"),  # 1 + 4 + 4 <= 32
    "resnest-basic-M8": dict(blocks=(3,), width=(8,), features=(8,)),  # 1 + 8 + 8 = 17 > 8
}


def load_data(name):
    """(x_train, y_train, x_test, y_test) of `name` ("diabetes" or "digits"), split 80/20 with seed 0.

    Diabetes: features and target standardized with the training split's statistics.
    Digits: pixels / 16, as 8x8x1 images, the full 1,797 images.
    """
    from sklearn.datasets import load_diabetes, load_digits

    if name not in ("diabetes", "digits"):
        raise ValueError(f"unknown data set {name!r}; valid choices: diabetes, digits")
    x, y = (load_diabetes if name == "diabetes" else load_digits)(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(round(0.8 * len(x)))
    train, test = order[:cut], order[cut:]
    if name == "digits":
        x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
        return x[train], y[train].astype("int64"), x[test], y[test].astype("int64")
    mean, std = x[train].mean(0), x[train].std(0)
    x = ((x - mean) / std).astype("float32")
    y = ((y - y[train].mean()) / y[train].std()).astype("float32").reshape(-1, 1)
    return x[train], y[train], x[test], y[test]


def build(kind, blocks, data, seed):
    """A fresh model of `kind` with `blocks` blocks for `data`, seeded; returns (model, condition holds or None)."""
    import keras

    from nestzoo import theory

    keras.utils.set_random_seed(seed)
    if data == "digits":
        if kind not in IMAGE_MODELS:
            raise ValueError(f"unknown digits model {kind!r}; valid choices: {', '.join(IMAGE_MODELS)}")
        model = nestzoo.ResNEst(input_shape=(8, 8, 1), classes=10, **IMAGE_MODELS[kind])
        return model, bool(theory.bottleneck_condition(model))
    common = dict(arch="mlp", input_shape=(10,), blocks=blocks, features=VECTOR_K, outputs=1)
    if kind == "densenest":
        return nestzoo.DenseNEst(**common), None
    if kind == "a-resnest":
        return nestzoo.AResNEst(width=VECTOR_WIDE, **common), None
    widths = {"resnest-narrow": VECTOR_NARROW, "resnest-wide": VECTOR_WIDE}
    if kind not in widths:
        raise ValueError(f"unknown diabetes model {kind!r}; valid choices: a-resnest, densenest, "
                         f"{', '.join(widths)}")
    model = nestzoo.ResNEst(width=widths[kind], **common)
    return model, bool(theory.bottleneck_condition(model))


def describe(model, data):
    """(width, blocks, features) of a model as text, for the CSV."""
    from nestzoo import basis

    spec = basis.identity(model).spec
    value = lambda name: str(getattr(spec, name, "")).replace(" ", "")  # noqa: E731
    return value("width"), basis.identity(model).num_blocks, value("features")


def evaluate(model, x, y, data):
    """(risk, score) of the model on (x, y): squared error and R^2 (diabetes), cross-entropy and accuracy (digits)."""
    from nestzoo import theory

    import keras

    out = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)  # small data: one call, no retracing
    if data == "diabetes":
        risk = theory.risk(out, y, "squared_error")
        return risk, 1.0 - risk / float(np.mean(np.sum((y - y.mean(0)) ** 2, axis=1)))
    risk = float(np.mean(-np.log(np.clip(out[np.arange(len(y)), y], 1e-300, None))))
    return risk, float(np.mean(out.argmax(1) == y))


def train(model, data, split, epochs, learning_rate, batch_size, checkpoints, on_checkpoint):
    """Adam with cosine decay (to 1% of `learning_rate`) for `epochs` epochs; call on_checkpoint(epoch) at each
    epoch in `checkpoints` (0 = before training)."""
    import keras
    import tensorflow as tf

    x, y = split[0], split[1]
    batch_size = len(x) if batch_size is None else batch_size
    steps = math.ceil(len(x) / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * steps), alpha=0.01)
    optimizer = keras.optimizers.Adam(schedule)
    squared = data == "diabetes"

    def step(xb, yb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            if squared:
                loss = tf.reduce_mean(tf.reduce_sum((out - yb) ** 2, axis=1))
            else:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, out))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    if epochs * steps > 20:  # tracing costs about a second: worth it only beyond a few steps
        step = tf.function(step, autograph=False)  # no data-dependent control flow to convert
    rng = np.random.default_rng(0)
    if 0 in checkpoints:
        on_checkpoint(0)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x)) if steps > 1 else np.arange(len(x))
        for b in range(steps):
            index = order[b * batch_size:(b + 1) * batch_size]
            step(tf.constant(x[index]), tf.constant(y[index]))
        if epoch in checkpoints:
            on_checkpoint(epoch)


def checkpoint_epochs(epochs, count):
    """`count` epochs from 0 to `epochs`, spaced geometrically (many early, where the risk moves fastest)."""
    if count < 2:
        return [epochs]
    points = {0, epochs} | {int(round(epochs ** (k / (count - 1)))) for k in range(1, count - 1)}
    return sorted(points)


def feature_reuse(model, x):
    """Per block i = 1..L: R^2 of the best affine prediction of v_i from v_0..v_{i-1} (Section 2.4, eq. 7).

    R^2 = 1 - sum of squared residuals / sum of squares about the mean, pooled over v_i's
    coordinates (least squares with a bias; image taps globally average-pooled). 1: v_i is
    linearly predictable from the earlier features, which then cannot strictly improve x_i.
    Constant coordinates of v_i (dead ReLUs) add 0 to both sums; a v_i that is constant
    everywhere gives NaN.
    """
    from nestzoo import basis

    import keras

    taps = basis.basis_model(model, pooled=True)(x, training=False)
    L = basis.identity(model).num_blocks
    v = [keras.ops.convert_to_numpy(taps[f"v{i}"]).astype(np.float64).reshape(len(x), -1) for i in range(L + 1)]
    return [(i, linear_r2(np.concatenate(v[:i], axis=1), v[i])) for i in range(1, len(v))]


def linear_r2(previous, target):
    """R^2 of the least-squares affine fit of `target` (N x K) on `previous` (N x D), pooled over K:
    1 - sum of squared residuals / sum of squares about the mean (NaN for a constant target)."""
    design = np.concatenate([previous, np.ones((len(previous), 1))], axis=1)
    residual = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    total = float(np.sum((target - target.mean(0)) ** 2))
    return 1.0 - float(np.sum(residual ** 2)) / total if total > 0 else float("nan")


def _bound(model, x, y, kind, max_iter):
    """The ERLB of a trained model (A of Proposition 2): `theory.erlb`, or for an A-ResNEst, which is its own
    lower bound, the best affine fit on v_0..v_L (`theory.block_risks`' last augmented entry)."""
    from nestzoo import theory

    if kind == "a-resnest":
        return theory.block_risks(model, (x, y), max_iter=max_iter).augmented[-1], None
    bound = theory.erlb(model, (x, y), max_iter=max_iter)
    return bound.A, bound


def run_epsilon(data, kinds, seeds, epochs, checkpoints, max_iter, log, models):
    """Measurement 1: rows of EPSILON_COLUMNS for each kind and seed at each checkpoint epoch."""
    from nestzoo import theory

    split = load_data(data)
    rows = []
    for kind in kinds:
        for seed in seeds:
            blocks = 4 if data == "diabetes" else None
            model, holds = build(kind, blocks, data, seed)
            width, L, features = describe(model, data)
            started = time.time()

            def record(epoch, model=model, kind=kind, seed=seed, holds=holds, width=width, L=L, features=features):
                bound = theory.erlb(model, split[:2], max_iter=max_iter)
                train_risk, train_score = evaluate(model, *split[:2], data)
                test_risk, test_score = evaluate(model, *split[2:], data)
                rows.append(dict(data=data, model=kind, condition_holds=holds, width=width, blocks=L,
                                 features=features, seed=seed, epoch=epoch, train_risk=train_risk,
                                 test_risk=test_risk, train_score=train_score, test_score=test_score,
                                 score="r2" if data == "diabetes" else "accuracy", R=bound.R, A=bound.A,
                                 epsilon=bound.epsilon,
                                 epsilon_over_R=bound.epsilon / bound.R if bound.R > 0 else float("nan"),
                                 converged=bound.converged, class_residual=bound.class_residual))

            lr, batch = (1e-2, None) if data == "diabetes" else (1e-2, 64)
            train(model, data, split, epochs, lr, batch, set(checkpoint_epochs(epochs, checkpoints)), record)
            last = rows[-1]
            log(f"epsilon {data} {kind} seed {seed}: R {last['R']:.4g} A {last['A']:.4g} eps/R "
                f"{last['epsilon_over_R']:.3g} train {last['score']} {last['train_score']:.3f} test "
                f"{last['test_score']:.3f} ({time.time() - started:.1f} s)")
            models[(data, kind, 4 if data == "diabetes" else L, seed)] = model
    return rows


def run_depth(kinds, max_blocks, seeds, epochs, max_iter, log, models):
    """Measurement 2 on diabetes: rows of DEPTH_COLUMNS for each kind, L = 1..max_blocks and seed."""
    from nestzoo import theory

    split = load_data("diabetes")
    rows = []
    for kind in kinds:
        for L in range(1, max_blocks + 1):
            for seed in seeds:
                key = ("diabetes", kind, L, seed)
                if key in models and epochs == models.get(("epochs", "diabetes")):
                    model = models[key]  # the same model, seed and training as measurement 1's final one
                    holds = None if kind in ("a-resnest", "densenest") else bool(theory.bottleneck_condition(model))
                else:
                    model, holds = build(kind, L, "diabetes", seed)
                    train(model, "diabetes", split, epochs, 1e-2, None, set(), lambda epoch: None)
                    models[key] = model
                erlb, bound = _bound(model, *split[:2], kind, max_iter)
                train_risk, train_score = evaluate(model, *split[:2], "diabetes")
                test_risk, test_score = evaluate(model, *split[2:], "diabetes")
                width, _, features = describe(model, "diabetes")
                rows.append(dict(data="diabetes", model=kind, condition_holds=holds, width=width, blocks=L,
                                 features=features, seed=seed, epochs=epochs, train_risk=train_risk,
                                 test_risk=test_risk, train_score=train_score, test_score=test_score, score="r2",
                                 erlb=erlb, epsilon=train_risk - erlb))
            mean = statistics.fmean(r["train_risk"] for r in rows[-len(seeds):])
            log(f"depth {kind} L={L}: train risk {mean:.4g} (mean of {len(seeds)} seeds)")
    return rows


def run_reuse(kinds, seeds, models, log):
    """Measurement 3 on diabetes: rows of REUSE_COLUMNS for the trained L=4 ResNEsts in `models`."""
    from nestzoo import theory

    split = load_data("diabetes")
    rows = []
    for kind in kinds:
        for seed in seeds:
            model = models[("diabetes", kind, 4, seed)]
            width, L, features = describe(model, "diabetes")
            train_risk, train_score = evaluate(model, *split[:2], "diabetes")
            test_score = evaluate(model, *split[2:], "diabetes")[1]
            holds = bool(theory.bottleneck_condition(model))
            for block, r2 in feature_reuse(model, split[0]):
                rows.append(dict(data="diabetes", model=kind, condition_holds=holds, width=width, blocks=L,
                                 features=features, seed=seed, block=block, r2=r2, train_risk=train_risk,
                                 train_score=train_score, test_score=test_score, score="r2"))
        log(f"reuse {kind}: R^2 per block " + ", ".join(
            f"{b}: {statistics.fmean(r['r2'] for r in rows if r['model'] == kind and r['block'] == b):.3f}"
            for b in range(1, 5)))
    return rows


def read_csv(path):
    """The rows of a CSV this benchmark wrote, numbers as floats/ints and booleans as bool (blank: None)."""
    def value(text):
        if text in ("True", "False"):
            return text == "True"
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as f:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(f)]


def write_csv(rows, columns, path):
    """Write `rows` (dicts) with exactly `columns` as a CSV file."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def _spread(values):
    """'mean ± sd' (sd over the seeds; 0 for one seed)."""
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {sd:.2g}"


def plot(epsilon_rows, depth_rows, reuse_rows, directory):
    """epsilon.png, depth.png and reuse.png: means over the seeds with a min-max band (error bars for reuse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def group(rows, key, x, y):
        out = {}
        for r in rows:
            out.setdefault(key(r), {}).setdefault(r[x], []).append(r[y])
        return {k: (np.array(sorted(v)), [np.array(v[e]) for e in sorted(v)]) for k, v in out.items()}

    paths = []
    if epsilon_rows:
        datasets = sorted({r["data"] for r in epsilon_rows})
        fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
        for ax, data in zip(axes[0], datasets):
            rows = [r for r in epsilon_rows if r["data"] == data]
            for (kind, holds), (xs, ys) in group(rows, lambda r: (r["model"], r["condition_holds"]), "epoch",
                                                 "epsilon_over_R").items():
                mean = [y.mean() for y in ys]
                label = f"{kind} (condition {'holds' if holds else 'fails'})"
                line, = ax.plot(np.maximum(xs, 0.5), mean, "o-", label=label)
                ax.fill_between(np.maximum(xs, 0.5), [y.min() for y in ys], [y.max() for y in ys], alpha=0.2,
                                color=line.get_color())
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("epoch (0 plotted at 0.5)")
            ax.set_ylabel("epsilon / R (log scale)")
            ax.set_title(f"Theorem 1(b) on {data}: mean, band = min..max over seeds", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(directory, "epsilon.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if depth_rows:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for ax, column, title in zip(axes, ("train_risk", "erlb"), ("training risk", "ERLB (A of Proposition 2)")):
            for kind, (xs, ys) in group(depth_rows, lambda r: r["model"], "blocks", column).items():
                line, = ax.plot(xs, [y.mean() for y in ys], "o-", label=kind)
                ax.fill_between(xs, [y.min() for y in ys], [y.max() for y in ys], alpha=0.2, color=line.get_color())
            ax.set_xlabel("blocks L")
            ax.set_xticks(sorted({r["blocks"] for r in depth_rows}))
            ax.set_ylabel(f"{title}, squared error")
            ax.set_title(f"Corollary 1 on diabetes: {title}", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(directory, "depth.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if reuse_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        kinds = sorted({r["model"] for r in reuse_rows})
        for k, kind in enumerate(kinds):
            xs, ys = group([r for r in reuse_rows if r["model"] == kind], lambda r: 0, "block", "r2")[0]
            ax.bar(xs + (k - (len(kinds) - 1) / 2) * 0.35, [np.nanmean(y) for y in ys], 0.35,
                   yerr=[np.nanstd(y) for y in ys], capsize=3, label=kind)
        ax.set_xlabel("block i")
        ax.set_ylabel("R^2 of v_i from v_0..v_{i-1}")
        ax.set_ylim(0, 1.05)
        ax.set_title("feature reuse on diabetes (mean ± sd over seeds)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(directory, "reuse.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def summary(epsilon_rows, depth_rows, reuse_rows, command):
    """The final values as a Markdown text, mean ± sd over the seeds."""
    lines = ["# The paper's claims on trained models", "", f"Command: `{command}`", ""]
    if epsilon_rows:
        lines += ["## Theorem 1(b): epsilon / R at the end of training", "",
                  "| data | model | condition | epochs | R (train risk) | A | epsilon / R | train score | test score |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in sorted({(r["data"], r["model"]) for r in epsilon_rows}):
            rows = [r for r in epsilon_rows if (r["data"], r["model"]) == key]
            last = max(r["epoch"] for r in rows)
            rows = [r for r in rows if r["epoch"] == last]
            lines.append(f"| {key[0]} | {key[1]} | {'holds' if rows[0]['condition_holds'] else 'fails'} | {last} | "
                         + " | ".join(_spread(r[c] for r in rows) for c in ("R", "A", "epsilon_over_R"))
                         + f" | {rows[0]['score']} {_spread(r['train_score'] for r in rows)} | "
                         f"{_spread(r['test_score'] for r in rows)} |")
        lines.append("")
    if depth_rows:
        lines += ["## Corollary 1: training risk and ERLB against L (diabetes, squared error)", "",
                  "| model | L | train risk | ERLB | train R^2 | test R^2 |", "|---|---|---|---|---|---|"]
        for kind in sorted({r["model"] for r in depth_rows}):
            for L in sorted({r["blocks"] for r in depth_rows}):
                rows = [r for r in depth_rows if r["model"] == kind and r["blocks"] == L]
                lines.append(f"| {kind} | {L} | " + " | ".join(
                    _spread(r[c] for r in rows) for c in ("train_risk", "erlb", "train_score", "test_score")) + " |")
        lines += ["", "Non-increasing in L (means over seeds):", ""]
        for kind in sorted({r["model"] for r in depth_rows}):
            for column in ("train_risk", "erlb"):
                means = [statistics.fmean(r[column] for r in depth_rows if r["model"] == kind and r["blocks"] == L)
                         for L in sorted({r["blocks"] for r in depth_rows})]
                ok = all(b <= a for a, b in zip(means, means[1:]))
                lines.append(f"- {kind}, {column}: {'yes' if ok else 'NO'} ({', '.join(f'{m:.4g}' for m in means)})")
        lines.append("")
    if reuse_rows:
        lines += ["## Feature reuse: R^2 of v_i from v_0..v_{i-1} (diabetes)", "",
                  "| model | condition | block i | R^2 |", "|---|---|---|---|"]
        for kind in sorted({r["model"] for r in reuse_rows}):
            for block in sorted({r["block"] for r in reuse_rows}):
                rows = [r for r in reuse_rows if r["model"] == kind and r["block"] == block]
                lines.append(f"| {kind} | {'holds' if rows[0]['condition_holds'] else 'fails'} | {block} | "
                             f"{_spread(r['r2'] for r in rows)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    """Run the three measurements and write CSVs, PNGs and summary.md under --output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=60, help="digits training epochs, batch 64 (default 60)")
    parser.add_argument("--vector-epochs", type=int, default=1500,
                        help="diabetes training epochs, full batch: one step each (default 1500)")
    parser.add_argument("--checkpoints", type=int, default=6, help="epsilon measurements per run (default 6)")
    parser.add_argument("--max-blocks", type=int, default=4, help="L = 1..N in the depth measurement (default 4)")
    parser.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per cross-entropy ERLB")
    parser.add_argument("--only", choices=("epsilon", "depth", "reuse"), action="append",
                        help="run only these measurements (repeatable; reuse needs epsilon's diabetes models)")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the PNGs from the CSVs already under --output")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "paper_claims"))
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "vector_epochs", "checkpoints", "max_blocks", "max_iter"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.replot:
        rows = [read_csv(os.path.join(args.output, f"{name}.csv")) for name in ("epsilon", "depth", "reuse")]
        return plot(*rows, args.output)
    only = set(args.only or ("epsilon", "depth", "reuse"))
    if "reuse" in only:
        only.add("epsilon")
    os.makedirs(args.output, exist_ok=True)
    seeds = list(range(args.seeds))
    started = time.time()

    def log(message):
        print(f"[{time.time() - started:7.1f} s] {message}", flush=True)

    models = {("epochs", "diabetes"): args.vector_epochs}
    epsilon_rows = depth_rows = reuse_rows = []
    if "epsilon" in only:
        epsilon_rows = (run_epsilon("diabetes", ("resnest-wide", "resnest-narrow"), seeds, args.vector_epochs,
                                    args.checkpoints, args.max_iter, log, models)
                        + run_epsilon("digits", tuple(IMAGE_MODELS), seeds, args.epochs, args.checkpoints,
                                      args.max_iter, log, models))
        write_csv(epsilon_rows, EPSILON_COLUMNS, os.path.join(args.output, "epsilon.csv"))
    if "reuse" in only:
        reuse_rows = run_reuse(("resnest-narrow", "resnest-wide"), seeds, models, log)
        write_csv(reuse_rows, REUSE_COLUMNS, os.path.join(args.output, "reuse.csv"))
    if "depth" in only:
        depth_rows = run_depth(("a-resnest", "densenest", "resnest-narrow", "resnest-wide"), args.max_blocks, seeds,
                               args.vector_epochs, args.max_iter, log, models)
        write_csv(depth_rows, DEPTH_COLUMNS, os.path.join(args.output, "depth.csv"))
    plot(epsilon_rows, depth_rows, reuse_rows, args.output)
    command = "python benchmarks/paper_claims.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                     " " + " ".join(sys.argv[1:] if argv is None else argv))
    text = summary(epsilon_rows, depth_rows, reuse_rows, command)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text + f"\nTotal time: {time.time() - started:.0f} s.\n")
    log(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()

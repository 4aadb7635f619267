"""The mechanics of benchmarks/paper_claims.py on tiny runs (issue 22).

These check what must hold whatever the training did: the CSV columns, epsilon >= 0
(Proposition 2: the model's predictor lies in the A-ResNEst's class), the v_0..v_i
risks non-increasing over blocks for a fixed basis (Proposition 2's eq. 7, exact for
least squares), R^2 in [0, 1] and 1 for a feature that is a linear copy. They do not
check the empirical outcome (whether epsilon shrinks): that is the benchmark's result.
"""
import csv

import numpy as np
import pytest

from benchmarks import paper_claims
from nestzoo import theory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Measurements 1-3 on diabetes, 1 seed, a few full-batch epochs, L = 1..2; the trained models."""
    models = {("epochs", "diabetes"): 5}
    log = lambda message: None  # noqa: E731
    epsilon = paper_claims.run_epsilon("diabetes", ("resnest-wide", "resnest-narrow"), [0], 5, 3, 50, log, models)
    reuse = paper_claims.run_reuse(("resnest-narrow", "resnest-wide"), [0], models, log)
    depth = paper_claims.run_depth(("a-resnest", "densenest"), 2, [0], 5, 50, log, models)
    out = tmp_path_factory.mktemp("claims")
    paths = {name: paper_claims.write_csv(rows, columns, out / f"{name}.csv") for name, rows, columns in
             [("epsilon", epsilon, paper_claims.EPSILON_COLUMNS), ("reuse", reuse, paper_claims.REUSE_COLUMNS),
              ("depth", depth, paper_claims.DEPTH_COLUMNS)]}
    pngs = paper_claims.plot(epsilon, depth, reuse, out)
    return dict(epsilon=epsilon, reuse=reuse, depth=depth, paths=paths, pngs=pngs, models=models,
                summary=paper_claims.summary(epsilon, depth, reuse, "tiny"))


def test_csv_columns_and_rows(tiny):
    for name, columns in [("epsilon", paper_claims.EPSILON_COLUMNS), ("reuse", paper_claims.REUSE_COLUMNS),
                          ("depth", paper_claims.DEPTH_COLUMNS)]:
        with open(tiny["paths"][name], newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0].keys()) == columns
        blank = {(row["model"], c) for row in rows for c in columns if row[c] == ""}
        assert blank <= {("a-resnest", "condition_holds"), ("densenest", "condition_holds"), ("densenest", "width")}
    # checkpoints 0, an intermediate one and the last, per model; 4 reuse blocks per model; 2 kinds x L=1..2
    assert sorted({r["epoch"] for r in tiny["epsilon"]}) == paper_claims.checkpoint_epochs(5, 3) == [0, 2, 5]
    assert len(tiny["epsilon"]) == 2 * 3 and len(tiny["reuse"]) == 2 * 4 and len(tiny["depth"]) == 2 * 2
    assert {r["condition_holds"] for r in tiny["epsilon"] if r["model"] == "resnest-wide"} == {True}
    assert {r["condition_holds"] for r in tiny["epsilon"] if r["model"] == "resnest-narrow"} == {False}
    assert [p.rsplit("/", 1)[-1] for p in map(str, tiny["pngs"])] == ["epsilon.png", "depth.png", "reuse.png"]
    assert "| diabetes | resnest-wide | holds | 5 |" in tiny["summary"]


def test_epsilon_is_nonnegative(tiny):
    for row in tiny["epsilon"]:
        assert row["epsilon"] >= -1e-9 * row["R"], row
        assert row["A"] <= row["R"] * (1 + 1e-9)
        assert abs(row["R"] - row["train_risk"]) <= 1e-4 * row["R"]  # erlb's R is the model's own training risk
    for row in tiny["depth"]:
        assert row["epsilon"] >= -1e-6 * row["train_risk"], row


def test_a_over_blocks_is_monotone_for_a_fixed_basis(tiny):
    x, y = paper_claims.load_data("diabetes")[:2]
    for kind in ("resnest-narrow", "resnest-wide"):
        risks = theory.block_risks(tiny["models"][("diabetes", kind, 4, 0)], (x, y)).augmented
        assert len(risks) == 5
        assert all(b <= a * (1 + 1e-9) for a, b in zip(risks, risks[1:])), risks


def test_feature_reuse_r2(tiny):
    rng = np.random.default_rng(0)
    previous = rng.normal(size=(200, 5))
    copy = previous[:, :3] @ rng.normal(size=(3, 4)) + 2.0  # linearly predictable: R^2 = 1
    assert paper_claims.linear_r2(previous, copy) == pytest.approx(1.0, abs=1e-12)
    fresh = rng.normal(size=(200, 4))  # independent of the previous features: R^2 near 0 (5 of 200 dof)
    assert 0.0 <= paper_claims.linear_r2(previous, fresh) < 0.1
    assert np.isnan(paper_claims.linear_r2(previous, np.ones((200, 2))))
    assert [r["block"] for r in tiny["reuse"] if r["model"] == "resnest-wide"] == [1, 2, 3, 4]
    assert all(np.isnan(r["r2"]) or 0.0 <= r["r2"] <= 1.0 + 1e-9 for r in tiny["reuse"])

"""Norm-sub post-processing of noisy counts and marginal calibration of generated rows."""

import numpy as np
import pandas as pd

from fedtab.privacy.mechanisms import norm_sub
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform import fit_federated
from fedtab.transform.calibration import calibrate, raking_weights, weighted_pick


def test_norm_sub_keeps_the_total_zeroes_noise_only_cells_and_leaves_exact_counts_alone():
    exact = np.array([3.0, 0.0, 2.0, 7.0])
    assert np.array_equal(norm_sub(exact), exact)
    true = np.r_[np.full(5, 100.0), np.zeros(35)]  # 500 rows in 5 of 40 cells
    noisy = true + np.random.default_rng(0).normal(0.0, 20.0, np.shape(true))  # simulated noisy counts
    out = norm_sub(noisy)
    assert out.min() >= 0 and np.isclose(out.sum(), noisy.sum())
    clipped = np.clip(noisy, 0, None)
    # Mass outside the 5 true cells: clipping keeps the noise of ~17 cells, norm-sub far less.
    assert out[5:].sum() < 0.5 * clipped[5:].sum()
    assert np.abs(out - true).sum() < np.abs(clipped - true).sum()


def test_raking_and_weighted_pick_reach_the_target_frequencies():
    rng = np.random.default_rng(0)
    a = (rng.random(6000) < 0.8).astype(np.int64)   # 80% ones
    b = rng.integers(0, 3, 6000)                     # uniform over 3
    w = raking_weights([(a, np.array([0.5, 0.5])), (b, np.array([0.5, 0.3, 0.2]))], 6000)
    keep = weighted_pick(w, 2000, np.random.default_rng(1))
    assert len(np.unique(keep)) == 2000
    assert abs(np.mean(a[keep] == 1) - 0.5) < 0.03
    assert np.allclose(np.bincount(b[keep], minlength=3) / 2000, [0.5, 0.3, 0.2], atol=0.05)


def _transformer():
    schema = TableSchema(columns=(ColumnSpec("x", "numerical", "float", lower=0.0, upper=100.0),
                                  ColumnSpec("c", "categorical", categories=("a", "b", "c"))), name="t")
    rng = np.random.default_rng(0)
    x = rng.normal(30, 5, 2000)
    x[rng.random(2000) < 0.2] = np.nan
    frame = pd.DataFrame({"x": x, "c": rng.choice(["a", "b", "c"], 2000, p=[0.6, 0.3, 0.1])})
    return fit_federated({"s": frame}, schema)


def test_calibration_matches_marginals_keeps_ranks_and_is_reproducible():
    tr = _transformer()
    rng = np.random.default_rng(5)
    m = 3000
    # A "generator" with wrong marginals: x around 70 and half missing, c uniform; x rises with c.
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), m)
    x = 60 + 10 * (c == "b") + 20 * (c == "c") + rng.normal(0, 3, m)
    x[rng.random(m) < 0.5] = np.nan
    decoded = {"x": x, "c": c}
    out = calibrate(tr.columns_, decoded, 1000, np.random.default_rng(1), numerical=True)
    again = calibrate(tr.columns_, decoded, 1000, np.random.default_rng(1), numerical=True)
    kept = calibrate(tr.columns_, decoded, 1000, np.random.default_rng(1))
    assert set(kept["x"][~np.isnan(kept["x"])]) <= set(x[~np.isnan(x)])  # raking alone keeps the values
    assert np.array_equal(out["x"], again["x"], equal_nan=True) and np.array_equal(out["c"], again["c"])
    freqs = pd.Series(out["c"]).value_counts(normalize=True)
    assert abs(freqs["a"] - 0.6) < 0.05 and abs(freqs["c"] - 0.1) < 0.05
    assert abs(np.isnan(out["x"]).mean() - 0.2) < 0.05
    present = out["x"][~np.isnan(out["x"])]
    assert abs(np.median(present) - 30) < 2 and abs(np.std(present) - 5) < 1.5
    # The generator's dependence survives: x is still larger for c == 'c' than for c == 'a'.
    by = pd.DataFrame(out).dropna().groupby("c")["x"].mean()
    assert by["c"] > by["a"]


def test_norm_sub_to_a_better_total_reaches_that_total():
    noisy = np.r_[np.full(5, 100.0), np.zeros(35)] + np.random.default_rng(0).normal(0.0, 20.0, 40)
    for total in (300.0, 500.0, 900.0):
        out = norm_sub(noisy, total=total)
        assert out.min() >= 0 and np.isclose(out.sum(), total)


def test_missing_scores_give_the_exact_missing_share_to_the_rows_the_generator_leaned_missing():
    tr = _transformer()  # x: 20% missing
    rng = np.random.default_rng(3)
    m = 3000
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), m)
    value = rng.normal(30, 5, m)
    score = rng.normal(0, 1, m) + 1.0  # the generator says "missing" for ~84% of rows
    x = np.where(score > 0, np.nan, value)
    out = calibrate(tr.columns_, {"x": x, "c": c}, 1000, np.random.default_rng(1), missing_scores={"x": (value, score)})
    assert np.isnan(out["x"]).sum() == round(tr.columns_[0].missing_share_ * 1000)
    # Without the scores, raking cannot get there from 84% missing candidates.
    plain = calibrate(tr.columns_, {"x": x, "c": c}, 1000, np.random.default_rng(1))
    assert np.isnan(plain["x"]).mean() > 0.3

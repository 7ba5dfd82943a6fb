"""Chance levels of the disclosure figures at one site: what a table that knows nothing of the split reads.

A site's privacy figures compare its training rows with its holdout rows. At a small site which rows
were held out moves every figure: at the heart hospitals (25-61 holdout rows) a DP table scored
against random re-splits of a hospital's rows, a split it knows nothing of, failed the default
policy's privacy bands 42 times in 90 (``benchmarks/bench_gate_chance.py``). So beside each gated
figure the site reports its **chance level**: the figure's ``CHANCE_QUANTILE`` quantile over
``resplits`` random re-splits of the site's rows into training and holdout rows of the same sizes,
the synthetic rows as they are. A figure at or below it is what chance alone reaches 1 time in 100 at
this site's size. A diagnostic, reported beside each figure: the release gate no longer reads it
(``fedtab.release`` tests each figure against a null fixed by the site's sizes). The level itself rises
with memorisation (a copying table spreads its own re-splits wider), so a threshold raised to it let
a table that near-copied 20% of a small hospital's rows pass.

Every attack is run once, on every row of the site; a re-split only relabels rows. What each row
contributes does not depend on the split: its distances to the synthetic rows (DCR share, membership
AUC), whether the inference attack guesses its secret, whether the linkability attack links its two
halves, and which singling-out queries (drawn from the synthetic rows alone) match it. So hundreds
of re-splits cost about one evaluation, and at the real split each figure is the one reported
(tests). The distances use one space fitted on all the site's rows, as the reported figures do, so
that the real split is one split like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata

CHANCE_QUANTILE = 0.99
# Distances equal within this tolerance are ties (here and in ``evaluation.disclosure``): the Euclidean
# distances come from dot products, whose rounding near 0 is ~1e-7 (two copies of one row); distinct
# rows in ``DistanceSpace`` lie much farther apart.
TIE = 1e-6


@dataclass(frozen=True)
class ChanceLevel:
    """A figure over random re-splits of the site's rows: mean, sd, and its ``CHANCE_QUANTILE`` quantile."""

    mean: float
    sd: float
    level: float
    resplits: int


def summarise(values: np.ndarray) -> ChanceLevel | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    return ChanceLevel(mean=float(v.mean()), sd=float(v.std(ddof=1)),
                       level=float(np.quantile(v, CHANCE_QUANTILE)), resplits=len(v))


def resplits(n_train: int, n_holdout: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random re-splits of ``n_train + n_holdout`` rows, as a boolean (count, rows) matrix:
    True marks the rows that play the training rows (``n_train`` of them in every re-split)."""
    n = n_train + n_holdout
    order = np.argsort(rng.random((count, n)), axis=1)
    member = np.zeros((count, n), dtype=bool)
    np.put_along_axis(member, order[:, :n_train], True, axis=1)
    return member


def dcr_shares(distances: np.ndarray, member: np.ndarray, share: Callable[..., np.ndarray]) -> np.ndarray:
    """The DCR share under each re-split. ``distances``: (synthetic query rows, site rows);
    ``share(closer, tied, n, k)``: the per-query outcome against every holdout-size training sample
    (``evaluation.disclosure._share_against_subsets``)."""
    out = np.empty(len(member))
    for i, m in enumerate(member):
        train, hold = distances[:, m], distances[:, ~m]
        d_hold = hold.min(axis=1)[:, None]
        closer = (train < d_hold - TIE).sum(axis=1)
        tied = (np.abs(train - d_hold) <= TIE).sum(axis=1)
        out[i] = share(closer, tied, train.shape[1], hold.shape[1]).mean()
    return out


def mia_aucs(min_distance: np.ndarray, member: np.ndarray) -> np.ndarray:
    """The membership attack's ROC-AUC (score: minus the distance to the closest synthetic row, ties
    count one half, as ``roc_auc_score``) under each re-split: Mann-Whitney's U from fixed ranks."""
    ranks = rankdata(-np.asarray(min_distance, dtype=np.float64))
    n1 = member.sum(axis=1).astype(np.float64)
    n0 = member.shape[1] - n1
    u = (member * ranks).sum(axis=1) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def residual_risks(success: np.ndarray, member: np.ndarray, n_attacks: int, *,
                   draw: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """anonymeter's residual risk (attack on the training side vs control attack on the holdout side)
    under each re-split, from each row's success. ``draw=None``: every row of each side attacked, its
    successes read as the expected count of ``n_attacks`` attacks (as ``disclosure._every_row``);
    ``draw=k``: ``k`` rows drawn at random from each side, as anonymeter's own sampling does."""
    from anonymeter.stats.confidence import EvaluationResults

    success = np.asarray(success, dtype=np.float64)
    out = np.empty(len(member))
    for i, m in enumerate(member):
        a, c = success[m], success[~m]
        if draw is None:
            hits_a, hits_c = a.sum() * n_attacks / len(a), c.sum() * n_attacks / len(c)
        else:
            hits_a = a[rng.choice(len(a), size=min(draw, len(a)), replace=False)].sum()
            hits_c = c[rng.choice(len(c), size=min(draw, len(c)), replace=False)].sum()
        out[i] = EvaluationResults(n_attacks=n_attacks, n_success=hits_a, n_baseline=0,
                                   n_control=hits_c).risk().value
    return out


def singling_out_risks(matches: np.ndarray, row_keys: np.ndarray, member: np.ndarray, *, draw: int,
                       n_attacks: int, rng: np.random.Generator) -> np.ndarray:
    """anonymeter's singling-out residual risk under each re-split. ``matches``: (site rows, queries)
    booleans, which rows each query (drawn from the synthetic rows) selects; ``row_keys``: equal rows
    share a key (anonymeter keeps one of each). Each side: ``draw`` rows drawn from it, a query succeeds
    when it selects exactly one of their distinct rows."""
    from anonymeter.stats.confidence import EvaluationResults

    def hits(pool: np.ndarray) -> int:
        picked = pool[rng.choice(len(pool), size=min(draw, len(pool)), replace=False)]
        _, first = np.unique(row_keys[picked], return_index=True)
        return int((matches[picked[first]].sum(axis=0) == 1).sum())

    out = np.empty(len(member))
    index = np.arange(member.shape[1])
    for i, m in enumerate(member):
        out[i] = EvaluationResults(n_attacks=n_attacks, n_success=hits(index[m]), n_baseline=0,
                                   n_control=hits(index[~m])).risk().value
    return out


def query_matches(rows: pd.DataFrame, synthetic: pd.DataFrame, *, n_attacks: int, n_cols: int,
                  max_attempts: int, seed: int) -> np.ndarray:
    """Which of ``rows`` each multivariate singling-out query selects, (rows, queries): the queries
    anonymeter's ``SinglingOutEvaluator(seed=seed)`` draws from ``synthetic`` (same generator, same
    order), before it keeps those that single out a training row."""
    import polars as pl
    from anonymeter.evaluators import singling_out_evaluator as so

    syn = pl.DataFrame(so._safe_column_names(synthetic)).unique(maintain_order=True)
    queries = so._generate_singling_out_queries(df=syn, n_attacks=n_attacks, n_cols=n_cols, mode="multivariate",
                                                max_attempts=max_attempts, rng=np.random.default_rng(seed))
    if not queries:
        return np.zeros((len(rows), 0), dtype=bool)
    frame = pl.DataFrame(so._safe_column_names(rows))
    picked = frame.select([q.fill_null(False).cast(pl.Boolean).alias(f"q{i}") for i, q in enumerate(queries)])
    return picked.to_numpy().astype(bool)


def link_success(rows: pd.DataFrame, synthetic: pd.DataFrame, aux: tuple[list[str], list[str]]) -> np.ndarray:
    """Per row: does anonymeter's linkability attack (nearest synthetic row on each half of the
    columns, one neighbour) link its two halves, i.e. find the same synthetic row for both."""
    from anonymeter.evaluators import linkability_evaluator as lk

    first = lk._find_nn(syn=synthetic[aux[0]], ori=rows[aux[0]], n_jobs=1, n_neighbors=1)
    second = lk._find_nn(syn=synthetic[aux[1]], ori=rows[aux[1]], n_jobs=1, n_neighbors=1)
    return first[:, 0] == second[:, 0]


def inference_success(rows: pd.DataFrame, synthetic: pd.DataFrame, *, aux: list[str], secret: str,
                      regression: bool) -> np.ndarray:
    """Per row: does anonymeter's inference attack (the secret of the nearest synthetic row on the
    auxiliary columns) guess the row's secret."""
    import anonymeter.evaluators  # noqa: F401  (import order: breaks a circular import)
    from anonymeter.evaluators.inference_evaluator import evaluate_inference_guesses
    from anonymeter.neighbors.mixed_types_kneighbors import KNNInferencePredictor

    guesses = KNNInferencePredictor(data=synthetic, columns=aux, target_col=secret, n_jobs=1).predict(rows)
    return np.asarray(evaluate_inference_guesses(guesses.reindex_like(rows), rows[secret], regression=regression),
                      dtype=bool)

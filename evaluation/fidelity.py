"""Fidelity: how alike the synthetic and the real training rows are.

* sdmetrics' single-table ``QualityReport``: overall score, Column Shapes (KS / TV complement per column)
  and Column Pair Trends (correlation / contingency similarity per pair), all in [0, 1], 1 = identical.
* Detection: ROC-AUC of a gradient-boosted classifier that tells real from synthetic rows, by
  stratified cross-validation. 0.5 = indistinguishable, 1.0 = trivially told apart.

Both run on row subsamples (``max_rows_quality``, ``max_rows_detection`` per side) to stay fast; the
column-pair part of sdmetrics is quadratic in columns and dominates its cost.

Called directly (not through ``evaluate_site``), wrap calls in ``threadpoolctl.threadpool_limits(1)`` on
busy machines: OpenMP workers that share busy cores spin (see ``EvaluationOptions.n_threads``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from evaluation._tables import Kinds, OrdinalCodes, sdv_metadata, subsample


@dataclass(frozen=True)
class ColumnScore:
    column: str
    metric: str
    score: float


@dataclass(frozen=True)
class PairScore:
    """Similarity of one column pair's association; ``real``/``synthetic`` are the association figures."""

    column_1: str
    column_2: str
    metric: str
    score: float
    real: float | None
    synthetic: float | None


@dataclass(frozen=True)
class Association:
    """Cramer's V of one column pair (numbers cut into quintiles of the real rows), real and synthetic."""

    column_1: str
    column_2: str
    real: float
    synthetic: float


@dataclass(frozen=True)
class FidelityResult:
    quality: float
    column_shapes: float
    column_pair_trends: float | None
    detection_auc: float
    column_scores: tuple[ColumnScore, ...]
    pair_scores: tuple[PairScore, ...]  # sdmetrics scores only pairs whose real association is notable
    associations: tuple[Association, ...]  # every pair: the correlation-difference heatmap
    n_rows_quality: int
    n_rows_detection: int
    timings: tuple[tuple[str, float], ...] = ()  # seconds per part

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def quality_report(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Kinds):
    """Run sdmetrics' QualityReport on plain frames; returns (overall, shapes, pairs, column scores, pair scores)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sdmetrics announces the single-table report's future move
        from sdmetrics.reports.single_table import QualityReport

        report = QualityReport()
        report.generate(real[kinds.columns], synthetic[kinds.columns], sdv_metadata(kinds), verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    shapes = report.get_details("Column Shapes")
    cols = tuple(
        ColumnScore(str(r["Column"]), str(r["Metric"]), float(r["Score"]))
        for _, r in shapes.iterrows() if _num(r["Score"]) is not None
    )
    pairs_df = report.get_details("Column Pair Trends")
    pairs = []
    for _, r in pairs_df.iterrows():
        score = _num(r.get("Score"))
        if score is None:
            continue
        # Numerical pairs report a correlation; mixed/categorical pairs an association (Cramer's V).
        real_v = _num(r.get("Real Correlation"))
        synth_v = _num(r.get("Synthetic Correlation"))
        if real_v is None:
            real_v = _num(r.get("Real Association"))
        pairs.append(PairScore(str(r["Column 1"]), str(r["Column 2"]), str(r["Metric"]), score, real_v, synth_v))
    pair_trend = _num(props.get("Column Pair Trends"))
    return float(report.get_score()), float(props["Column Shapes"]), pair_trend, cols, tuple(pairs)


def _codes(real: pd.Series, synth: pd.Series, numerical: bool, bins: int = 5) -> tuple[np.ndarray, np.ndarray, int]:
    """Both columns as small integer codes: quintiles of the real rows, or the 20 commonest levels."""
    if numerical:
        r = real.to_numpy(dtype="float64")
        ok = r[~np.isnan(r)]
        edges = np.unique(np.percentile(ok, np.linspace(0, 100, bins + 1)[1:-1])) if len(ok) else np.array([])

        def enc(s):
            x = s.to_numpy(dtype="float64")
            return np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right"))
        return enc(real), enc(synth), len(edges) + 2
    levels = {v: i for i, v in enumerate(real.value_counts().index[:20])}

    def enc(s):
        mapped = s.map(levels).to_numpy(dtype="float64")  # unknown level -> other, missing -> its own code
        return np.where(np.isnan(mapped), np.where(s.isna(), len(levels) + 1, len(levels)), mapped).astype("int64")
    return enc(real), enc(synth), len(levels) + 2


def _cramers_v(a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> float:
    table = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype("float64")
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    n = table.sum()
    if n == 0 or min(table.shape) < 2:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def associations(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Kinds) -> tuple[Association, ...]:
    """Cramer's V of every column pair in the real and in the synthetic rows (one uniform measure for
    numerical, categorical and mixed pairs, so their differences are comparable on one heatmap)."""
    cols = kinds.columns
    codes = {c: _codes(real[c], synthetic[c], c in kinds.numerical) for c in cols}
    out = []
    for i, a in enumerate(cols):
        ra, sa, ka = codes[a]
        for b in cols[i + 1:]:
            rb, sb, kb = codes[b]
            out.append(Association(a, b, round(_cramers_v(ra, rb, ka, kb), 4), round(_cramers_v(sa, sb, ka, kb), 4)))
    return tuple(out)


def detection_auc(real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Kinds, *, seed: int, folds: int = 3) -> float:
    """Cross-validated ROC-AUC of a classifier separating real (0) from synthetic (1) rows."""
    codes = OrdinalCodes(kinds).fit(real, synthetic)
    x = np.vstack([codes.transform(real), codes.transform(synthetic)])
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    folds = max(2, min(folds, len(real), len(synthetic)))
    model = HistGradientBoostingClassifier(
        max_iter=100, categorical_features=codes.categorical_mask(), early_stopping=False, random_state=seed
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for fit_rows, test_rows in cv.split(x, y):
        x_fit, x_test = x[fit_rows], x[test_rows]
        # A column missing on every fitting row carries nothing to split on, but the gradient-boosting
        # binner fails on it (scikit-learn 1.9: "window shape cannot be larger than input array
        # shape"); seen at a hospital that records no cholesterol, against a table that almost never
        # does either. Such a column is set to 0 in this fold; every other fold and column is as is.
        empty = np.isnan(x_fit).all(axis=0)
        if empty.any():
            x_fit, x_test = x_fit.copy(), x_test.copy()
            x_fit[:, empty], x_test[:, empty] = 0.0, 0.0
        model.fit(x_fit, y[fit_rows])
        scores.append(roc_auc_score(y[test_rows], model.decision_function(x_test)))
    return float(np.mean(scores))


def evaluate_fidelity(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    kinds: Kinds,
    *,
    seed: int = 0,
    max_rows_quality: int = 5000,
    max_rows_detection: int = 5000,
    detection_folds: int = 3,
) -> FidelityResult:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    rq, sq = subsample(real, max_rows_quality, rng), subsample(synthetic, max_rows_quality, rng)
    overall, shapes, pairs_score, cols, pairs = quality_report(rq, sq, kinds)
    assoc = associations(rq, sq, kinds)
    t1 = time.perf_counter()
    n_det = min(len(real), len(synthetic), max_rows_detection)
    rd, sd = subsample(real, n_det, rng), subsample(synthetic, n_det, rng)
    auc = detection_auc(rd, sd, kinds, seed=seed, folds=detection_folds)
    t2 = time.perf_counter()
    return FidelityResult(
        quality=overall, column_shapes=shapes, column_pair_trends=pairs_score, detection_auc=auc,
        column_scores=cols, pair_scores=pairs, associations=assoc, n_rows_quality=min(len(rq), len(sq)), n_rows_detection=n_det,
        timings=(("quality_report", t1 - t0), ("detection", t2 - t1)),
    )

"""Empirical privacy auditing: a statistical lower bound on a mechanism's epsilon from its outputs.

An (epsilon, delta)-DP mechanism M bounds every test that tells a table D from a neighbour D' (D plus
one record) from M's output: for any rejection region S, ``P[M(D) in S] <= e^eps P[M(D') in S] + delta``
and the same with D and D' swapped. A threshold test on an attacker's statistic (guess "D'" when
``s >= t``) has a false-positive rate FPR = P[s >= t | D] and a false-negative rate
FNR = P[s < t | D']; the inequalities give

    eps >= log((1 - delta - FNR) / FPR)    and    eps >= log((1 - delta - FPR) / FNR).

Run the mechanism many times on each side, and these rates are binomial proportions: replacing them by
one-sided Clopper-Pearson upper bounds turns the inequality into a lower bound on epsilon that holds
with the stated confidence (Jagielski, Ullman, Oprea 2020; Nasr et al. 2021). A mechanism whose
lower bound exceeds the epsilon its ledger claims is broken (with that confidence).

Choosing the best threshold, orientation and statistic on the same runs that bound it would overstate
the bound (the maximum over many tests picks the lucky one). Here the runs are split: the first half
of each side chooses the test, the second half bounds its rates, each at (1 - confidence) / 2, so the
two bounds hold together with the stated confidence.

Pure functions over arrays of statistics; no mechanism, no I/O (``tests/test_dp_attacks.py`` and
``benchmarks/bench_dp_audit.py`` run the mechanisms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

MAX_THRESHOLDS = 256  # candidate thresholds per statistic in the selection half (its quantiles)


@dataclass(frozen=True)
class AuditResult:
    """The audit's lower bound on epsilon and the test that gave it (rates measured on the bounding half).

    ``statistic``: column of the statistics that won the selection; ``direction``: +1 guesses D' when
    the statistic is at least ``threshold``, -1 when it is below; ``fpr`` / ``fnr``: the test's observed
    rates on the bounding half, ``fpr_upper`` / ``fnr_upper`` their Clopper-Pearson upper bounds."""

    epsilon_lower: float
    statistic: int
    threshold: float
    direction: int
    fpr: float
    fnr: float
    fpr_upper: float
    fnr_upper: float
    runs: tuple[int, int]
    confidence: float


def clopper_pearson_upper(k, n: int, *, alpha: float):
    """One-sided upper confidence bound(s) at level ``1 - alpha`` on a proportion seen ``k`` times in
    ``n`` (``k`` a whole number or an array of them)."""
    k = np.asarray(k, dtype=np.float64)
    if n <= 0:
        return np.ones_like(k) if k.ndim else 1.0
    full = k >= n
    out = np.where(full, 1.0, beta.ppf(1.0 - alpha, np.minimum(k, n - 1) + 1, np.maximum(n - k, 1)))
    return out if out.ndim else float(out)


def epsilon_from_rates(fpr, fnr, *, delta: float):
    """The largest epsilon a test with these (upper-bounded) error rates proves, 0 when none (works
    elementwise on arrays)."""
    a, b = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.where((a > 0) & (1.0 - delta - b > 0), np.log((1.0 - delta - b) / a), 0.0)
        two = np.where((b > 0) & (1.0 - delta - a > 0), np.log((1.0 - delta - a) / b), 0.0)
    out = np.maximum(np.maximum(one, two), 0.0)
    return out if out.ndim else float(out)


def _thresholds(values: np.ndarray) -> np.ndarray:
    """Candidate thresholds: midway between consecutive distinct values (at most ``MAX_THRESHOLDS``
    quantiles of them), and one beyond each end."""
    v = np.unique(values)
    if v.size > MAX_THRESHOLDS:
        v = np.unique(np.quantile(v, np.linspace(0, 1, MAX_THRESHOLDS)))
    if v.size == 1:
        return np.array([v[0] - 1.0, v[0] + 1.0])
    mid = (v[:-1] + v[1:]) / 2
    return np.concatenate([[v[0] - (v[1] - v[0])], mid, [v[-1] + (v[-1] - v[-2])]])


def _errors(without: np.ndarray, with_: np.ndarray, thresholds: np.ndarray, direction: int):
    """False positives (guess D' on a D run) and false negatives per threshold, for one orientation."""
    w, v = np.sort(without), np.sort(with_)
    if direction > 0:  # guess D' when s >= t
        fp = w.size - np.searchsorted(w, thresholds, side="left")
        fn = np.searchsorted(v, thresholds, side="left")
    else:  # guess D' when s < t
        fp = np.searchsorted(w, thresholds, side="left")
        fn = v.size - np.searchsorted(v, thresholds, side="left")
    return fp, fn


def _bound(fp, fn, n_without: int, n_with: int, *, alpha: float, delta: float):
    """Epsilon proved by tests with these error counts, both rates bounded at ``alpha / 2`` each."""
    a = clopper_pearson_upper(fp, n_without, alpha=alpha / 2)
    b = clopper_pearson_upper(fn, n_with, alpha=alpha / 2)
    return epsilon_from_rates(a, b, delta=delta), a, b


def empirical_epsilon(without, with_, *, delta: float, confidence: float = 0.95) -> AuditResult:
    """A lower bound on epsilon, holding with ``confidence``, from the attacker's statistics on runs
    without the record (``without``) and with it (``with_``): arrays of shape (runs,) or (runs, k) for
    k statistics the attacker computes from each output. Runs on each side must be independent."""
    if not 0 < confidence < 1:
        raise ValueError(f"The 'confidence' parameter of empirical_epsilon must be in (0, 1). Got {confidence!r} instead.")
    w = np.asarray(without, dtype=np.float64)
    v = np.asarray(with_, dtype=np.float64)
    w = w[:, None] if w.ndim == 1 else w
    v = v[:, None] if v.ndim == 1 else v
    if w.shape[1] != v.shape[1] or min(len(w), len(v)) < 4:
        raise ValueError(f"empirical_epsilon needs at least 4 runs per side and the same statistics on both "
                         f"sides. Got shapes {w.shape} and {v.shape} instead.")
    alpha = 1.0 - confidence
    hw, hv = len(w) // 2, len(v) // 2
    sel_w, sel_v, bnd_w, bnd_v = w[:hw], v[:hv], w[hw:], v[hv:]
    # Selection half: the test whose own Clopper-Pearson bound is best there.
    best = (-1.0, 0, 0.0, 1)
    for j in range(w.shape[1]):
        thresholds = _thresholds(np.concatenate([sel_w[:, j], sel_v[:, j]]))
        for direction in (1, -1):
            fp, fn = _errors(sel_w[:, j], sel_v[:, j], thresholds, direction)
            eps, _, _ = _bound(fp, fn, hw, hv, alpha=alpha, delta=delta)
            # Of equally good thresholds the middle one: the widest margin on the bounding half.
            tied = np.flatnonzero(eps >= eps.max() - 1e-12)
            i = int(tied[len(tied) // 2])
            if eps[i] > best[0]:
                best = (float(eps[i]), j, float(thresholds[i]), direction)
    _, j, t, direction = best
    fp, fn = _errors(bnd_w[:, j], bnd_v[:, j], np.array([t]), direction)
    n_w, n_v = len(bnd_w), len(bnd_v)
    eps, a, b = _bound(fp, fn, n_w, n_v, alpha=alpha, delta=delta)
    return AuditResult(epsilon_lower=float(eps[0]), statistic=j, threshold=t, direction=direction,
                       fpr=float(fp[0]) / n_w, fnr=float(fn[0]) / n_v, fpr_upper=float(a[0]), fnr_upper=float(b[0]),
                       runs=(len(w), len(v)), confidence=confidence)

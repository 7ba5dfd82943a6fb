"""Mode-specific normalisation (CTGAN) fitted from a merged histogram, never from rows.

A Gaussian mixture with a sparse Dirichlet prior on its weights (MAP EM, see :func:`fit_mixture`;
CTGAN uses scikit-learn's variational ``BayesianGaussianMixture``, which on 4,000 points took ~2 s
per column here, against milliseconds for EM over <= 200 weighted cells) is fitted to the merged
histogram, so the fit costs the same for 900 rows or 9 million.
Encoding of a value x: its mode k (the most probable component, or one drawn from the posterior
when an ``rng`` is given, as CTGAN does for training) as a one-hot span, and
``(x - mean_k) / (4 std_k)`` clipped to [-1, 1] as a tanh span; nullable columns with missing
values get a 2-way missing indicator span ([present, missing]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls
from scipy.special import ndtr

from fedtab.errors import check_is_fitted
from fedtab.schema import ColumnSpec
from fedtab.transform.plan import ROUNDING_MIX, ROUNDING_STEPS
from fedtab.transform.spans import SpanInfo

STD_MULTIPLIER = 4.0
# Under DP the mixture is fitted by least squares to the raw noisy counts when the noise that clipping
# would leave in the cells (E[max(0, N(0, sd))] = 0.4 sd per cell) exceeds this share of the rows, and
# by EM on the norm-subbed counts otherwise. The heart hospitals at epsilon 1 (735 rows, sd 57, 40
# cells: 124%) need the former; on Adult (26,000 rows: 4%) EM's many sharp modes encode better for the
# networks although they fit the counts no better (TVAE at epsilon 1: quality 0.84 with EM, 0.78 with
# least squares; a wide least-squares mode spread education and hours over their range).
NOISE_MASS = 0.4
NOISE_MASS_SHARE = 0.1


def has_missing_slot(spec, *, missing: float, noise_sd: float) -> bool:
    """Whether a column's encoding gets a 'missing' slot.

    Without DP the merged count is exact: a slot when any value is missing. Under DP a nullable column
    always gets one: at small sites the noisy missing count cannot tell a column with 60% missing
    values from one with none (measured: the heart hospitals at epsilon 0.1 lost every missing slot,
    so no synthetic row could be missing). The slot costs one output unit; DP-SGD learns the share.
    A significant noisy count on a column declared not nullable is left to validation, not encoded.
    """
    if not spec.nullable:
        return False
    if noise_sd > 0:
        return True
    return missing > 0


def histogram_points(edges: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """``n`` points at the (i + 0.5)/n quantiles of the histogram, linear inside each cell (pure)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        counts, total = np.ones_like(counts), float(len(counts))
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    return np.interp((np.arange(n) + 0.5) / n, cdf, edges)


def fit_mixture(edges, counts, *, max_modes: int, weight_threshold: float, n_iter: int = 300,
                weight_prior: float = 1e-3, tol: float = 1e-7, spread_point_masses: bool = True):
    """(means, stds, weights) of a Gaussian mixture fitted to a histogram (pure; deterministic).

    Weighted EM over the cells, each cell treated as uniform (its within-cell variance width^2/12
    is added: Sheppard's correction), with a sparse Dirichlet(``weight_prior``) prior on the weights
    (MAP): components that explain less than about one record die, and at the end those under
    ``weight_threshold`` are dropped, as CTGAN drops Bayesian-mixture modes under 0.005. Cost is
    O(cells x modes x iterations), independent of the number of rows. ``spread_point_masses``: see
    ``_initial_means`` (off: every mode starts at a quantile of the counts, and modes that converge
    onto one point stay separate; on: they merge).
    """
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    if counts.sum() <= 0:
        counts = np.ones_like(counts)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    keep = counts > 0
    c, within, total = centres[keep], widths[keep] ** 2 / 12.0, counts.sum()
    p = counts[keep] / total
    k = max(1, min(max_modes, int(keep.sum())))
    means = _initial_means(edges, counts, k, spread=spread_point_masses)
    var_floor = (0.1 * widths.min()) ** 2
    variances = np.full(k, max(((edges[-1] - edges[0]) / (2 * k)) ** 2, var_floor))
    weights = np.full(k, 1.0 / k)
    last = -np.inf
    for _ in range(n_iter):
        ll = np.log(weights)[None, :] - 0.5 * np.log(variances)[None, :] \
            - 0.5 * ((c[:, None] - means[None, :]) ** 2 + within[:, None]) / variances[None, :]
        top = ll.max(axis=1, keepdims=True)
        resp = np.exp(ll - top)
        norm = resp.sum(axis=1, keepdims=True)
        loglik = float(np.sum(p * (np.log(norm[:, 0]) + top[:, 0])))
        rw = resp / norm * p[:, None]
        nk = rw.sum(axis=0)
        alive = nk * total + weight_prior - 1 > 0
        if not alive.any():
            alive = nk == nk.max()
        rw, nk = rw[:, alive], nk[alive]
        means = (rw * c[:, None]).sum(axis=0) / nk
        variances = np.maximum((rw * ((c[:, None] - means) ** 2 + within[:, None])).sum(axis=0) / nk, var_floor)
        weights = np.maximum(nk * total + weight_prior - 1, 1e-12)
        weights /= weights.sum()
        if abs(loglik - last) < tol:
            break
        last = loglik
    if spread_point_masses:  # under DP, merging the copies on a point mass also cost quality (see above)
        means, variances, weights = _merge_identical(means, variances, weights)
    return _prune_and_sort(means, np.sqrt(variances), weights, weight_threshold)


def _prune_and_sort(means, stds, weights, weight_threshold: float):
    """Drop the modes at or under ``weight_threshold`` (the heaviest stays), renormalise, sort by mean."""
    big = weights > weight_threshold
    if not big.any():
        big = weights == weights.max()
    order = np.argsort(means[big])
    w = weights[big] / weights[big].sum()
    return means[big][order], stds[big][order], w[order]


def fit_mixture_noisy(edges, counts, *, noise_sd: float, rows: float, max_modes: int, weight_threshold: float,
                      penalty: float | None = None, restarts: int = 3, seed: int = 0):
    """(means, stds, weights) of a Gaussian mixture fitted to a DP-noised histogram (pure; deterministic).

    EM on such counts must first clip the negative ones to zero, and every empty cell then keeps its
    positive noise: at epsilon 1 on the four heart hospitals (noise sd ~57 records per cell against
    735 rows over 40 cells) that invented ~30% of the mass, as modes of 5-20% weight where no record
    lies (blood pressure 265, age 29). Here the counts stay unclipped and the mixture is the
    least-squares fit of ``rows`` x its cell probabilities to them (the maximum-likelihood fit under
    Gaussian noise of known sd; ``rows``, the number of non-missing records the histogram counts as
    estimated across columns by ``statistics.histogram_rows``, is held fixed: fitted too, it shrank onto
    the tallest cell). k = 1..``max_modes`` components, k chosen by residual sum of squares / sd^2 plus
    ``penalty`` (default ln(cells): BIC) per parameter: a mode is kept only where the counts show it
    above the noise (a lone 3-sigma noise spike still can be; twice the penalty measured no better on
    the heart columns and lost the point mass of ST depression in the demo). New modes start at the
    worst-fitted cell of the previous fit, so a point mass is found. Measured on the five heart numerical
    columns with simulated noise of that size (40 draws): KS complement 0.66 -> 0.77, mass outside the
    real range 31% -> 5%.
    Post-processing of released counts: no privacy cost.
    """
    edges = np.asarray(edges, dtype=np.float64)
    y = np.asarray(counts, dtype=np.float64)
    sd = float(noise_sd)
    n = max(float(rows), 1.0)
    lo, hi = float(edges[0]), float(edges[-1])
    widths = np.diff(edges)
    penalty = np.log(max(len(y), 2)) if penalty is None else float(penalty)
    positive = np.clip(y, 0.0, None)
    if positive.sum() <= 0:
        positive = np.ones_like(y)
    cdf = np.concatenate([[0.0], np.cumsum(positive) / positive.sum()])
    rng = np.random.default_rng(seed)
    log_s_lo, log_s_hi = np.log(0.3 * widths.min()), np.log(hi - lo)

    def unpack(x, k):
        a = x[2 * k:]
        w = np.exp(a - a.max())
        return x[:k], np.exp(x[k:2 * k]), w / w.sum()

    def residuals(x, k):
        m, s, w = unpack(x, k)
        z = ndtr((edges[None, :] - m[:, None]) / s[:, None])
        return (y - n * (w[:, None] * np.diff(z, axis=1)).sum(axis=0)) / sd

    best, best_score, worse, previous = None, np.inf, 0, None
    for k in range(1, max(1, max_modes) + 1):
        lb = np.r_[np.full(k, lo), np.full(k, log_s_lo), np.full(k, -20.0)]
        ub = np.r_[np.full(k, hi), np.full(k, log_s_hi), np.full(k, 20.0)]
        starts = [np.r_[np.interp((np.arange(k) + 0.5) / k, cdf, edges), np.full(k, np.log((hi - lo) / (4 * k))),
                        np.zeros(k)]]
        if previous is not None:
            # Greedy: the best k-1 fit plus a narrow mode on its worst-fitted cell (a point mass such as
            # ST depression's 0, 40% of the heart rows, is out of reach of wide starting modes).
            m, s, w = unpack(previous, k - 1)
            worst = int(np.argmax(residuals(previous, k - 1)))
            starts.append(np.r_[m, (edges[worst] + edges[worst + 1]) / 2, np.log(s), np.log(widths[worst] / 2),
                                np.log(w), np.log(max(y[worst], 1.0) / n)])
        starts += [np.r_[np.interp(np.sort(rng.random(k)), cdf, edges), np.full(k, np.log((hi - lo) / (4 * k))),
                         np.zeros(k)] for _ in range(max(restarts - len(starts), 0))]
        fit = None
        for x0 in starts:
            sol = least_squares(residuals, np.clip(x0, lb + 1e-9, ub - 1e-9), bounds=(lb, ub), args=(k,))
            rss = float(np.sum(sol.fun ** 2))
            if fit is None or rss < fit[0]:
                fit = (rss, sol.x)
        previous = fit[1]
        score = fit[0] + penalty * (3 * k - 1)
        if score < best_score:
            best, best_score, worse = unpack(fit[1], k), score, 0
        else:
            worse += 1
            if worse >= 2:  # two more modes bought nothing: larger k will not either
                break
    return _prune_and_sort(*best, weight_threshold)


def _initial_means(edges: np.ndarray, counts: np.ndarray, k: int, *, spread: bool = True) -> np.ndarray:
    """``k`` starting means at quantiles of the histogram, except that a cell holding several of them
    (a point mass) keeps one and the others go to quantiles of the mass outside such cells.

    At plain quantiles a point mass took most of the modes (Adult's capital gain, 0 in 92% of rows:
    9 of 10 modes started, and stayed, at 0, and one mode of std 22,500 held every other value, so no
    model could tell a gain of 3,000 from one of 15,000, the split that decides income). Starting at
    quantiles of square-rooted counts instead fixed that but, under DP, sent modes into cells of pure
    noise (Adult at epsilon 1, CTGAN: quality 0.83 -> 0.77-0.79), and so did moving only the surplus
    modes (0.79-0.81), and so did merging the modes that sat on one point (0.80-0.81; 0.82-0.84 with
    neither, 2 training seeds each): the encoder spreads point masses only for exact (non-DP) histograms."""
    total = counts.sum()
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    means = np.interp((np.arange(k) + 0.5) / k, cdf, edges)
    if not spread:
        return means
    cells = np.clip(np.searchsorted(edges, means, side="right") - 1, 0, len(counts) - 1)
    held = np.bincount(cells, minlength=len(counts))
    heavy = np.flatnonzero(held > 1)
    rest = counts.copy()
    rest[heavy] = 0.0
    if heavy.size == 0 or rest.sum() <= 0:
        return means
    kept = np.concatenate([(edges[heavy] + edges[heavy + 1]) / 2, means[held[cells] == 1]])
    surplus = k - kept.size
    cdf_rest = np.concatenate([[0.0], np.cumsum(rest) / rest.sum()])
    return np.sort(np.concatenate([kept, np.interp((np.arange(surplus) + 0.5) / surplus, cdf_rest, edges)]))


def _merge_identical(means, variances, weights, rtol: float = 1e-6):
    """Components that converged onto the same point (same mean and variance) become one."""
    order = np.lexsort((variances, means))
    means, variances, weights = means[order], variances[order], weights[order]
    scale = max(float(np.abs(means).max()) if means.size else 0.0, 1.0)
    keep_m, keep_v, keep_w = [means[0]], [variances[0]], [weights[0]]
    for m, v, w in zip(means[1:], variances[1:], weights[1:]):
        if abs(m - keep_m[-1]) <= rtol * scale and abs(v - keep_v[-1]) <= rtol * max(v, keep_v[-1]):
            keep_w[-1] += w
        else:
            keep_m.append(m), keep_v.append(v), keep_w.append(w)
    return np.array(keep_m), np.array(keep_v), np.array(keep_w)


def mode_log_likelihood(x: np.ndarray, means, stds, weights) -> np.ndarray:
    """log(w_k N(x; mean_k, std_k)) for each value (rows) and mode (columns)."""
    z = (x[:, None] - means[None, :]) / stds[None, :]
    return np.log(weights)[None, :] - np.log(stds)[None, :] - 0.5 * z * z


class NumericalColumnTransformer:
    """One numerical or datetime column. ``fit_from_histogram`` returns self; learned attrs end in ``_``."""

    def __init__(self, spec: ColumnSpec, *, max_modes: int = 10, weight_threshold: float = 0.005):
        self.spec = spec
        self.max_modes = max_modes
        self.weight_threshold = weight_threshold

    def fit_from_histogram(self, edges, counts, *, lower: float, upper: float, missing: float = 0.0,
                           noise_sd: float = 0.0, rows: float | None = None, raw_counts=None):
        """Fit from merged cell ``counts`` over ``edges``, the column's ``lower``/``upper`` bounds and the
        merged ``missing`` count; ``noise_sd`` (0 without DP) is the noise of those counts, and under DP
        ``rows`` (default: the counts' sum) the estimated number of non-missing values they count and
        ``raw_counts`` the noisy counts before norm-sub.

        EM (:func:`fit_mixture`) on exact counts, and on norm-subbed noisy ones where the noise is small
        against the rows; least squares on the raw counts (:func:`fit_mixture_noisy`) where it is not
        (see ``NOISE_MASS_SHARE``)."""
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        self.rounding_ = None  # fit_rounding sets it
        rows = float(counts.sum()) if rows is None else float(rows)
        if noise_sd > 0 and raw_counts is not None and NOISE_MASS * noise_sd * len(counts) > NOISE_MASS_SHARE * rows:
            self.means_, self.stds_, self.weights_ = fit_mixture_noisy(
                edges, np.asarray(raw_counts, dtype=np.float64), noise_sd=noise_sd, rows=rows,
                max_modes=self.max_modes, weight_threshold=self.weight_threshold)
        else:  # point masses are spread only on exact counts (see _initial_means)
            self.means_, self.stds_, self.weights_ = fit_mixture(
                edges, counts, max_modes=self.max_modes, weight_threshold=self.weight_threshold,
                spread_point_masses=noise_sd == 0)
        self.lower_, self.upper_ = float(lower), float(upper)
        total = rows + missing
        self.missing_share_ = missing / total if total > 0 else 0.0
        self.has_missing_ = has_missing_slot(self.spec, missing=missing, noise_sd=noise_sd)
        return self

    def fit_rounding(self, counts, *, step: float, noise_sd: float = 0.0) -> "NumericalColumnTransformer":
        """Learn how decoded values round from a rounding profile (``statistics.rounding_counts``: how many
        values are multiples of 10, 5, 2 grid steps ``step``, or none). A value rounded to a multiple of
        5 steps is one of 10 half the time, and an unrounded one lands in the four classes with shares
        (0.1, 0.1, 0.4, 0.4): the probabilities of rounding to 10, 5, 2 or 1 steps are the non-negative
        least-squares solution that reproduces the profile's shares. Under DP (``noise_sd`` > 0, the
        noise of each count) a class keeps its departure from those natural shares only when it exceeds
        twice the noise: at the heart hospitals' size (sd ~120 against ~735 values) noise alone had
        put 15% of the synthetic ages on multiples of 5."""
        p = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
        if p.sum() <= 0:
            self.rounding_ = None
            return self
        if noise_sd > 0:
            natural = p.sum() * ROUNDING_MIX[:, -1]
            p = np.where(np.abs(p - natural) > 2.0 * noise_sd, p, natural)
        q = np.clip(nnls(ROUNDING_MIX, p / p.sum())[0], 0.0, None)
        self.rounding_ = (q / q.sum() if q.sum() > 0 else np.array([0.0, 0.0, 0.0, 1.0]), float(step))
        return self

    def apply_rounding(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Round each present value to a multiple of 10, 5, 2 or 1 grid steps, drawn with the learned
        probabilities, inside the bounds (no-op when no profile was learned)."""
        if getattr(self, "rounding_", None) is None:
            return values
        q, step = self.rounding_
        out = np.asarray(values, dtype=np.float64).copy()
        present = np.flatnonzero(~np.isnan(out))
        unit = np.asarray(ROUNDING_STEPS, dtype=np.float64)[rng.choice(len(q), size=present.size, p=q)] * step
        rounded = np.round(out[present] / unit) * unit
        # A multiple beyond a bound moves one unit inwards; if that one is out too, the value stays.
        rounded = np.where(rounded > self.upper_, rounded - unit, rounded)
        rounded = np.where(rounded < self.lower_, rounded + unit, rounded)
        ok = (rounded >= self.lower_) & (rounded <= self.upper_)
        out[present] = np.where(ok, rounded, out[present])
        return out

    @property
    def spans(self) -> list[SpanInfo]:
        check_is_fitted(self, "means_")
        out = [SpanInfo(1, "tanh", self.spec.name, "value"), SpanInfo(len(self.means_), "softmax", self.spec.name, "mode")]
        if self.has_missing_:
            out.append(SpanInfo(2, "softmax", self.spec.name, "missing"))
        return out

    @property
    def output_dim(self) -> int:
        return sum(s.dim for s in self.spans)

    def transform(self, x: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """float64 values (NaN = missing) -> float32 block [value, modes..., (present, missing)]."""
        check_is_fitted(self, "means_")
        k = len(self.means_)
        missing = np.isnan(x)
        v = np.clip(np.where(missing, self.means_[np.argmax(self.weights_)], x), self.lower_, self.upper_)
        ll = mode_log_likelihood(v, self.means_, self.stds_, self.weights_)
        if rng is None:
            mode = np.argmax(ll, axis=1)
        else:
            p = np.exp(ll - ll.max(axis=1, keepdims=True))
            cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
            mode = np.minimum((cum < rng.random((len(v), 1))).sum(axis=1), k - 1)
        out = np.zeros((len(v), self.output_dim), dtype=np.float32)
        norm = (v - self.means_[mode]) / (STD_MULTIPLIER * self.stds_[mode])
        out[:, 0] = np.clip(np.where(missing, 0.0, norm), -1.0, 1.0)
        out[np.arange(len(v)), 1 + mode] = 1.0
        if self.has_missing_:
            out[:, 1 + k] = ~missing
            out[:, 2 + k] = missing
        return out

    def inverse_transform(self, block: np.ndarray) -> np.ndarray:
        """float block -> float64 values (NaN = missing), clipped inside the bounds."""
        v, score = self.decode_parts(block)
        if score is not None:
            v[score > 0] = np.nan
        return v

    def decode_parts(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float block -> (the value every row would have if present, clipped inside the bounds; the
        row's missing score, missing minus present output, > 0 decodes as missing; None without a slot)."""
        check_is_fitted(self, "means_")
        k = len(self.means_)
        mode = np.argmax(block[:, 1:1 + k], axis=1)
        v = np.clip(block[:, 0].astype(np.float64), -1.0, 1.0) * STD_MULTIPLIER * self.stds_[mode] + self.means_[mode]
        v = np.clip(v, self.lower_, self.upper_)
        score = (block[:, 2 + k] - block[:, 1 + k]).astype(np.float64) if self.has_missing_ else None
        return v, score

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "means_")
        return {"kind": "numerical", "column": self.spec.name, "max_modes": self.max_modes,
                "weight_threshold": self.weight_threshold,
                "means": self.means_, "stds": self.stds_, "weights": self.weights_,
                "lower": self.lower_, "upper": self.upper_, "missing_share": self.missing_share_,
                "has_missing": int(self.has_missing_),
                **({} if getattr(self, "rounding_", None) is None else
                   {"rounding": self.rounding_[0], "rounding_step": self.rounding_[1]})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], spec: ColumnSpec) -> "NumericalColumnTransformer":
        self = cls(spec, max_modes=int(data["max_modes"]), weight_threshold=float(data["weight_threshold"]))
        self.means_ = np.asarray(data["means"], dtype=np.float64)
        self.stds_ = np.asarray(data["stds"], dtype=np.float64)
        self.weights_ = np.asarray(data["weights"], dtype=np.float64)
        self.lower_, self.upper_ = float(data["lower"]), float(data["upper"])
        self.missing_share_ = float(data["missing_share"])
        self.has_missing_ = bool(data["has_missing"])
        self.rounding_ = None if "rounding" not in data else (np.asarray(data["rounding"], dtype=np.float64),
                                                               float(data["rounding_step"]))
        return self

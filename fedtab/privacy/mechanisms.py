"""Noise calibration and post-processing: pure functions of plain values (no I/O, no randomness).

The noise itself is drawn in one place only, :mod:`fedtab.privacy.secret` (operating-system
entropy, never a seed): a mechanism whose noise a seed could replay is no mechanism.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from fedtab.errors import ConfigError


def _check_positive(name: str, value: float, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ConfigError(f"The '{name}' parameter of {owner} must be a float in (0, inf). Got {value!r} instead.")


def _check_delta(delta: float, owner: str) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0 < delta < 1):
        raise ConfigError(f"The 'delta' parameter of {owner} must be a float in (0, 1). Got {delta!r} instead.")


def laplace_scale(epsilon: float, sensitivity: float) -> float:
    """Scale b = sensitivity / epsilon of the pure epsilon-DP Laplace mechanism (L1 sensitivity)."""
    _check_positive("epsilon", epsilon, "laplace_scale")
    _check_positive("sensitivity", sensitivity, "laplace_scale")
    return sensitivity / epsilon


def gaussian_delta(sigma: float, *, epsilon: float, sensitivity: float) -> float:
    """Exact delta of one Gaussian release at ``epsilon`` (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma such that ONE Gaussian release with L2 ``sensitivity`` is (epsilon, delta)-DP.

    Uses the analytic Gaussian mechanism (Balle & Wang 2018), tight for every epsilon, unlike the
    textbook sqrt(2 ln(1.25/delta)) / epsilon bound that only holds for epsilon < 1. For several
    releases compose with the accountant (:func:`fedtab.privacy.accountant.noise_multiplier_for`).
    """
    _check_positive("epsilon", epsilon, "gaussian_sigma")
    _check_delta(delta, "gaussian_sigma")
    _check_positive("sensitivity", sensitivity, "gaussian_sigma")
    lo, hi = 1e-6 * sensitivity, sensitivity
    while gaussian_delta(hi, epsilon=epsilon, sensitivity=sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, epsilon=epsilon, sensitivity=sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def stability_threshold(*, sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Release threshold tau for a Gaussian-noised count whose key is itself private.

    A key (e.g. a category) held by one record has true count ``sensitivity``; its noisy count passes
    ``tau = sensitivity + sigma * Phi^{-1}(1 - delta)`` with probability at most ``delta``. This is the
    stability-based histogram / DP set union argument: the keys that only a few records hold are
    never released, except with probability ``delta`` (which the ledger charges as extra delta).
    """
    _check_positive("sigma", sigma, "stability_threshold")
    _check_delta(delta, "stability_threshold")
    return float(sensitivity + sigma * norm.isf(delta))


def clip_counts(counts) -> np.ndarray:
    """Post-processing of noisy counts: negative counts become 0 (free under DP)."""
    return np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)


def norm_sub(counts, total: float | None = None) -> np.ndarray:
    """Post-processing of noisy counts (free under DP): non-negative counts with the same total.

    Clipping negatives to 0 leaves the noise of every empty cell as positive mass: with a few hundred
    rows and noise of tens per cell, a histogram's far tails end up holding most of the mass (measured on
    the heart hospitals at epsilon 1: synthetic cholesterol up to 880). Norm-sub (Wang et al., "Locally
    Differentially Private Frequency Estimation with Consistency", NDSS 2020) subtracts one constant
    ``d`` from every cell and clips at 0, with ``d`` chosen so the total stays the noisy total (an
    unbiased estimate of the row count): cells whose noisy count is within the noise of 0 become 0.
    Exact counts (no noise, none negative) come back unchanged. ``total``: a better estimate of the
    total than the counts' own sum (whose noise grows with the number of cells), e.g. the row count
    read off every column of a table; the counts then sum to it (a constant added where it is larger).
    """
    c = np.asarray(counts, dtype=np.float64)
    if total is None:
        total = float(c.sum())
        if c.size and c.min() >= 0:
            return c.copy()
    total = float(total)
    if c.size == 0 or total <= 0:
        return np.zeros_like(c)
    desc = np.sort(c)[::-1]
    # Largest k such that the k biggest cells minus their common shift d stay positive.
    shifts = (np.cumsum(desc) - total) / np.arange(1, c.size + 1)
    k = int(np.max(np.flatnonzero(desc - shifts > 0))) + 1
    return np.clip(c - shifts[k - 1], 0.0, None)

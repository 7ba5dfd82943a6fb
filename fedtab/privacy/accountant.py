"""Composition of Gaussian releases with a standard accountant (Opacus' RDP), and noise calibration.

Every DP release in fedtab is a (possibly Poisson-subsampled) Gaussian mechanism described by a
:class:`GaussianEvent`: ``noise_multiplier`` = sigma / L2-sensitivity, ``sample_rate`` (1.0 for a
release over the whole table) and ``steps``. We never compose by hand: the events go into
``opacus.accountants.RDPAccountant`` and the epsilon comes back from it.

The RDP orders are Opacus' defaults extended up to 2048: at small budgets (epsilon ~ 0.1, the
preprocessing budget) the optimal order is in the hundreds and the defaults (max 63) would
overstate epsilon several times over.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as privacy_analysis

from fedtab.errors import ConfigError, PrivacyBudgetError

RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS) + (
    80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048,
)
ACCOUNTANTS = ("rdp",)


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` Gaussian releases, each on a Poisson sample at ``sample_rate`` (0 noise = exact)."""

    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1


def orders_for(sample_rate: float) -> tuple[float, ...]:
    """The RDP orders evaluated for an event; the others count as infinite RDP (a valid, looser bound).

    Whole-table releases (rate 1) have a closed form at every order. For Poisson-subsampled steps
    Opacus' fractional orders cost ~0.2 s per curve (series evaluation) and orders in the thousands
    ~60 ms (a sum of alpha terms), which made calibration take tens of seconds; integer orders up to
    128 cost a few ms and lose little: at DP-SGD budgets the optimal order is a small integer.
    """
    return RDP_ORDERS if sample_rate >= 1 else tuple(o for o in RDP_ORDERS if float(o).is_integer() and o <= 128)


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one (subsampled) Gaussian step at every order in RDP_ORDERS (Opacus' own analysis).

    Cached: a ledger repeats the same (noise, rate) pair many times (one entry per column, one per
    round) and calibration revisits candidates, so each pair's curve is computed once per process.
    """
    used = orders_for(sample_rate)
    values = privacy_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                          orders=list(used))
    by_order = dict(zip(used, np.atleast_1d(values)))
    curve = np.array([by_order.get(o, np.inf) for o in RDP_ORDERS], dtype=np.float64)
    curve.setflags(write=False)
    return curve


def compose_epsilon(events: Iterable[GaussianEvent], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of all ``events`` composed (0.0 for none, inf if any is exact).

    RDP composes by adding the per-order curves (``steps`` times each event's curve), which is what
    Opacus' ``RDPAccountant`` does with its history; events with the same (noise, rate) are grouped
    first so that long ledgers stay fast.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"The 'accountant' parameter of compose_epsilon must be one of {list(ACCOUNTANTS)}. "
                          f"Got {accountant!r} instead.")
    events = [e for e in events if e.steps > 0]
    if not events:
        return 0.0
    if any(e.noise_multiplier <= 0 for e in events):
        return math.inf
    if not 0 < delta < 1:
        return math.inf
    steps: dict[tuple[float, float], int] = {}
    for e in events:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        steps[key] = steps.get(key, 0) + int(e.steps)
    rdp = sum(n * _rdp_per_step(z, q) for (z, q), n in steps.items())
    eps, _ = privacy_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def noise_multiplier_for(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    prior: Iterable[GaussianEvent] = (), tolerance: float = 1e-4, scaled: Iterable[tuple[float, int]] = (),
) -> float:
    """Smallest noise multiplier z such that ``prior`` + ``steps`` events (z, ``sample_rate``) compose to
    at most ``target_epsilon`` at ``delta`` (binary search with the same accountant). ``scaled``:
    (factor, steps) pairs of further events at noise multiplier ``factor * z``, same sample rate."""
    scaled = tuple(scaled)
    prior = tuple(prior)
    if not (0 < target_epsilon < math.inf):
        raise ConfigError(f"The 'target_epsilon' parameter must be a float in (0, inf). Got {target_epsilon!r} instead.")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"The 'sample_rate' parameter must be a float in (0, 1]. Got {sample_rate!r} instead.")
    if steps < 1:
        raise ConfigError(f"The 'steps' parameter must be a whole number >= 1. Got {steps!r} instead.")
    already = compose_epsilon(prior, delta=delta)
    if already >= target_epsilon:
        raise PrivacyBudgetError(
            f"Past spends already reach epsilon {already:.4g} >= the target {target_epsilon:.4g}: no noise "
            "multiplier can keep the new steps within it. Raise the target or spend less elsewhere."
        )

    def eps(z: float) -> float:
        return compose_epsilon(prior + (GaussianEvent(z, sample_rate, steps),)
                               + tuple(GaussianEvent(f * z, sample_rate, k) for f, k in scaled), delta=delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise PrivacyBudgetError(f"No noise multiplier up to 1e6 reaches epsilon {target_epsilon:.4g}.")
    while hi - lo > tolerance * max(hi, 1e-3):
        mid = 0.5 * (lo + hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def calibrate_noise_multiplier(*, ledger, sample_rate: float, steps: int, target_epsilon: float) -> float:
    """Smallest DP-SGD noise multiplier such that ``ledger``'s past spends plus ``steps``
    Poisson-subsampled Gaussian steps at ``sample_rate`` stay at or below ``target_epsilon``.

    Composition is at the ledger's accounting delta (its delta less the delta already charged by
    thresholded releases). ``target_epsilon`` may not exceed the ledger's budget.
    """
    budget = ledger.epsilon_budget
    if budget is not None and target_epsilon > budget:
        raise ConfigError(
            f"The 'target_epsilon' parameter of calibrate_noise_multiplier ({target_epsilon:.4g}) exceeds site "
            f"'{ledger.site}''s budget {budget:.4g}. Use a target at most the budget."
        )
    return noise_multiplier_for(
        target_epsilon=target_epsilon, delta=ledger.accounting_delta, sample_rate=sample_rate,
        steps=steps, prior=ledger.events(),
    )

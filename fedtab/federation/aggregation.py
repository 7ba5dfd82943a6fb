"""Pure aggregation functions (no I/O, no globals): testable with three random arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def weighted_average(
    updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Row-weighted FedAvg of flat ``name -> array`` maps that share names and shapes.

    Integer arrays (counters such as BatchNorm's ``num_batches_tracked``) are taken from the first
    update rather than averaged. Sums run in float64 and in a fixed order, so the result does not
    depend on the transport that delivered the updates.
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"got {len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(w)}")
    w = w / w.sum()
    names = list(updates[0])
    for i, u in enumerate(updates[1:], start=1):
        if list(u) != names:
            raise ValueError(f"update {i} has parameters {sorted(set(u) ^ set(names))} that update 0 lacks or has")
    out: dict[str, np.ndarray] = {}
    for name in names:
        first = np.asarray(updates[0][name])
        if not np.issubdtype(first.dtype, np.floating):
            out[name] = first.copy()
            continue
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, u in zip(w, updates):
            acc += wi * np.asarray(u[name], dtype=np.float64)
        out[name] = acc.astype(first.dtype)
    return out


def weighted_mean(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of per-site scalars (sites missing a value are left out)."""
    keys = [k for k in values if k in weights and values[k] is not None and np.isfinite(values[k])]
    if not keys:
        return float("nan")
    w = np.array([weights[k] for k in keys], dtype=np.float64)
    v = np.array([values[k] for k in keys], dtype=np.float64)
    return float((w * v).sum() / w.sum())


# -- updates a hostile or broken site may send ------------------------------------------------------------
def adam_step_bound(betas: tuple[float, float], steps: int) -> float:
    """The most one Adam step can move a parameter, in units of the learning rate, over ``steps`` steps
    from fresh moments (a site's round starts from zero moments; ``fedtab.federation.training``).

    Step t moves a parameter by ``lr |m_t / (1 - b1^t)| / sqrt(v_t / (1 - b2^t))``; by Cauchy-Schwarz
    over the gradients so far that ratio is at most ``(1 - b1) / (1 - b1^t) * sqrt((1 - b2^t) / (1 - b2))
    / sqrt(1 - b1^2 / b2)`` when ``b1^2 < b2`` (Kingma & Ba's bound, with the bias corrections kept),
    whatever the gradients are: clipped, noised or hostile. Returns the sum over the steps: a bound on a
    round's move of each parameter, derived from the optimizer alone (no data)."""
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 < b2 < 1 and b1 * b1 < b2):
        raise ValueError(f"no step bound for Adam betas {betas!r}")
    t = np.arange(1, max(int(steps), 1) + 1, dtype=np.float64)
    per_step = (1 - b1) / (1 - b1 ** t) * np.sqrt((1 - b2 ** t) / (1 - b2)) / math.sqrt(1 - b1 * b1 / b2)
    return float(per_step.sum())


def screen_update(update: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], *,
                  bounds: Mapping[str, float]) -> str | None:
    """Why a site's returned weights cannot be averaged, or None when they can: the same parameters and
    shapes as the global model, every value finite, and every parameter named in ``bounds`` moved by at
    most its bound (``adam_step_bound`` x its learning rate; 1% slack for float sums). Parameters not in
    ``bounds`` (BatchNorm running statistics) are checked for shape and finiteness only."""
    if set(update) != set(current):
        return "its update has other parameters than the global model"
    for name, cur in current.items():
        new = np.asarray(update[name])
        if new.shape != np.shape(cur):
            return f"its update's parameter '{name}' has another shape than the global model's"
        if np.issubdtype(new.dtype, np.floating) and not np.all(np.isfinite(new)):
            return f"its update's parameter '{name}' holds values that are not finite"
        bound = bounds.get(name)
        if bound is not None and new.size:
            moved = float(np.max(np.abs(new.astype(np.float64) - np.asarray(cur, dtype=np.float64))))
            if moved > 1.01 * bound + 1e-12:
                return (f"its update moved parameter '{name}' by {moved:.3g}, more than any training round can "
                        f"({bound:.3g}: the learning rate x Adam's step bound x the round's steps)")
    return None


def trimmed_average(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], *,
                    trim: int) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed, row-weighted mean: for every value, the ``trim`` largest and ``trim``
    smallest of the sites' are left out and the rest averaged with the sites' weights (``trim = 0``:
    ``weighted_average``). With one hostile site among four (``trim = 1``) no value of the result lies
    outside the range of the honest sites' values."""
    k = len(updates)
    if trim <= 0:
        return weighted_average(updates, weights)
    if k - 2 * trim < 1:
        raise ValueError(f"cannot trim {trim} from each side of {k} updates")
    w = np.asarray(weights, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name in updates[0]:
        first = np.asarray(updates[0][name])
        if not np.issubdtype(first.dtype, np.floating):
            out[name] = first.copy()
            continue
        stack = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])  # (sites, ...)
        order = np.argsort(stack, axis=0, kind="stable")[trim:k - trim]
        kept = np.take_along_axis(stack, order, axis=0)
        wk = w[order]
        out[name] = ((kept * wk).sum(axis=0) / wk.sum(axis=0)).astype(first.dtype)
    return out

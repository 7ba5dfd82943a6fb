"""Pure aggregation functions (no I/O, no globals): testable with three random arrays."""

from __future__ import annotations

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

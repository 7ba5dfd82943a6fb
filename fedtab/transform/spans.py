"""The contract between encoding and models: the encoded matrix is a row of spans.

A model reads only this: it never sees column names, types or sites. ``SpanInfo`` says how wide
each block of the encoded row is and which output activation the generator must apply to it;
``ConditionSpan`` marks the one-hot blocks that can serve as CTGAN conditions, with the category
frequencies the coordinator learned (noisy under DP), so training never looks at the data again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("tanh", "softmax")


@dataclass(frozen=True)
class SpanInfo:
    """One block of the encoded row.

    ``activation`` is ``"tanh"`` for a scaled scalar in [-1, 1] and ``"softmax"`` for a one-hot block
    (categories, Gaussian-mixture modes, missing indicators). ``column`` and ``role`` are for humans
    and debugging (role: "value", "mode", "category", "missing").
    """

    dim: int
    activation: str
    column: str = ""
    role: str = ""


@dataclass(frozen=True)
class ConditionSpan:
    """A one-hot span usable as a CTGAN condition.

    ``offset`` is where the span starts in the encoded row; ``frequencies`` (sums to 1, length ``dim``)
    are the merged, possibly DP-noised category frequencies over all sites. ``pinned``: the site
    column (``EncodingPlan.site_column``): every row is conditioned on it, at a site on that site's own
    category (see ``fedtab.models.conditions``).
    """

    column: str
    offset: int
    dim: int
    frequencies: np.ndarray
    pinned: bool = False


def span_offsets(spans: list[SpanInfo]) -> list[int]:
    """Start offset of each span in the encoded row."""
    out, pos = [], 0
    for s in spans:
        out.append(pos)
        pos += s.dim
    return out

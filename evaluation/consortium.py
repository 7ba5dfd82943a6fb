"""Consortium fidelity: the quality of a synthetic table against the union of the sites' rows,
computed from per-site counts, with no row leaving a site.

Why: the synthetic table models the consortium's population, not any one site's. Scored against each
site's own rows (sdmetrics' QualityReport per site, then averaged), even a perfect model of the union is
marked down for the differences between sites: measured on the heart hospitals, resampled real rows of
all four hospitals score 0.705 on average (0.669 at VA Long Beach). Sums of per-site counts are counts
of the union, so the union's score needs no pooling:

* each site bins its rows on a grid read off the synthetic table (which every site holds), and sends
  the counts: one histogram per column, one contingency table per column pair, and for each pair of
  numerical columns the sums n, x, y, x^2, y^2, xy (a Pearson correlation's sufficient statistics);
* the coordinator adds them up and scores the union as sdmetrics' QualityReport does: per column
  1 - KS distance (numerical, over the grid) or 1 - total variation distance (categorical), both over
  the present values; per pair
  1 - |r_real - r_synth| / 2 (two numerical columns, Pearson) or 1 - the total variation distance of
  the two contingency tables; quality = mean(mean column score, mean pair score).

The grid makes the figures approximations of sdmetrics' (KS over 50 synthetic quantiles; numerical
columns in pairs binned in 10 equal-width cells over the synthetic range where sdmetrics spans the real one); a test holds
them within a few hundredths of sdmetrics on one site. What leaves a site is counts on that grid, sent
to the coordinator only: the report shows the scores, never the counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation._tables import Kinds

FINE_BINS = 50
COARSE_BINS = 10
MAX_LEVELS = 20


@dataclass(frozen=True)
class ConsortiumCounts:
    """What one site sends: its row count and counts on the grid (flat tuples, JSON-able)."""

    n_rows: int
    columns: tuple[tuple[str, tuple[float, ...]], ...]                 # column -> histogram (fine grid)
    pairs: tuple[tuple[str, str, tuple[float, ...]], ...]              # (a, b) -> flattened contingency table
    moments: tuple[tuple[str, str, tuple[float, ...]], ...]            # (a, b) -> n, sx, sy, sxx, syy, sxy


@dataclass(frozen=True)
class ConsortiumQuality:
    quality: float
    column_shapes: float
    column_pair_trends: float | None
    column_scores: tuple[tuple[str, float], ...]
    n_sites: int
    n_rows: int


class _Grid:
    """Bins of every column, read off the synthetic table only (so every site builds the same grid)."""

    def __init__(self, synthetic: pd.DataFrame, kinds: Kinds):
        self.kinds = kinds
        self.fine, self.coarse, self.levels = {}, {}, {}
        for c in kinds.columns:
            if c in kinds.numerical:
                x = synthetic[c].to_numpy(dtype="float64")
                x = x[~np.isnan(x)]
                self.fine[c] = _quantile_edges(x, FINE_BINS)
                # Pairs: equal-width cells over the synthetic range, as sdmetrics bins over the real range.
                self.coarse[c] = np.histogram_bin_edges(x, bins=COARSE_BINS)[1:-1] if x.size else np.array([])
            else:
                counts = synthetic[c].dropna().astype(str).value_counts()
                self.levels[c] = {v: i for i, v in enumerate(sorted(counts.index[:MAX_LEVELS]))}

    def size(self, c: str, coarse: bool) -> int:
        if c in self.kinds.numerical:
            return len((self.coarse if coarse else self.fine)[c]) + 2  # cells, then missing
        return len(self.levels[c]) + 2  # levels, other, missing

    def codes(self, frame: pd.DataFrame, c: str, coarse: bool) -> np.ndarray:
        if c in self.kinds.numerical:
            x = frame[c].to_numpy(dtype="float64")
            edges = (self.coarse if coarse else self.fine)[c]
            return np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right"))
        s = frame[c]
        levels = self.levels[c]
        mapped = s.astype(str).map(levels).to_numpy(dtype="float64")
        return np.where(s.isna().to_numpy(), len(levels) + 1, np.where(np.isnan(mapped), len(levels), mapped)).astype(np.int64)


def _quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    if x.size == 0:
        return np.array([])
    return np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))


def consortium_counts(rows: pd.DataFrame, synthetic: pd.DataFrame, kinds: Kinds) -> ConsortiumCounts:
    """A site's counts of ``rows`` on the grid of ``synthetic`` (both plain frames; see ``_tables``)."""
    grid = _Grid(synthetic, kinds)
    cols = kinds.columns
    columns = tuple((c, tuple(np.bincount(grid.codes(rows, c, False), minlength=grid.size(c, False)).astype(float)))
                    for c in cols)
    coarse = {c: grid.codes(rows, c, True) for c in cols}
    pairs, moments = [], []
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            if a in kinds.numerical and b in kinds.numerical:
                x, y = rows[a].to_numpy(dtype="float64"), rows[b].to_numpy(dtype="float64")
                ok = ~(np.isnan(x) | np.isnan(y))
                x, y = x[ok], y[ok]
                moments.append((a, b, (float(ok.sum()), float(x.sum()), float(y.sum()), float((x * x).sum()),
                                       float((y * y).sum()), float((x * y).sum()))))
            else:
                kb = grid.size(b, True)
                table = np.bincount(coarse[a] * kb + coarse[b], minlength=grid.size(a, True) * kb)
                pairs.append((a, b, tuple(table.astype(float))))
    return ConsortiumCounts(n_rows=len(rows), columns=columns, pairs=tuple(pairs), moments=tuple(moments))


def _summed(site_counts: list[ConsortiumCounts]):
    cols: dict[str, np.ndarray] = {}
    pairs: dict[tuple[str, str], np.ndarray] = {}
    moments: dict[tuple[str, str], np.ndarray] = {}
    for sc in site_counts:
        for c, h in sc.columns:
            cols[c] = cols.get(c, 0) + np.asarray(h, dtype=float)
        for a, b, t in sc.pairs:
            pairs[(a, b)] = pairs.get((a, b), 0) + np.asarray(t, dtype=float)
        for a, b, m in sc.moments:
            moments[(a, b)] = moments.get((a, b), 0) + np.asarray(m, dtype=float)
    return cols, pairs, moments


def _correlation(m: np.ndarray) -> float | None:
    n, sx, sy, sxx, syy, sxy = m
    if n < 2:
        return None
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    if vx <= 0 or vy <= 0:
        return None
    return float((sxy - sx * sy / n) / np.sqrt(vx * vy))


def _tvd(p: np.ndarray, q: np.ndarray) -> float | None:
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def consortium_quality(site_counts: list[ConsortiumCounts], synthetic: pd.DataFrame, kinds: Kinds) -> ConsortiumQuality:
    """Score ``synthetic`` (plain frame) against the union of the sites whose counts are given."""
    real_cols, real_pairs, real_moments = _summed(site_counts)
    syn_cols, syn_pairs, syn_moments = _summed([consortium_counts(synthetic, synthetic, kinds)])
    scores = []
    for c in kinds.columns:
        r, s = real_cols[c], syn_cols[c]
        if c in kinds.numerical:  # KS over the present values (sdmetrics drops missing ones)
            r, s = r[:-1], s[:-1]
            if r.sum() <= 0 or s.sum() <= 0:
                continue
            score = 1.0 - float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(s) / s.sum())))
        else:  # over the present values too: sdmetrics' TVComplement drops missing ones
            d = _tvd(r[:-1], s[:-1])
            if d is None:
                continue
            score = 1.0 - d
        scores.append((c, score))
    pair_scores = []
    for key, r in real_pairs.items():
        d = _tvd(r, syn_pairs[key])
        if d is not None:
            pair_scores.append(1.0 - d)
    for key, m in real_moments.items():
        rr, rs = _correlation(m), _correlation(syn_moments[key])
        if rr is not None and rs is not None:
            pair_scores.append(1.0 - abs(rr - rs) / 2.0)
    shapes = float(np.mean([s for _, s in scores])) if scores else float("nan")
    trends = float(np.mean(pair_scores)) if pair_scores else None
    quality = shapes if trends is None else 0.5 * (shapes + trends)
    return ConsortiumQuality(quality=quality, column_shapes=shapes, column_pair_trends=trends,
                             column_scores=tuple(scores), n_sites=len(site_counts),
                             n_rows=int(sum(sc.n_rows for sc in site_counts)))

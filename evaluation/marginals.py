"""Per-column distributions, real vs synthetic, as binned frequencies safe to send out of a site.

What is released for each column, and why it reveals no individual row:
* numerical: frequencies over ``bins`` equal-width bins. The edges are the column's declared bounds when
  the schema has both, else the real rows' 1st and 99th percentiles (never the minimum or maximum, which
  are single rows' values); rows outside fall into the end bins.
* categorical / boolean: frequencies of the levels that at least ``min_cell`` real rows hold (at most
  ``max_levels``); rarer levels are pooled into ``<other>``, so a level held by one patient is not named.
* in both, a cell that fewer than ``min_cell`` rows fill (real or synthetic) is published as 0 (counted in
  ``suppressed``), the small-cell rule of statistical disclosure control, and the missing share.
Frequencies are rounded to 4 decimals. These are not differentially private: they are the same kind of
figure as the quality scores, reported only to the evaluation's recipients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from evaluation._tables import OTHER_TOKEN
from fedtab.schema import TableSchema


@dataclass(frozen=True)
class Marginal:
    column: str
    kind: str  # "numerical" or "categorical"
    labels: tuple[str, ...]
    real: tuple[float, ...]
    synthetic: tuple[float, ...]
    real_missing: float
    synthetic_missing: float
    suppressed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _freqs(counts: np.ndarray, n: int, min_cell: int) -> tuple[tuple[float, ...], int]:
    small = (counts > 0) & (counts < min_cell)
    kept = np.where(small, 0, counts)
    freqs = kept / n if n else np.zeros(len(counts))
    return tuple(round(float(f), 4) for f in freqs), int(small.sum())


def _numerical(name, real, synth, lower, upper, bins, min_cell) -> Marginal:
    r = real.to_numpy(dtype="float64")
    s = synth.to_numpy(dtype="float64")
    r_ok, s_ok = r[~np.isnan(r)], s[~np.isnan(s)]
    if lower is not None and upper is not None:
        lo, hi = float(lower), float(upper)
    elif len(r_ok):
        lo, hi = (float(v) for v in np.percentile(r_ok, [1, 99]))
    else:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    rc = np.histogram(np.clip(r_ok, lo, hi), bins=edges)[0]
    sc = np.histogram(np.clip(s_ok, lo, hi), bins=edges)[0]
    rf, rs = _freqs(rc, len(r), min_cell)
    sf, ss = _freqs(sc, len(s), min_cell)
    labels = tuple(f"{_fmt(a)}-{_fmt(b)}" for a, b in zip(edges[:-1], edges[1:]))
    return Marginal(name, "numerical", labels, rf, sf, _missing(r, len(r)), _missing(s, len(s)), rs + ss)


def _missing(values, n) -> float:
    return round(float(pd.isna(values).sum() / n), 4) if n else 0.0


def _categorical(name, real, synth, max_levels, min_cell) -> Marginal:
    counts = real.value_counts()
    keep = [str(v) for v, c in counts.items() if c >= min_cell][:max_levels]
    def bucket(s: pd.Series) -> np.ndarray:
        ok = s.dropna().astype(str)
        mapped = ok.where(ok.isin(keep), OTHER_TOKEN)
        vc = mapped.value_counts()
        return np.array([int(vc.get(k, 0)) for k in keep + [OTHER_TOKEN]])
    rc, sc = bucket(real), bucket(synth)
    labels = tuple(keep + [OTHER_TOKEN])
    if rc[-1] == 0 and sc[-1] == 0:
        labels, rc, sc = labels[:-1], rc[:-1], sc[:-1]
    rf, rs = _freqs(rc, len(real), min_cell)
    sf, ss = _freqs(sc, len(synth), min_cell)
    return Marginal(name, "categorical", labels, rf, sf, _missing(real, len(real)),
                    _missing(synth, len(synth)), rs + ss)


def column_marginals(
    real: pd.DataFrame, synthetic: pd.DataFrame, schema: TableSchema, *,
    bins: int = 10, max_levels: int = 20, min_cell: int = 5,
) -> tuple[Marginal, ...]:
    """Binned real-vs-synthetic frequencies for every non-id column of plain frames."""
    out = []
    for spec in schema.columns:
        if spec.name not in real.columns:
            continue
        if spec.type in ("numerical", "datetime"):
            lower = spec.lower if spec.type == "numerical" else None
            upper = spec.upper if spec.type == "numerical" else None
            out.append(_numerical(spec.name, real[spec.name], synthetic[spec.name], lower, upper, bins, min_cell))
        else:
            out.append(_categorical(spec.name, real[spec.name], synthetic[spec.name], max_levels, min_cell))
    return tuple(out)

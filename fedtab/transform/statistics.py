"""Site statistics and their merge: the only things that leave a site during encoding.

``phase_request`` (coordinator) -> ``site_statistics`` (each site; every release is spent on the
site's ledger first) -> ``merge_statistics`` (coordinator; pure). All messages are flat dicts keyed
``"<column>/<field>"`` whose values are numpy arrays, floats, ints, strings or lists of strings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fedtab.errors import ConfigError, SchemaError
from fedtab.privacy.accountant import GaussianEvent
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.privacy.mechanisms import norm_sub
from fedtab.privacy.secret import SecretSource, secret_source
from fedtab.schema import ColumnSpec
from fedtab.transform.plan import (
    F_CATEGORIES, F_COUNTS, F_EDGES, F_KEYS, F_LOWER, F_MAX, F_MIN, F_MISSING, F_NOISE_SD, F_OTHER, F_RAW,
    F_ROUNDING, F_UPPER, KEY_N_SITES, KEY_PHASE, LEDGER_PHASE_PREFIX, PHASE_DOMAIN, PHASE_HISTOGRAM, PHASE_PAIRS,
    ROUNDING_NOISE_FACTOR, ROUNDING_STEPS, EncodingPlan, grid_step, rounding_classes, wire_key,
)
from fedtab.transform.pairs import (
    F_PAIR_EDGES, KEY_PAIRS_MEASURED, MIN_PAIR_SNR, CellLayout, coarse_edges, measured_pairs, pair_counts,
    pair_key,
)
from fedtab.transform.values import category_values, numeric_values

# Public layout for DP bounds: cells between -2^50 .. -2^-8, 0, 2^-8 .. 2^50 (SmartNoise-style approx bounds).
MAGNITUDE_EDGES = np.concatenate([-(2.0 ** np.arange(50, -9, -1)), [0.0], 2.0 ** np.arange(-8, 51)])
# A cell passes at 4.8 noise sds: over the ~117 cells a column's rows leave empty, a false one passes with
# probability ~1e-4 per column (P(Z > 4.8) = 7.9e-7 a cell). At 4 sds it was 0.37% per column, and a false
# cell far from the rows becomes the range's outer edge (values up to 2**50): a table of 30 columns
# declared without bounds drew one such range in about 1 job of 10 (0.3% at 4.8).
BOUNDS_THRESHOLD_SIGMAS = 4.8
# From the outermost passing cells the range then takes each further adjacent cell whose count passes 2
# noise sds (a false step, 2.3% a side, at most doubles the range; it cannot jump to a far cell). Each cell
# passing 4.8 sds on its own cut much of a column at small sites: simulated on the held-out tables' columns
# (2,000 draws of the counts' noise, benchmarks/_data.py; Seattle weather at 4 x 292 rows, gbsg2 at 548,
# cars at 324), the real rows inside the range went from 0.71 to 0.89 (maximum temperatures), 0.59 to
# 0.89 (wind) at noise sd 88, and 0.56 to 0.93 (gbsg2's lymph nodes) at sd 30; the median range from
# 0.65 to 0.65, 0.24 to 0.83 and 0.11 to 0.41 of the data's own.
EXTEND_SIGMAS = 2.0


# -- pure helpers -----------------------------------------------------------------------------
def magnitude_counts(x: np.ndarray) -> np.ndarray:
    x = x[~np.isnan(x)]
    return np.bincount(np.searchsorted(MAGNITUDE_EDGES, x, side="right"),
                       minlength=len(MAGNITUDE_EDGES) + 1).astype(np.float64)


def bounds_from_magnitude_counts(counts: np.ndarray, *, threshold: float,
                                 extend: float | None = None) -> tuple[float, float] | None:
    """Outermost magnitude cells whose (merged, noisy) count passes ``threshold``, then each adjacent
    cell beyond them passing ``extend`` (``EXTEND_SIGMAS``); None where no cell passes ``threshold``.
    (The fullest cell instead read noise as data: 3 sites of 300 rows at epsilon 1, no cell above 4 sds
    of 161, gave bounds of -1e6 for values in 0-100.)"""
    passing = np.flatnonzero(counts > threshold)
    if passing.size == 0:
        return None
    e = MAGNITUDE_EDGES
    lo_cell, hi_cell = int(passing[0]), int(passing[-1])
    if extend is not None:
        while lo_cell > 0 and counts[lo_cell - 1] > extend:
            lo_cell -= 1
        while hi_cell + 1 < len(counts) and counts[hi_cell + 1] > extend:
            hi_cell += 1
    lower = e[max(lo_cell - 1, 0)]
    upper = e[min(hi_cell, len(e) - 1)]
    return float(lower), float(upper)


# A point cell of a continuous column (``histogram_edges(points=True)``): this share of its bounds' width.
POINT_WIDTH = 1e-9


def histogram_edges(spec: ColumnSpec, lower: float, upper: float, bins: int, *, points: bool = False) -> np.ndarray:
    """Cell edges over [lower, upper]: one cell per grid value when the grid fits in ``bins`` cells.

    Otherwise ``bins`` cells of equal width, except that on a grid (integers, fixed precision) the lower
    bound and 0 get a cell of one grid value each: counts and amounts are often exactly 0 or at
    their floor (Adult's capital gain is 0 in 92% of rows) and an equal-width cell 2,500 wide hid that
    point mass from the mixture, so the synthetic values spread over the cell (KS complement 0.43).
    ``points``: a continuous column (no grid) gets them too, each ``POINT_WIDTH`` of the bounds wide
    (``point_cells`` finds them): a float column declared without a precision is as often exactly 0 or at
    its floor (daily rainfall 0 on 57% of days), and without them its point mass was lost the same way.
    """
    step = grid_step(spec)
    if step is None and points and upper > lower:
        step = (upper - lower) * POINT_WIDTH
    if step is None:
        return np.linspace(lower, upper, bins + 1)
    n = int(round((upper - lower) / step)) + 1
    if n <= bins:
        return lower - step / 2 + step * np.arange(n + 1)
    points = sorted({lower} | ({0.0} if lower < 0.0 < upper else set()))
    cells = [(v - step / 2, v + step / 2) for v in points]
    edges = np.linspace(lower - step / 2, upper + step / 2, bins + 1 - len(points))
    inside = np.zeros(len(edges), dtype=bool)
    for lo, hi in cells:
        inside |= (edges > lo - step / 4) & (edges < hi + step / 4)
    return np.unique(np.concatenate([edges[~inside], [e for c in cells for e in c], [lower - step / 2]]))


def point_cells(spec: ColumnSpec, edges: np.ndarray, lower: float) -> list[list[float]]:
    """[cell index, value] of each point cell ``histogram_edges(points=True)`` gave a continuous column
    (its ``lower`` bound and 0): a value drawn in such a cell is the point itself, exactly. Empty for a
    column on a grid (its rounding does it)."""
    e = np.asarray(edges, dtype=float)
    if grid_step(spec) is not None or e.size < 3:
        return []
    width = (e[-1] - e[0]) * POINT_WIDTH * 1.5
    out = []
    for i in range(e.size - 1):
        if e[i + 1] - e[i] <= width:
            mid = (e[i] + e[i + 1]) / 2
            out.append([i, min((float(lower), 0.0), key=lambda p: abs(p - mid))])
    return out


def histogram_counts(x: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float]:
    """Counts per cell (values outside clipped into the end cells) and the number of missing values."""
    missing = np.isnan(x)
    idx = np.clip(np.searchsorted(edges, x[~missing], side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.float64), float(missing.sum())


def finalize_bounds(spec: ColumnSpec, lower: float, upper: float) -> tuple[float, float]:
    """Declared bounds win; integers round outward; an empty or one-point range is widened."""
    lower = spec.lower if spec.lower is not None else lower
    upper = spec.upper if spec.upper is not None else upper
    if not (math.isfinite(lower) and math.isfinite(upper)):
        lower, upper = 0.0, 1.0
    if spec.is_integer:
        lower, upper = math.floor(lower), math.ceil(upper)
    if upper <= lower:
        lower, upper = (lower - 0.5, upper + 0.5) if not spec.is_integer else (lower, lower + 1)
    return float(lower), float(upper)


# -- coordinator: requests ----------------------------------------------------------------------
def phase_request(plan: EncodingPlan, phase: str, merged_domain: dict[str, Any] | None = None, *,
                  pair_noise_sd: float | None = None) -> dict[str, Any]:
    """What the coordinator asks of every site in ``phase`` (public: depends only on plan and merges)."""
    if phase == PHASE_DOMAIN:
        return {KEY_PHASE: PHASE_DOMAIN}
    if phase == PHASE_PAIRS:
        return _pairs_request(plan, merged_domain or {}, noise_sd=pair_noise_sd)
    if phase != PHASE_HISTOGRAM:
        raise ConfigError(f"Unknown encoding phase {phase!r}; expected one of {list(plan.phases())}.")
    merged_domain = merged_domain or {}
    req: dict[str, Any] = {KEY_PHASE: PHASE_HISTOGRAM}
    for spec in plan.columns:
        if spec.type in ("numerical", "datetime"):
            lower = merged_domain.get(wire_key(spec.name, F_LOWER), math.nan)
            upper = merged_domain.get(wire_key(spec.name, F_UPPER), math.nan)
            lower, upper = finalize_bounds(spec, lower, upper)
            req[wire_key(spec.name, F_EDGES)] = histogram_edges(spec, lower, upper, plan.n_bins)
            req[wire_key(spec.name, F_LOWER)], req[wire_key(spec.name, F_UPPER)] = lower, upper
        else:
            cats = plan.categories_of(spec)
            if cats is None:
                cats = merged_domain.get(wire_key(spec.name, F_CATEGORIES), [])
            req[wire_key(spec.name, F_CATEGORIES)] = [str(c) for c in cats]
            req[wire_key(spec.name, F_OTHER)] = int(plan.uses_other(spec))
    return req


def histogram_rows(plan: EncodingPlan, release: dict[str, Any]) -> float:
    """A table's row count read off a histogram-phase release (one site's or the merged one).

    Every column's histogram (missing cell included) totals the rows; under DP each total carries
    independent noise of variance ``sigma^2 * cells``, so the inverse-variance mean over all columns
    is the estimate (a 2-cell column counts for ten 20-cell ones). Reading one column only left the
    noise of its 20-odd cells: at epsilon 1 a 98-row hospital read as 1 row (FedAvg weight ~0).
    Post-processing: no privacy cost. Exact without DP."""
    return row_estimate([np.append(np.asarray(release[wire_key(spec.name, F_COUNTS)], dtype=np.float64),
                                    float(release[wire_key(spec.name, F_MISSING)])) for spec in plan.columns])


def site_rows(plan: EncodingPlan, release: dict[str, Any]) -> float:
    """A site's row count as its FedAvg weight and its share of a sampled table: ``histogram_rows`` of
    its own release, floored at that estimate's noise sd (and at 1). A count within one sd of zero
    cannot be told from a small site: at epsilon 0.05 on the heart hospitals (sd ~280 rows) a 242-row
    hospital read as 1 row, got one row of a 735-row table and its evaluation stopped. Post-processing."""
    rows = histogram_rows(plan, release)
    if plan.dp is None:
        return max(1.0, rows)
    return max(1.0, rows, rows_noise_sd(plan, release))


def rows_noise_sd(plan: EncodingPlan, release: dict[str, Any]) -> float:
    """The noise sd of ``histogram_rows`` of one site's release; 0 without DP."""
    return row_estimate_sd(plan, [len(np.asarray(release[wire_key(spec.name, F_COUNTS)])) + 1
                                  for spec in plan.columns])


def row_estimate_sd(plan: EncodingPlan, cells: list[int]) -> float:
    """The noise sd of ``row_estimate`` over vectors of ``cells`` cells each (every column's cells and its
    missing count; each total carries the noise of its cells); 0 without DP."""
    if plan.dp is None:
        return 0.0
    return float(plan.noise_multiplier) / math.sqrt(sum(1.0 / max(int(c), 1) for c in cells))


def row_estimate(vectors: list[np.ndarray]) -> float:
    """Inverse-variance mean of the totals of count vectors that each count every row once."""
    return float(np.average([v.sum() for v in vectors], weights=[1.0 / v.size for v in vectors]))


def _pairs_request(plan: EncodingPlan, merged_histogram: dict[str, Any], *, noise_sd: float | None = None
                   ) -> dict[str, Any]:
    """The pairs phase's layouts: categories as in the histogram phase, numerical cells of about equal
    mass read off the merged histograms (public: post-processing of released counts). A pair is measured
    where its cells would stand above the noise of the summed tables, ``noise_sd`` (default: the merged
    histograms', every site's full noise; under secure aggregation, the sum's)."""
    if merged_histogram.get(KEY_PHASE) != PHASE_HISTOGRAM:
        raise ConfigError(f"The '{PHASE_PAIRS}' phase needs the merged '{PHASE_HISTOGRAM}' statistics.")
    req: dict[str, Any] = {KEY_PHASE: PHASE_PAIRS}
    by_name = {c.name: c for c in plan.columns}
    named = list(dict.fromkeys(c for pair in plan.pairs for c in pair))
    for name in named:
        req.update(_pair_layout(by_name[name], merged_histogram))
    rows = histogram_rows(plan, merged_histogram)
    if noise_sd is None:
        noise_sd = float(merged_histogram[wire_key(plan.columns[0].name, F_NOISE_SD)])
    size = {name: cell_layout(plan, req, name).size for name in named}
    req[KEY_PAIRS_MEASURED] = np.array(
        [i for i, (a, b) in enumerate(plan.pairs)
         if noise_sd == 0 or rows / (size[a] * size[b] * noise_sd) >= MIN_PAIR_SNR], dtype=np.int64)
    return req


def _pair_layout(spec: ColumnSpec, merged_histogram: dict[str, Any]) -> dict[str, Any]:
    name = spec.name
    req: dict[str, Any] = {}
    if spec.type in ("numerical", "datetime"):
        req[wire_key(name, F_PAIR_EDGES)] = coarse_edges(merged_histogram[wire_key(name, F_EDGES)],
                                                         merged_histogram[wire_key(name, F_COUNTS)])
    else:
        req[wire_key(name, F_CATEGORIES)] = list(merged_histogram[wire_key(name, F_CATEGORIES)])
        req[wire_key(name, F_OTHER)] = int(merged_histogram[wire_key(name, F_OTHER)])
    return req


def cell_layout(plan: EncodingPlan, request: dict[str, Any], column: str) -> CellLayout:
    """One column's cells in the two-way tables, from a pairs-phase request."""
    spec = next(c for c in plan.columns if c.name == column)
    if spec.type in ("numerical", "datetime"):
        return CellLayout(column, "numerical", edges=np.asarray(request[wire_key(column, F_PAIR_EDGES)], dtype=np.float64))
    return CellLayout(column, "categorical", categories=tuple(request[wire_key(column, F_CATEGORIES)]),
                      other=bool(request[wire_key(column, F_OTHER)]))


# -- site -------------------------------------------------------------------------------------
def site_statistics(
    df: pd.DataFrame, plan: EncodingPlan, phase: str, request: dict[str, Any], *,
    ledger: PrivacyLedger, noise: SecretSource | None = None, secure_share: int | None = None,
) -> dict[str, Any]:
    """One site's release for ``phase``. Every release is spent on ``ledger`` before it is computed
    into the message; the whole phase is checked against the budget first, so a refusal records nothing.
    Under DP every count is released with discrete Gaussian noise from ``noise`` (default: a fresh
    secret source, ``fedtab.privacy.secret``; never seeded). ``secure_share = t`` (the pairs phase only,
    when the caller masks the release for secure aggregation, ``fedtab.federation.secagg``): the noise is
    this site's share, ``1 / sqrt(t)`` of it, and the ledger records the noise of the sum."""
    if request.get(KEY_PHASE) != phase:
        raise ConfigError(f"The request is for phase {request.get(KEY_PHASE)!r}, not {phase!r}.")
    if secure_share is not None and phase != PHASE_PAIRS:
        raise ConfigError(f"Only the '{PHASE_PAIRS}' phase is released under secure aggregation, not {phase!r}.")
    specs = plan.domain_columns() if phase == PHASE_DOMAIN else plan.columns
    dp = plan.dp is not None
    z = plan.noise_multiplier
    thr_cols = {c.name for c in plan.threshold_columns()} if phase == PHASE_DOMAIN else set()
    ledger_phase = LEDGER_PHASE_PREFIX + phase
    # Check this phase and every later one at once, so a site short of budget refuses before its
    # first release rather than halfway through the encoding.
    later = plan.phases()[plan.phases().index(phase):]
    steps = sum(plan.releases(p) for p in later)
    profiles = len(plan.rounding_columns()) if PHASE_HISTOGRAM in later else 0
    if steps:
        ledger.remaining_check(phase=ledger_phase, noise_multiplier=z, steps=steps,
                               delta_cost=plan.threshold_delta * len(thr_cols),
                               target=f"{steps + profiles} release(s) of this and later phases",
                               extra=(GaussianEvent(z * ROUNDING_NOISE_FACTOR, 1.0, profiles),) if profiles else ())
    if dp and noise is None:
        noise = secret_source(f"encoding/{phase}")
    out: dict[str, Any] = {KEY_PHASE: phase}
    values: dict[str, np.ndarray] = {}  # histogram phase: each column's values, for its rounding profile
    if phase == PHASE_PAIRS:
        return {**out, **_pair_releases(df, plan, request, ledger=ledger, noise=noise, secure_share=secure_share)}
    for spec in specs:
        if spec.name not in df.columns:
            raise SchemaError(f"Column '{spec.name}' of the encoding plan is missing from the site's table.")
        numeric = spec.type in ("numerical", "datetime")
        x = numeric_values(df[spec.name], spec) if numeric else category_values(df[spec.name], spec)
        thresholded = spec.name in thr_cols
        ledger.spend(
            phase=ledger_phase, target=spec.name, noise_multiplier=z, sensitivity=1.0,
            mechanism=("thresholded_gaussian" if thresholded else "gaussian") if dp else "exact",
            delta_cost=plan.threshold_delta if thresholded else 0.0,
        )
        if phase == PHASE_DOMAIN:
            out.update(_domain_release(spec, x, plan, noise) if numeric else _union_release(spec, x, plan, noise))
        else:
            out.update(_histogram_release(spec, x, plan, request, noise))
            values[spec.name] = x
    if phase == PHASE_HISTOGRAM:
        for spec in plan.rounding_columns():
            zr = z * ROUNDING_NOISE_FACTOR
            ledger.spend(phase=ledger_phase, target=f"{spec.name} rounding", noise_multiplier=zr, sensitivity=1.0,
                         mechanism="gaussian" if dp else "exact")
            counts = rounding_counts(values[spec.name], spec)
            out[wire_key(spec.name, F_ROUNDING)] = _noisy_counts(counts, zr, noise) if dp else counts
    return out


def private_row_count(n_rows: int, plan: EncodingPlan, *, ledger: PrivacyLedger, noise: SecretSource) -> float:
    """A DP estimate of a site's row count (one release at the plan's noise multiplier, spent on
    ``ledger``; ``EncodingPlan.noise_multiplier`` budgets for it). It is for the site's own rules (the
    delta cap) and never leaves the site."""
    ledger.spend(phase=LEDGER_PHASE_PREFIX + "rows", mechanism="gaussian", noise_multiplier=plan.noise_multiplier,
                 sensitivity=1.0, target="row count (kept at the site, for its delta rule)")
    return float(_noisy_counts(np.array([int(n_rows)]), plan.noise_multiplier, noise)[0])


def rounding_counts(x: np.ndarray, spec: ColumnSpec) -> np.ndarray:
    """How many present values are multiples of 10, 5 (not 10), 2 (not 10) grid steps, or none of them."""
    k = np.round(x[~np.isnan(x)] / grid_step(spec)).astype(np.int64)
    return np.bincount(rounding_classes(k), minlength=len(ROUNDING_STEPS)).astype(np.float64)


def _pair_releases(df, plan, request, *, ledger, noise, secure_share: int | None = None) -> dict[str, Any]:
    measured = measured_pairs(request)
    layouts = {name: cell_layout(plan, request, name) for i in measured for name in plan.pairs[i]}
    codes = {}
    for name, lay in layouts.items():
        if name not in df.columns:
            raise SchemaError(f"Column '{name}' of the encoding plan is missing from the site's table.")
        spec = next(c for c in plan.columns if c.name == name)
        x = numeric_values(df[name], spec) if lay.kind == "numerical" else category_values(df[name], spec)
        codes[name] = lay.codes(x)
    out = {}
    scale = 1.0 if secure_share is None else 1.0 / math.sqrt(max(int(secure_share), 1))
    note = "" if secure_share is None or plan.dp is None else (
        f"; secure aggregation over at least {int(secure_share)} sites: this site's own noise share sigma "
        f"{plan.noise_multiplier * scale:.4g} (the sum's sigma {plan.noise_multiplier:.4g})")
    for i in measured:
        a, b = plan.pairs[i]
        ledger.spend(phase=LEDGER_PHASE_PREFIX + PHASE_PAIRS, target=f"{a} x {b}{note}",
                     noise_multiplier=plan.noise_multiplier, sensitivity=1.0,
                     mechanism="gaussian" if plan.dp is not None else "exact")
        out[pair_key(i, F_COUNTS)] = _noised(pair_counts(layouts[a], layouts[b], codes[a], codes[b]), plan, noise,
                                             scale=scale)
    return out


def _noisy_counts(counts: np.ndarray, sigma: float, noise: SecretSource) -> np.ndarray:
    """Whole-number counts plus discrete Gaussian noise (integers, as float64 for the wire)."""
    return noise.discrete_gaussian(np.asarray(counts), sigma).astype(np.float64)


def _noised(counts: np.ndarray, plan: EncodingPlan, noise: SecretSource | None, *, scale: float = 1.0) -> np.ndarray:
    return counts if plan.dp is None else _noisy_counts(counts, plan.noise_multiplier * scale, noise)


def _domain_release(spec, x, plan, noise) -> dict[str, Any]:
    if plan.dp is None:
        has = bool(np.any(~np.isnan(x)))
        return {wire_key(spec.name, F_MIN): float(np.nanmin(x)) if has else math.nan,
                wire_key(spec.name, F_MAX): float(np.nanmax(x)) if has else math.nan}
    return {wire_key(spec.name, F_COUNTS): _noised(magnitude_counts(x), plan, noise)}


def _union_release(spec, x, plan, noise) -> dict[str, Any]:
    keys, counts = np.unique(np.array([v for v in x if v is not None], dtype=object).astype(str), return_counts=True)
    noisy = _noised(counts.astype(np.float64), plan, noise)
    keep = noisy > plan.threshold if plan.dp is not None else np.ones(len(keys), dtype=bool)
    return {wire_key(spec.name, F_KEYS): [str(k) for k in keys[keep]],
            wire_key(spec.name, F_COUNTS): noisy[keep]}


def _histogram_release(spec, x, plan, request, noise) -> dict[str, Any]:
    name = spec.name
    if spec.type in ("numerical", "datetime"):
        edges = np.asarray(request[wire_key(name, F_EDGES)], dtype=np.float64)
        counts, missing = histogram_counts(x, edges)
        layout = {wire_key(name, F_EDGES): edges, wire_key(name, F_LOWER): float(request[wire_key(name, F_LOWER)]),
                  wire_key(name, F_UPPER): float(request[wire_key(name, F_UPPER)])}
    else:
        cats = list(request[wire_key(name, F_CATEGORIES)])
        other = bool(request[wire_key(name, F_OTHER)])
        index = {c: i for i, c in enumerate(cats)}
        present = np.array([v is not None for v in x], dtype=bool)
        idx = np.array([index.get(v, len(cats)) for v in x[present]], dtype=np.int64)
        if not other and np.any(idx == len(cats)):
            bad = sorted({v for v in x[present] if v not in index})
            raise SchemaError(f"Column '{name}': value(s) {bad[:5]} are outside its domain {cats[:10]}; "
                              "fix the data or the schema's 'categories'.")
        counts = np.bincount(idx, minlength=len(cats) + int(other)).astype(np.float64)
        missing = float((~present).sum())
        layout = {wire_key(name, F_CATEGORIES): cats, wire_key(name, F_OTHER): int(other)}
    noisy = _noised(np.append(counts, missing), plan, noise)  # one vector: a record is in exactly one cell
    return {**layout, wire_key(name, F_COUNTS): noisy[:-1], wire_key(name, F_MISSING): float(noisy[-1])}


# -- coordinator: merge (pure) --------------------------------------------------------------------
def merge_statistics(plan: EncodingPlan, phase: str, site_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the sites' releases of ``phase`` into one dict (pure; post-processing only)."""
    if not site_stats:
        raise ConfigError("merge_statistics needs the statistics of at least one site.")
    for s in site_stats:
        if s.get(KEY_PHASE) != phase:
            raise ConfigError(f"A site sent statistics of phase {s.get(KEY_PHASE)!r} where {phase!r} was expected.")
    # A securely summed release counts as the sites in it (``KEY_N_SITES``; the coordinator strips the key
    # from sites' own replies): its cells carry each one's noise.
    n = sum(int(s.get(KEY_N_SITES, 1)) for s in site_stats)
    noise_sd = plan.noise_multiplier * math.sqrt(n)
    out: dict[str, Any] = {KEY_PHASE: phase, KEY_N_SITES: n}
    if phase == PHASE_DOMAIN:
        for spec in plan.domain_columns():
            out.update(_merge_domain(spec, plan, site_stats, noise_sd))
        return out
    if phase == PHASE_PAIRS:
        for i in (i for i in range(len(plan.pairs)) if pair_key(i, F_COUNTS) in site_stats[0]):  # the measured ones
            sizes = {len(np.asarray(s[pair_key(i, F_COUNTS)])) for s in site_stats}
            if len(sizes) != 1:
                raise ConfigError(f"Pair {list(plan.pairs[i])}: sites sent tables of different sizes {sorted(sizes)}.")
            out[pair_key(i, F_COUNTS)] = norm_sub(sum(np.asarray(s[pair_key(i, F_COUNTS)], dtype=np.float64)
                                                      for s in site_stats))
            out[pair_key(i, F_NOISE_SD)] = noise_sd
        return out
    # Per column, the cells and the missing count form one vector (a record is in exactly one of them).
    raw = {}
    for spec in plan.columns:
        name = spec.name
        layout_keys = [wire_key(name, f) for f in (F_EDGES, F_LOWER, F_UPPER)] if spec.type in ("numerical", "datetime") \
            else [wire_key(name, F_CATEGORIES), wire_key(name, F_OTHER)]
        for k in layout_keys:
            first = site_stats[0][k]
            if any(not np.array_equal(np.asarray(s[k]), np.asarray(first)) for s in site_stats[1:]):
                raise ConfigError(f"Column '{name}': sites used different histogram layouts ({k}).")
            out[k] = first
        cells = sum(np.asarray(s[wire_key(name, F_COUNTS)], dtype=np.float64) for s in site_stats)
        raw[name] = np.append(cells, float(sum(s[wire_key(name, F_MISSING)] for s in site_stats)))
    # Under DP every vector's total is the row count plus the noise of all its cells (sd ~360 records
    # for a 40-cell column at epsilon 1 on the heart hospitals, whose union has 920 rows: one such
    # column read 310). Norm-sub then keeps each vector non-negative with the row count estimated from
    # every column (dominated by the few-cell ones), zeroing the cells that only hold noise; the
    # unclipped cells of numerical columns are kept too, for the mixture fit (``F_RAW``). Exact (non-DP)
    # counts come back unchanged.
    rows = row_estimate(list(raw.values())) if plan.dp is not None else None
    for spec in plan.columns:
        name = spec.name
        merged = norm_sub(raw[name], total=rows)
        out[wire_key(name, F_COUNTS)] = merged[:-1]
        out[wire_key(name, F_MISSING)] = float(merged[-1])
        out[wire_key(name, F_NOISE_SD)] = noise_sd
        if plan.dp is not None and spec.type in ("numerical", "datetime"):
            out[wire_key(name, F_RAW)] = raw[name][:-1]
    for spec in plan.rounding_columns():
        key = wire_key(spec.name, F_ROUNDING)
        out[key] = norm_sub(sum(np.asarray(s[key], dtype=np.float64) for s in site_stats))
    return out


def _merge_domain(spec, plan, site_stats, noise_sd) -> dict[str, Any]:
    name = spec.name
    if spec.type == "categorical":
        keys = sorted({k for s in site_stats for k in s[wire_key(name, F_KEYS)]})
        return {wire_key(name, F_CATEGORIES): keys}
    if plan.dp is None:
        lows = [s[wire_key(name, F_MIN)] for s in site_stats if not math.isnan(s[wire_key(name, F_MIN)])]
        highs = [s[wire_key(name, F_MAX)] for s in site_stats if not math.isnan(s[wire_key(name, F_MAX)])]
        lower, upper = (min(lows), max(highs)) if lows else (math.nan, math.nan)
    else:
        counts = sum(np.asarray(s[wire_key(name, F_COUNTS)]) for s in site_stats)
        found = bounds_from_magnitude_counts(counts, threshold=BOUNDS_THRESHOLD_SIGMAS * noise_sd,
                                             extend=EXTEND_SIGMAS * noise_sd)
        if found is None:
            raise ConfigError(
                f"Column '{name}' is declared without bounds, and its DP range could not be read above the noise "
                f"(no magnitude cell of the sites' summed counts passes {BOUNDS_THRESHOLD_SIGMAS:g} noise sds): the "
                "sites hold too few rows for this budget. Declare the column's public 'lower' and 'upper' in the "
                "schema (no privacy cost), or raise epsilon or 'privacy.preprocessing_share'.")
        lower, upper = found
    lower, upper = finalize_bounds(spec, lower, upper)
    return {wire_key(name, F_LOWER): lower, wire_key(name, F_UPPER): upper}

"""Is a site's table garbage? A check on the one-way histograms each site already releases in the encoding.

A site whose table conforms to the declared schema but holds no real rows (values drawn uniformly in the
declared bounds and categories) passes schema agreement. Its ``histogram`` release of the federated
encoding (one noisy count vector per column, the coordinator's already: no new release, no budget) then
looks like the uniform distribution over the declared domain in column after column, and unlike the other
sites' pooled histograms. Real sites of a non-IID consortium also differ from the others, strongly in some
columns (a site cut by age quartile, a hospital with no cholesterol values), but they are not uniform in
most of their columns.

The test, over every column with at least two cells: the chi-square distance of the site's present-value
counts (a numerical column's cells read in ``GROUPS`` runs of neighbouring cells: a few rows over 200
cells give no test) from (a) the uniform distribution over the declared domain (numerical cells in
proportion to their width, categories alike) and (b) the other sites' pooled distribution, each cell's
variance being the multinomial one plus the public DP noise (``plan.noise_multiplier`` per cell; for the
pooled reference also its own noise and sampling), summed over the columns. A site is named when its sum
is consistent with uniform (below the chi-square quantile ``1 - ALPHA`` for its cells) and inconsistent
with the other sites (above it, and at least ``RATIO`` times its distance from uniform), and only where
the test can tell: a table of its rows distributed like the others' would be expected to read beyond the
limit from uniform. Where the noise hides even that, reading "consistent with uniform" says nothing,
and a site unlike the others (a non-IID site) was named on it: on a toy table of 3 sites with very
different shares, 1 of 160 noisy screens at 300 rows a site.

Measured (``benchmarks/bench_hostile.py --detector``, 10 draws of the DP noise, each site in turn made
garbage): no real site named in 120 honest runs over 6 non-IID consortia (heart's hospitals; Adult, bank,
Fair, breast cancer, penguins cut by a column's quartiles), epsilon 1 and non-DP; every uniform garbage
site named without DP, and at epsilon 1 on Adult, bank and Fair (700-1,300 rows a site), none on heart,
breast cancer and penguins (under 250 rows a site).

Where the histograms are summed securely (``fedtab.federation.secure_encoding``) the coordinator holds
no site's release: each site runs ``verdict`` on its own release against the sum less its own, which are
the other sites' releases summed, the same statistic.

It cannot see a table whose columns are real but shuffled independently (its one-way histograms are the
real ones; only a two-way release would show it), and under strong noise (small sites, small epsilon) it
names nothing: the noise hides the difference. Post-processing of DP releases only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALPHA = 1e-4
RATIO = 2.0
GROUPS = 10  # a numerical column's cells are read in at most this many runs of neighbouring cells
# The reference is the other sites: with one other, either could be the odd one. Fewer sites: no screen
# (here, at each site under secure aggregation, and at the coordinator that asks them).
MIN_SITES = 3
WHERE = "the encoding's statistics"  # where a named site is left out, in the coordinator's notes and errors


def garbage_sites(plan, histogram: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{site: reason}`` for each site whose ``histogram`` release looks like uniform garbage (see the
    module docstring); ``plan`` is the encoding plan (public), ``histogram`` the sites' releases."""
    from fedtab.transform.plan import F_COUNTS, wire_key

    sites = sorted(histogram)
    if len(sites) < MIN_SITES:
        return {}
    out = {}
    for site in sites:
        pooled = {spec.name: np.sum([np.asarray(histogram[s][wire_key(spec.name, F_COUNTS)], dtype=np.float64)
                                     for s in sites if s != site], axis=0) for spec in plan.columns}
        reason = verdict(plan, histogram[site], pooled, n_others=len(sites) - 1)
        if reason is not None:
            out[site] = reason
    return out


def _cells(plan, release: dict[str, Any], pooled: dict[str, np.ndarray]):
    """Per column with at least two cells: (the release's present-value counts, the uniform distribution
    over the declared domain, the others' pooled counts (clipped at 0), each cell's width in fine cells),
    a numerical column's cells read in ``GROUPS`` runs of neighbours."""
    from fedtab.transform.plan import F_COUNTS, F_EDGES, wire_key

    for spec in plan.columns:
        if spec.name == plan.site_column:  # each site's own name: says nothing about its rows
            continue
        c = np.asarray(release[wire_key(spec.name, F_COUNTS)], dtype=np.float64)
        if c.size < 2:
            continue
        if spec.type in ("numerical", "datetime"):
            uniform = np.diff(np.asarray(release[wire_key(spec.name, F_EDGES)], dtype=np.float64))
        else:  # declared categories alike; an 'other' cell (undeclared values) holds none of a uniform draw
            uniform = np.ones(c.size)
            if spec.categories and c.size > len(spec.categories):
                uniform[len(spec.categories):] = 0.0
        uniform = uniform / uniform.sum()
        pooled_c = np.asarray(pooled[spec.name], dtype=np.float64)
        if spec.type in ("numerical", "datetime") and c.size > GROUPS:  # sparse cells: read runs of them
            runs = np.array_split(np.arange(c.size), GROUPS)
            width = np.array([len(r) for r in runs], dtype=np.float64)
            c, uniform, pooled_c = (np.array([v[r].sum() for r in runs]) for v in (c, uniform, pooled_c))
        else:
            width = np.ones(c.size)
        yield c, uniform, np.clip(pooled_c, 0.0, None), width


def _limit(cells: int) -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(1.0 - ALPHA, cells)) if cells else math.inf


def verdict(plan, release: dict[str, Any], pooled: dict[str, np.ndarray], *, n_others: int) -> str | None:
    """Why one site's ``histogram`` release looks like uniform garbage, or None: its distances from the
    uniform distribution and from ``pooled`` (per column, the other ``n_others`` sites' summed counts;
    each with every site's full noise) against the limit (see the module docstring). A site under secure
    aggregation reads the others' sum as the secure sum less its own release
    (``fedtab.federation.secure_encoding``)."""
    var_noise = _var_noise(plan)
    d_u = d_o = power = 0.0
    cells = 0
    for c, uniform, pooled_c, width in _cells(plan, release, pooled):
        n, n_o = max(float(c.sum()), 0.0), float(pooled_c.sum())
        if n_o <= 0.0:
            continue
        p_o = pooled_c / n_o
        noise = var_noise * width  # a run of cells carries each cell's noise
        d_u += float(np.sum((c - n * uniform) ** 2 / (n * uniform + noise + 1.0)))
        d_o += float(np.sum((c - n * p_o) ** 2 / (
            n * p_o + noise + n ** 2 * (n_others * noise + n_o * p_o) / n_o ** 2 + 1.0)))
        power += _excess(n, p_o, uniform, noise)
        cells += c.size
    limit = _limit(cells)
    if d_u <= limit < d_o and d_o >= RATIO * d_u and cells + power > limit:
        return (f"its one-way histograms match random values drawn uniformly in the declared bounds and "
                f"categories (chi-square {d_u:.0f} over {cells} cells, limit {limit:.0f}) and not the other "
                f"sites' (chi-square {d_o:.0f}): a table of random values, not real rows")
    return None


def _var_noise(plan) -> float:
    """One histogram cell's noise variance in a site's release (0 without DP)."""
    return (float(plan.noise_multiplier) if plan.dp is not None else 0.0) ** 2


def _excess(n: float, p_o: np.ndarray, uniform: np.ndarray, noise: np.ndarray) -> float:
    """How far from uniform a table of ``n`` rows distributed as ``p_o`` reads (its chi-square's expected
    excess over the cells): where the noise hides that, 'consistent with uniform' says nothing."""
    return float(np.sum((n * p_o - n * uniform) ** 2 / (n * uniform + noise + 1.0)))


def power_note(plan, histogram: dict[str, dict[str, Any]], *, summed: str | None = None) -> str | None:
    """What the coordinator says where the screen cannot tell a table of random values from real rows at a
    site of the average size (``can_tell`` on the sites' summed histograms: ``histogram[summed]`` where they
    were summed securely, else the sum of the sites' releases), or None."""
    from fedtab.transform.plan import KEY_N_SITES

    if summed is not None:
        total, n_sites = histogram[summed], int(histogram[summed].get(KEY_N_SITES, 1))
    else:
        from fedtab.federation.secure_encoding import count_keys

        first = next(iter(histogram.values()))
        total = {**first, **{k: np.sum([np.asarray(r[k], dtype=np.float64) for r in histogram.values()], axis=0)
                             for k in count_keys(first)}}
        n_sites = len(histogram)
    if n_sites < MIN_SITES or can_tell(plan, total, n_sites):
        return None
    return ("garbage screen: at these sites' sizes and budget a table of random values cannot be told from real "
            "rows (its noisy histograms would not read apart from uniform), so the screen can name no site")


def can_tell(plan, release: dict[str, Any], n_sites: int) -> bool:
    """Whether the screen can tell a table of random values from real rows at a site of the average size
    of ``release`` (the sites' summed histograms) shared by ``n_sites``."""
    from fedtab.transform.plan import F_COUNTS, wire_key

    var_noise = _var_noise(plan)
    pooled = {spec.name: np.asarray(release[wire_key(spec.name, F_COUNTS)], dtype=np.float64) for spec in plan.columns}
    power, cells = 0.0, 0
    for _, uniform, pooled_c, width in _cells(plan, release, pooled):
        total = float(pooled_c.sum())
        if total <= 0.0:
            continue
        power += _excess(total / max(n_sites, 1), pooled_c / total, uniform, var_noise * width)
        cells += uniform.size
    return cells + power > _limit(cells)


def leave_out_garbage(plan, histogram: dict[str, dict[str, Any]], *, min_sites: int, progress=None) -> set[str]:
    """The coordinator's screen of the encoding's histogram releases: the sites ``garbage_sites`` names,
    named with the reason and left out when at least ``min_sites`` remain (like a site whose table does not
    conform to the schema); otherwise the run stops (``FederationError``)."""
    from fedtab.federation.agreement import leave_out

    named = garbage_sites(plan, histogram)
    return set(leave_out(named, going_on=len(histogram) - len(named), of=len(histogram), min_sites=min_sites,
                         where=WHERE, progress=progress))


# -- declared site sizes --------------------------------------------------------------------------------
# A consortium may declare each site's most rows (public: ``rows_at_most`` in a run configuration,
# ``site_rows_at_most=`` in the API). A site whose code inflates every count it sends, its encoding
# histograms included, passes every consistency check (its counts agree with each other) and reads as a
# larger site; against a declared size it does not. Without secure aggregation the site is named and left
# out; under it the sum of the declared sites is checked, and a failing sum stops the job (no site can be
# named). What it bounds: no site weighs more than its declaration (plus the noise), so the tighter the
# declarations, the less an inflating site can move the model.
SIZE_Z = 5.0  # noise sds of slack, as the row check (``marginals.ROWS_Z``): ~1 false alarm in 1.7 million
SIZES_WHERE = "the declared site sizes"


def _over(rows: float, cap: float, sd: float, dp: bool) -> bool:
    """Whether ``rows`` counts more than ``cap`` beyond the noise (without DP: beyond 1% and one row)."""
    return rows > cap + (SIZE_Z * sd if dp else max(0.01 * cap, 1.0))


def oversized_sites(plan, histogram: dict[str, dict[str, Any]], caps: dict[str, int]) -> dict[str, str]:
    """``{site: reason}`` for each site whose histogram release counts more rows than ``caps`` declares."""
    from fedtab.transform.statistics import histogram_rows, rows_noise_sd

    out = {}
    for site in sorted(histogram):
        if site not in caps:
            continue
        rows, sd = histogram_rows(plan, histogram[site]), rows_noise_sd(plan, histogram[site])
        if _over(rows, float(caps[site]), sd, plan.dp is not None):
            out[site] = (f"its encoding histograms count about {rows:.0f} rows, more than the {caps[site]} the "
                         "consortium declares for it (rows_at_most)" + (f", beyond {SIZE_Z:g} noise sds ({sd:.0f} rows "
                                                                        "each)" if plan.dp is not None else ""))
    return out


def summed_oversize(plan, release: dict[str, Any], caps: dict[str, int], sites: list[str]) -> str | None:
    """Why the summed histograms of ``sites`` count more rows than their declared sizes allow, or None
    (also None where a site in the sum declares none: the sum has no bound)."""
    from fedtab.transform.plan import KEY_N_SITES
    from fedtab.transform.statistics import histogram_rows, rows_noise_sd

    if not sites or any(s not in caps for s in sites):
        return None
    rows = histogram_rows(plan, release)
    sd = rows_noise_sd(plan, release) * math.sqrt(int(release.get(KEY_N_SITES, len(sites))))
    cap = float(sum(caps[s] for s in sites))
    if not _over(rows, cap, sd, plan.dp is not None):
        return None
    return (f"the sites' summed encoding histograms count about {rows:.0f} rows, more than the {cap:.0f} the "
            f"consortium declares for these {len(sites)} sites (rows_at_most)"
            + (f", beyond {SIZE_Z:g} noise sds ({sd:.0f} rows)" if plan.dp is not None else "")
            + ": a site's code inflates its counts, or a declaration is too small; under secure aggregation the "
            "coordinator cannot say which site")

"""Federated training of the marginal-based model ("mst"; ``fedtab.models.marginal``).

After schema agreement and the federated encoding, the coordinator sends three ``measure`` requests;
each site answers with noisy counts of its training rows on the public discretisation, every release
on its ledger before it leaves (discrete Gaussian noise from the secret source, sensitivity 1 per
table: a row adds one to one cell of each table):

1. ``one-way``: every column's counts; under DP a numerical column's cells also in coarser levels (2, 4,
   8, ... runs of adjacent cells, each level one more table: ``LEVELS``), from which the coordinator
   estimates the fine counts by non-negative least squares (``fine_estimate``), then takes off their excess
   over the row count read off every table (``row_estimate``) by norm-sub (``_with_levels``) and empties the
   runs of cells far from the rows that do not stand above their noise (``isolated_runs``). Declared bounds are often
   far wider than the data (ages 0-120, cholesterol 50-1000), and with the fine cells alone the noise's
   positive part in the many empty cells held mass there and moved the means toward the middle of the
   bounds (heart at epsilon 1, 3 seeds: synthetic mean age 62 against a real 53.5); a coarse cell's one
   count tells an empty region from noise better (57, 4 seeds; column shapes 0.865 against 0.854);
2. ``select``: one noisy vector of pair scores per site: for every pair, the L1 distance between the
   site's two-way table and what its own one-way shares predict (model option ``select_shares="site"``:
   a row moves each score by at most 4: L2 sensitivity 4 sqrt(pairs)) or, with
   ``"consortium"``, what the consortium's shares (public after step 1) predict for the site's DP row
   estimate (at most 1: sqrt(pairs); it also scores how far a site's shares differ from the consortium's),
   or with ``"pooled"`` the consortium's less the larger of the two columns' own distances (2 sqrt(pairs);
   what the pooled table depends, across sites too: ``fedtab.models.marginal``); ``"auto"`` (the default,
   ``selection_mode``): "site" where its noise can be read, else "pooled". The coordinator sums the sites'
   vectors (local scores, as FLAIM reads heterogeneous sites: a pair that depends at any site scores there)
   and keeps a maximum spanning tree of pairs. Without DP each site sends its exact two-way
   tables instead and the coordinator scores the pooled ones by mutual information (``excess_information``):
   on non-IID sites the local scores also reward what merely differs between sites (4 sites against 1,
   breast cancer 0.881 against 0.915);
   Under DP with a declared target, the selection is skipped where its noise would swamp the scores
   (``STAR_NOISE``): the tree is the star on the target, and the selection's budget measures the one-way
   tables a second time (``AGAIN``), averaged with the first;
3. ``measure``: the tree's pairs again, at less noise.

The training budget (what the encoding left of each site's epsilon) is split over the three by the
model option ``shares`` (default 0.25 / 0.25 / 0.5), equally among the releases of a request; each site
calibrates the noise to its own ledger (the same plan gives every site the same noise). Private-PGM
(``mbi``, mirror descent) then estimates a distribution consistent with every measurement, and the
model keeps its tree marginals. Without DP the counts are exact (a non-DP job, allowed by the sites).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from fedtab.federation import secagg
from fedtab.models.marginal import (
    Discretisation, MarginalModel, auto_bins, coarse_codes, discretise, fine_codes, grouped, marginal_counts,
    model_options, norm_sub, renormalised, spanning_tree,
)

MEASURE = "measure"
PHASES = ("one-way", "select", "measure")
# Under the star on the target (no selection, ``STAR_NOISE``): the one-way tables measured a second time with
# the selection's budget (its share of each site's epsilon), averaged with the first.
AGAIN = "one-way again"
# Secure aggregation's rounds (fedtab.federation.secagg): keys and shares once per job, unmask after each phase.
KEYS, SHARES, UNMASK = "keys", "shares", "unmask"
SECURE_ROUNDS = (KEYS, SHARES, UNMASK)
SECAGG_CACHE = "secagg:"
# A nullable column's missing code keeps its mass only where its summed noisy count stands this many noise
# sds above zero (a declared-nullable column without missing values gained 0.5-4% missing cells from the
# noise otherwise). At 2 sds one column in ~40 truly without missing values still kept a share (the test
# of three such columns failed about 1 run in 15); at 3, about 1 in 700.
MISSING_Z = 3.0
# Under DP with a declared target, the selection is skipped when its noise sd would exceed this share of the
# row estimate (a pair's L1 score is at most 2 x rows; a dependence of total variation 0.1 scores 0.2 x rows):
# the tree is the star on the target, and the selection's budget measures the one-way tables again. Measured at
# epsilon 1 on 4 sites (paired runs, the selection's budget still spent; quality / TSTR, selected tree against
# star): heart (3 seeds) 0.791 / 0.677 against 0.804 / 0.835, breast cancer (2) 0.706 / 0.895 against 0.765 /
# 0.944, diabetes (2) 0.812 / 0.488 against 0.840 / 0.498, penguins (3) 0.713 / 0.649 against 0.680 / 0.793
# (its target, sex, depends on few columns: the star loses the others' pairs). Adult, bank and Fair (selection
# noise 0.07-0.13 x rows) keep the selection. benchmarks/bench_tables.py (3 seeds, tag target-star, with the
# selection's budget moved to the measurement): heart 0.807 / 0.851, breast cancer 0.782 / 0.958, penguins
# 0.732 / 0.881, diabetes 0.818 / 0.502 (was 0.842 / 0.514), against centralized MST's 0.775 / 0.756, 0.718 /
# 0.821, 0.713 / 0.761, 0.791 / 0.464. The selection's budget to the one-way tables instead (one-way and tree
# measurement 0.5 / 0.5 of the training budget, against 0.25 / 0.75; 3 seeds each, tag isolated-core against
# exp-ow50): heart 0.819 / 0.834 against 0.831 / 0.834, breast cancer 0.758 / 0.956 against 0.787 / 0.966,
# penguins 0.729 / 0.863 against 0.737 / 0.872, diabetes 0.855 / 0.519 against 0.851 / 0.503; the walk-through's
# ST depression means within 10% in 4 of 8 runs against 3 of 8 (the within-run values come from the one-way).
STAR_NOISE = 0.2
# Under DP, a numerical column of c fine cells is also measured in runs of c / 2**k adjacent cells, for the
# levels with at least 2 runs and fewer runs than cells: up to ``LEVELS`` coarser tables per column.
LEVELS = 4
# After the estimate, where a column's core (the shortest run of cells holding ``CORE_MASS`` of its estimated
# rows) spans at most ``CORE_SPAN`` of its cells (bounds far wider than the data), a run of non-empty cells
# lying outside the core, at least ``GAP`` empty cells away from it, whose estimated rows are fewer than
# ``ISOLATED_Z`` noise sds of its own sum (``LONE_CELL_Z`` for a run of one cell), is emptied (``isolated_runs``).
CORE_MASS, CORE_SPAN, GAP, ISOLATED_Z, LONE_CELL_Z = 0.8, 1 / 3, 2, 1.0, 2.0


def level_groups(n_cells: int, missing: bool) -> list[list[int]]:
    """The coarser levels of a numerical column's fine cells: for each level, every code's run (the cells
    split into 2, 4, 8, ... runs of adjacent cells of equal number; the missing code keeps a code of its
    own, last). Public: depends on the discretisation only."""
    out = []
    for k in range(1, LEVELS + 1):
        runs = 2 ** k
        if runs >= n_cells:
            break
        g = (np.arange(n_cells) * runs) // n_cells
        out.append([int(x) for x in g] + ([runs] if missing else []))
    return out


def fine_estimate(fine: np.ndarray, levels: list[tuple[list[int], np.ndarray]]) -> np.ndarray:
    """A column's counts from its noisy fine counts and the noisy counts of its coarser levels (every table
    with the same noise), by non-negative least squares (post-processing; returns counts >= 0).

    Tried and dropped: emptying every half and quarter of the cells whose estimate stood under 2 noise
    sds (the missing code's rule, ``MISSING_Z``). It brought the heart means closer (cholesterol 302
    against 337 at epsilon 1, 4 seeds; real 247) but cost Adult's pair trends 0.705 against 0.789 (sd
    0.01-0.015): real tails (capital gain's) went with the noise."""
    from scipy.optimize import nnls

    fine = np.asarray(fine, dtype=float)
    design = levels_design(fine.size, [groups for groups, _ in levels])
    rhs = np.concatenate([fine, *(np.asarray(counts, dtype=float) for _, counts in levels)])
    return nnls(design, rhs, maxiter=50 * fine.size)[0]


def levels_design(n_codes: int, levels: list) -> np.ndarray:
    """The tables a column's one-way phase measures, as rows over its ``n_codes`` codes: the fine table
    (the identity), then each coarser level (a row per run, 1 on the run's codes)."""
    design = [np.eye(n_codes)]
    for groups in levels:
        g = np.asarray(groups, dtype=np.int64)
        a = np.zeros((int(g.max()) + 1, n_codes))
        a[g, np.arange(n_codes)] = 1.0
        design.append(a)
    return np.vstack(design)


def sum_sds(n_codes: int, levels: list[list[int]]) -> np.ndarray:
    """The covariance, in units of the noise variance, of the least-squares estimate of a column's cells
    from its fine table and its coarser ``levels`` (each table with the same noise): a run of cells sums
    with sd ``sqrt(a' C a)`` noise sds. Public: depends on the discretisation only."""
    x = levels_design(n_codes, levels)
    return np.linalg.inv(x.T @ x)


def isolated_runs(cells: np.ndarray, cov: np.ndarray, sd: float) -> np.ndarray:
    """``cells`` (estimated counts of a numerical column, >= 0) without the runs that are most likely noise:
    where the core (the shortest run of cells holding ``CORE_MASS`` of the counts) spans at most
    ``CORE_SPAN`` of the cells, a run of non-empty cells (runs closer than ``GAP`` empty cells count as one)
    lying outside the core by at least ``GAP`` cells, whose count is under ``ISOLATED_Z`` times the noise
    sd of its sum (``cov``: ``sum_sds``; ``sd``: one table's noise), or ``LONE_CELL_Z`` times where the
    run is one cell (among the many empty cells of wide bounds the noise's largest excursion is such a
    cell; a real run of rows spreads over its neighbours). The cells' total is kept (the others are scaled
    up). Post-processing.

    Declared bounds are often far wider than the data (oldpeak -10..10, cholesterol 50-1000) and a noise
    spike the norm-sub left in an empty region, far from every row, moved a mean by tenths of its sd. The
    data's own tails and second modes are runs the core does not hold: they stay where they stand above
    the noise. benchmarks/bench_one_way.py simulates the one-way phase at epsilon 1 on 4 sites on every
    numerical column of the 7 tables of benchmarks/bench_tables.py (30 draws; mean bias of a column's mean
    in its sds / distance of the distributions, KS; rule off and on): heart 0.21 / 0.091 and 0.14 / 0.089,
    Adult 0.061 / 0.031 and 0.069 / 0.033, bank 0.35 / 0.033 and 0.072 / 0.030, breast cancer 0.44 /
    0.223 and 0.38 / 0.232, penguins 0.79 / 0.147 and 0.15 / 0.138, diabetes 0.18 / 0.030 and 0.057 /
    0.029. Variants tried with the same simulation while choosing the rule: ``LONE_CELL_Z`` 1 (heart's
    bias 0.22 against 0.19, bank 0.12 against 0.07, diabetes 0.10 against 0.07); without the ``CORE_SPAN``
    condition, on tables whose bounds the data fill (the data's range rounded outward: breast cancer,
    penguins) real runs went (benchmarks/bench_tables.py, 3 seeds: penguins' quality 0.684 against 0.732
    before the rule); at 2 sds for every run the real positive capital losses of Adult (an isolated run of
    4.7% of the rows) went too (KS 0.049 against 0.021); keeping only the largest run, breast cancer's and
    penguins' KS rose to 0.35 / 0.32."""
    c = np.asarray(cells, dtype=float)
    n, total = c.size, float(c.sum())
    held = c > 1e-9 * max(total, 1.0)
    if total <= 0 or held.sum() < 2:
        return c
    runs, i = [], 0
    while i < n:
        if not held[i]:
            i += 1
            continue
        j = i
        while True:
            ahead = np.flatnonzero(held[j + 1:j + 1 + GAP])
            if ahead.size == 0:
                break
            j += int(ahead[0]) + 1
        runs.append((i, j))
        i = j + 1
    if len(runs) < 2:
        return c
    cum = np.cumsum(c / total)
    core = (0, n - 1)
    for a in range(n):
        b = int(np.searchsorted(cum, cum[a] - c[a] / total + CORE_MASS - 1e-12))
        if b < n and b - a < core[1] - core[0]:
            core = (a, b)
    if core[1] - core[0] + 1 > CORE_SPAN * n:  # the data fill much of the bounds: no region is far from them
        return c
    out = c.copy()
    for a, b in runs:
        if b >= core[0] - GAP and a <= core[1] + GAP:
            continue
        ones = np.zeros(cov.shape[0])
        ones[a:b + 1] = 1.0
        z = LONE_CELL_Z if int((c[a:b + 1] > 0).sum()) == 1 else ISOLATED_Z
        if c[a:b + 1].sum() < z * sd * math.sqrt(float(ones @ cov @ ones)):
            out[a:b + 1] = 0.0
    return out * (total / out.sum()) if out.sum() > 0 else c


def _factors(counts: list[int], shares: list[float]) -> list[float]:
    """Noise of each phase relative to the first: a phase's zCDP share split over its releases."""
    r = [math.sqrt(max(k, 1) / s) for k, s in zip(counts, shares)]
    return [x / r[0] for x in r]


def pair_scores(tables: list[np.ndarray], pairs: list[tuple[int, ...]], shares: list[np.ndarray], *,
                rows: float, shift_free: bool = False) -> np.ndarray:
    """Each pair's L1 distance between a site's two-way table and ``rows`` x the product of the one-way
    ``shares``. With public shares and a public ``rows`` one row more or less moves one cell of each table
    by 1: each score by at most 1 (``score_sensitivity``; ``tests/test_marginal_model.py`` checks it).

    ``shift_free`` (``select_shares = "pooled"``): less the larger of the two columns' own L1 distances
    from ``rows`` x their shares (what the site's one-way counts differ from the consortium's, which the
    pair's distance holds whatever the dependence), so that summed over the sites a pair scores what the
    pooled table depends, within the sites and across them. Each of the two terms moves by at most 1 a
    row: the score by at most 2."""
    out = []
    for t, (a, b) in zip(tables, pairs):
        t = np.asarray(t, dtype=float)
        score = float(np.abs(t - rows * np.outer(shares[a], shares[b]).ravel()).sum())
        if shift_free:
            grid = t.reshape(len(shares[a]), len(shares[b]))
            score -= max(float(np.abs(grid.sum(axis=1) - rows * shares[a]).sum()),
                         float(np.abs(grid.sum(axis=0) - rows * shares[b]).sum()))
        out.append(score)
    return np.array(out)


def score_sensitivity(select_shares: str, pairs: int) -> float:
    """The L2 sensitivity of a site's vector of ``pairs`` scores (``pair_scores``). Against public shares
    for a public row count (the site's DP row estimate) a row moves only the two-way table, one cell by 1:
    each score by at most 1 ("consortium"), or 2 less a one-way distance that moves by 1 too ("pooled");
    against the site's own shares and rows, which the row moves too, by at most 4 ("site")."""
    return {"consortium": 1.0, "pooled": 2.0, "site": 4.0}[select_shares] * math.sqrt(pairs)


def selection_mode(option: str, sd: float, pairs: int, rows: float, *, dp: bool) -> str:
    """The scores a job's selection asks the sites for (model option ``select_shares``; public: the noise
    per unit of sensitivity ``sd``, the pair count and the DP row estimate). "auto": each site's own shares
    ("site") where their scores' noise sd is at most ``STAR_NOISE`` x the rows, else the consortium's less
    the one-way distances ("pooled", half the sensitivity: ``score_sensitivity``). Without DP the sites send
    their exact tables and no score is computed: "site"."""
    if option != "auto":
        return option
    if not dp or sd * score_sensitivity("site", pairs) <= STAR_NOISE * rows:
        return "site"
    return "pooled"


def public_shares(site: str, shares, sizes) -> list[np.ndarray]:
    """The consortium's one-way shares a select request carries, checked before anything is computed: one
    vector per column, of its codes' number, finite, non-negative and summing to 1 (what else would move the
    scores off what ``score_sensitivity`` bounds, or off the scale the noise is read on)."""
    from fedtab.errors import ConfigError

    try:
        out = [np.asarray(x, dtype=float) for x in shares]
    except (TypeError, ValueError):
        out = []
    if (len(out) != len(sizes) or any(x.shape != (k,) for x, k in zip(out, sizes))
            or not all(np.isfinite(x).all() and (x >= 0).all() and abs(float(x.sum()) - 1.0) < 1e-6 for x in out)):
        raise ConfigError(f"site '{site}': the select request's one-way shares are not one share vector per "
                          "column, of its cells' number, non-negative and summing to 1", public=True)
    return out


def public_rows(site: str, state: dict) -> float:
    """The row count a site's scores against public shares predict for: its own DP row estimate from the
    encoding (``state["rows_estimate"]``, post-processing of a release on its ledger), never its exact
    count, which would move the prediction with a row and double the sensitivity ``score_sensitivity``
    charges for."""
    rows = state.get("rows_estimate")
    if rows is None or not math.isfinite(float(rows)):
        from fedtab.errors import FederationError

        raise FederationError(f"site '{site}': a pair-score request before this site's encoding row estimate "
                              "(the coordinator skipped the encoding's histogram phase): run the job again",
                              public=True)
    return max(float(rows), 1.0)


# -- at a site ----------------------------------------------------------------------------------------
def site_measure(site: str, body: dict[str, Any], state: dict, *, train, ledger, cache: dict) -> dict[str, Any]:
    """Noisy counts of the requested marginals of this site's training rows (see the module docstring)."""
    from fedtab.errors import ConfigError
    from fedtab.privacy.accountant import noise_multiplier_for
    from fedtab.privacy.secret import secret_source
    from fedtab.transform.statistics import _noisy_counts
    from fedtab.transform.table import TableTransformer

    phase = body["phase"]
    if phase in SECURE_ROUNDS:  # secure aggregation's own rounds: keys and shares, nothing from the rows
        return secure_round(site, phase, body.get("secagg") or {}, state, cache)
    if phase not in PHASES and phase != AGAIN:
        raise ConfigError(f"site '{site}': unknown measurement phase {phase!r}", public=True)
    tables = "one-way" if phase == AGAIN else phase  # what the request measures
    disc = Discretisation.from_dict(body["discretisation"])
    sizes = disc.sizes
    cliques = [tuple(int(i) for i in c) for c in body["marginals"]]
    if any(not c or any(not 0 <= i < len(sizes) for i in c) or len(set(c)) != len(c) or len(c) > 2 for c in cliques):
        raise ConfigError(f"site '{site}': a requested marginal names no column, a column twice or more than two",
                          public=True)
    plan = body["plan"]
    counts, shares = [int(k) for k in plan["counts"]], [float(s) for s in plan["shares"]]
    skipped = counts[1] == 0 and state.get("mst_plan_select", 0) > 0  # the coordinator skipped the selection
    if phase == AGAIN and (not skipped or state.get("mst_again")):
        raise ConfigError(f"site '{site}': the one-way tables are measured again only once, in place of the "
                          "selection the job planned", public=True)
    levels = [(int(j), np.asarray(g, dtype=np.int64)) for j, g in body.get("levels", [])] if tables == "one-way" else []
    if any(not 0 <= j < len(sizes) or g.ndim != 1 or g.size != sizes[j] or g.size == 0 or g.min() < 0
           or g.max() >= sizes[j] for j, g in levels):
        raise ConfigError(f"site '{site}': a requested level does not fit its column's cells", public=True)
    if phase != "select" and len(cliques) + len(levels) > counts[PHASES.index(tables)]:
        raise ConfigError(f"site '{site}': the '{phase}' request asks for more tables than the plan declared",
                          public=True)
    # What the job's final model is (the site records its identity when the job ends).
    state["training"] = {"model": body["model"], "model_options": body["model_options"],
                         "transformer_hash": body["transformer_hash"]}
    key = "codes:" + body["transformer_hash"]
    if key not in cache:  # the fine codes: the one-way cells; the two-way tables group them
        transformer = TableTransformer.from_dict(body["transformer"])
        cache[key] = fine_codes(train, transformer, Discretisation.from_dict(body["discretisation"]))
    codes = cache[key] if tables == "one-way" else coarse_codes(cache[key], disc)
    exact = marginal_counts(codes, sizes, cliques)
    # Coarser levels of numerical columns (one-way, under DP): each a table of its own, sensitivity 1.
    exact += [np.bincount(g[codes[:, j]], minlength=int(g.max()) + 1).astype(float) for j, g in levels]
    # The scores this request asks for (the coordinator's ``selection_mode``): what the site computes is what
    # it charges for, whatever the coordinator chose; anything unknown is the consortium's score.
    mode = body.get("select_shares", body["model_options"].get("select_shares"))
    if mode not in ("site", "pooled"):
        mode = "consortium"
    own, pooled = phase == "select" and mode == "site", phase == "select" and mode == "pooled"
    if phase == "select" and ledger.is_dp:
        # One release: each candidate pair's L1 distance between this site's two-way table and what one-way
        # shares predict for its rows: the site's own ("site": exact shares and rows, which a row moves too)
        # or the consortium's (public, ``body["shares"]``) for the site's own DP row estimate (post-processing
        # of its encoding release), so that only the two-way table moves with a row (``score_sensitivity``).
        # (Without DP the site sends the tables themselves and the coordinator scores the pooled ones.)
        if own:
            ref = [np.bincount(codes[:, j], minlength=sizes[j]) / max(len(codes), 1) for j in range(len(sizes))]
            rows = float(len(codes))
        else:
            ref = public_shares(site, body.get("shares"), sizes)
            rows = public_rows(site, state)
        exact = [pair_scores(exact, cliques, ref, rows=rows, shift_free=pooled)]
    sensitivity = score_sensitivity(mode, len(cliques)) if phase == "select" else 1.0
    releases = 1 if phase == "select" and ledger.is_dp else len(exact)
    factors = _factors(counts, shares)
    if not ledger.is_dp:
        ledger.spend(phase=f"marginals/{phase}", mechanism="exact", noise_multiplier=0.0, steps=releases,
                     target=f"{releases} marginal(s), exact" + ("; secure aggregation" if body.get("secagg") else ""))
        if body.get("secagg") is not None:  # masks only: the coordinator reads the sites' sum, not this site's counts
            secure = body["secagg"]
            masked, b_shares = site_session(site, state, cache).mask(
                exact, me=site, request=secure.get("request"), sites=secure.get("sites") or [],
                job=str(secure.get("job", "")))
            return {"masked": masked, "b_shares": b_shares, "shapes": [list(np.shape(v)) for v in exact], "sigma": 0.0}
        return {"counts": exact, "sigma": 0.0}
    if "mst_z" not in state:  # once per job: the whole plan fits in what the encoding left
        state["mst_plan_select"] = counts[1]
        steps = [(f, k) for f, k in zip(factors[1:], counts[1:]) if k > 0]
        state["mst_z"] = noise_multiplier_for(target_epsilon=float(body["epsilon"]), delta=ledger.accounting_delta,
                                              sample_rate=1.0, steps=max(counts[0], 1), prior=ledger.events(),
                                              scaled=steps)
    if phase == AGAIN:
        state["mst_again"] = True
        # The selection's share of the budget over the one-way phase's releases: the noise of the first
        # one-way phase times sqrt(one-way share / selection share).
        z = float(state["mst_z"]) * math.sqrt(shares[0] / shares[1])
    else:
        z = float(state["mst_z"]) * factors[PHASES.index(phase)]
    if phase == "measure" and skipped:
        # The coordinator skipped the selection the job planned (its scores could not be read): the tree
        # measurement takes what this site's budget has left (after the one-way phase, and its second
        # measurement where the coordinator asked for it).
        z = noise_multiplier_for(target_epsilon=float(body["epsilon"]), delta=ledger.accounting_delta,
                                 sample_rate=1.0, steps=max(counts[2], 1), prior=ledger.events())
    sigma = z * sensitivity
    what = "pair scores" if phase == "select" else f"{releases} marginal(s)"
    secure = body.get("secagg")
    if secure is not None:
        # Distributed noise: this site draws sigma / sqrt(t); the sum over the at least t sites whose masked
        # inputs the coordinator can unmask carries sigma, which the ledger records (secagg module docstring).
        session = site_session(site, state, cache)
        t = session.threshold
        share = sigma / math.sqrt(max(t, 1))
        request, sites = secure.get("request"), [str(x) for x in secure.get("sites", [])]
        session.check_request(site, request, sites)  # refused before anything is spent
        ledger.spend(phase=f"marginals/{phase}", mechanism="gaussian", noise_multiplier=z, sensitivity=sensitivity,
                     steps=releases, target=f"{what}; secure aggregation over at least {t} sites: this site's own "
                                            f"noise share sigma {share:.4g} (the sum's sigma {sigma:.4g})")
        noise = secret_source(f"{site}/marginals/{phase}")
        if phase == "select":
            values = [exact[0] + noise.normal(exact[0].size) * share]
        else:
            values = [_noisy_counts(c, share, noise) for c in exact]
        masked, b_shares = session.mask(values, me=site, request=request, sites=sites, job=str(secure.get("job", "")),
                                        real=phase == "select")
        return {"masked": masked, "b_shares": b_shares, "shapes": [list(np.shape(v)) for v in values], "sigma": share}
    ledger.spend(phase=f"marginals/{phase}", mechanism="gaussian", noise_multiplier=z, sensitivity=sensitivity,
                 steps=releases, target=what)
    noise = secret_source(f"{site}/marginals/{phase}")
    if phase == "select":  # real-valued scores: the continuous Gaussian from the secret stream
        return {"counts": [exact[0] + noise.normal(exact[0].size) * sigma], "sigma": sigma}
    return {"counts": [_noisy_counts(c, sigma, noise) for c in exact], "sigma": sigma}


def site_session(site: str, state: dict, cache: dict) -> secagg.SiteSession:
    session = cache.get(SECAGG_CACHE + str(state.get("job_key", "")))
    if session is None:
        from fedtab.errors import FederationError

        raise FederationError(f"site '{site}': a secure-aggregation round without this job's keys (the site "
                              "restarted, or the coordinator skipped the key round): run the job again", public=True)
    return session


def secure_round(site: str, phase: str, body: dict, state: dict, cache: dict) -> dict[str, Any]:
    job = str(body.get("job", ""))
    if phase == KEYS:  # fresh keys for this job (memory only)
        session = cache[SECAGG_CACHE + str(state.get("job_key", ""))] = secagg.SiteSession(body.get("requests"))
        return session.public()
    session = site_session(site, state, cache)
    if phase == SHARES:
        return {"shares": session.share_keys(site, body.get("peers") or {}, body.get("threshold"), job=job)}
    opened = session.unmask(me=site, request=body.get("request"), survivors=body.get("survivors") or [],
                            dropped=body.get("dropped") or [], s_inbox=(body.get("s_inbox") or {}).get(site) or {},
                            b_inbox=(body.get("b_inbox") or {}).get(site) or {}, job=job)
    from fedtab.federation.secure_updates import unmasked

    unmasked(body.get("request"), state)  # a training round's sum was read: its update is never masked again
    return opened


# -- at the coordinator --------------------------------------------------------------------------------
def fit(ask, job, transformer, *, progress=None, site_rows: dict[str, float] | None = None, n_sites: int = 1,
        rounds: "SecureRounds | None" = None, rows_known: bool = True) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run the three measurement requests and estimate the model. ``ask(body, only=None, available=False)
    -> {site: reply}`` sends ``body`` to every site (or those in ``only``); with ``available`` it returns
    the replies of the sites that answered instead of failing on a missing one (secure aggregation copes
    with dropouts). ``rows_known`` False: ``site_rows`` are equal shares of the sites' summed row estimate
    (``fedtab.federation.secure_encoding``). Returns (the model's weights for the model file, each site's
    noise in the tree measurement)."""
    from fedtab.modelfile import encoding_sha256

    opts = model_options(job.model_options)
    fine = discretise(transformer)
    d = len(fine.columns)
    all_pairs = [(a, b) for a in range(d) for b in range(a + 1, d)]
    levels = [] if not job.privacy.enabled else [
        [j, g] for j, c in enumerate(fine.columns) if c["kind"] == "numerical"
        for g in level_groups(len(c["edges"]) + 1, bool(c["missing"]))]
    # Releases per phase: d one-way tables and the levels; one vector of pair scores; d - 1 tree tables.
    plan = {"counts": [d + len(levels), 1 if all_pairs else 0, max(d - 1, 0)], "shares": opts["shares"]}
    enc = transformer.to_dict()
    secure = uses_secure_aggregation(job, n_sites)
    base = {"plan": plan, "model": job.model, "model_options": opts, "transformer": enc,
            "transformer_hash": encoding_sha256(enc), "epsilon": job.privacy.epsilon}

    if secure and rounds is None:
        rounds = SecureRounds(ask, n_sites, job, progress)
    rounds = rounds if secure else None

    checks = RowChecks(job, transformer, site_rows, n_sites, progress, per_site=rows_known)
    left_out: set[str] = set()  # sites whose releases failed the row check (without secure aggregation)
    answered: list[str] = []

    def measure(phase: str, cliques: list[tuple[int, ...]], disc: Discretisation, **extra):
        if progress is not None:
            progress("phase", {"name": f"marginals: {phase} ({len(cliques)} table(s))"
                                       + (f", secure sum over {len(rounds.alive)} sites" if rounds else "")})
        body = {**base, "discretisation": disc.to_dict(), "phase": phase, "marginals": [list(c) for c in cliques],
                **extra}
        if rounds is not None:
            total, sd, shares = rounds.measure(body, real=phase == "select" and job.privacy.enabled)
            if phase != "select":
                checks.of_sum(phase, total, sd, sorted(shares))
            return total, sd, shares
        replies = ask(body, only=[s for s in answered if s not in left_out] if left_out else None)
        answered[:] = sorted(replies)
        if phase != "select":
            left_out.update(checks.of_sites(phase, replies))
            replies = {s: r for s, r in replies.items() if s not in left_out}
        sites = sorted(replies)
        total = [np.sum([np.asarray(replies[s]["counts"][i], dtype=float) for s in sites], axis=0)
                 for i in range(len(replies[sites[0]]["counts"]))]
        sd = math.sqrt(sum(float(replies[s]["sigma"]) ** 2 for s in sites))
        return total, sd, {s: float(replies[s]["sigma"]) for s in sites}

    measured, sd1, first_sites = measure("one-way", [(j,) for j in range(d)], fine, levels=levels)
    rows = row_estimate(measured) if job.privacy.enabled else max(1.0, float(np.median([t.sum() for t in measured])))
    factors = _factors(plan["counts"], plan["shares"])
    target = _target_index(job, transformer)
    unit_sd = sd1 * factors[1]  # the selection's noise per unit of sensitivity
    mode = selection_mode(opts["select_shares"], unit_sd, len(all_pairs), rows, dp=job.privacy.enabled)
    select_sd = unit_sd * score_sensitivity(mode, len(all_pairs))
    star = d > 1 and job.privacy.enabled and target is not None and select_sd > STAR_NOISE * rows
    if progress is not None and opts["select_shares"] == "auto" and mode != "site" and not star and d > 1:
        site_sd = unit_sd * score_sensitivity("site", len(all_pairs))
        progress("phase", {"name": f"marginals: the selection scores pairs against the consortium's shares "
                                   f"(\"pooled\": noise sd {select_sd:.0f}; against each site's own its sd "
                                   f"{site_sd:.0f} would exceed {STAR_NOISE:g} x the {rows:.0f} rows)",
                           "selection": mode})
    sd_first = sd1
    if star:
        # The selection's scores cannot be read (a pair's L1 score is at most 2 x rows; a dependence of total
        # variation 0.1 scores 0.2 x rows): the tree is the star on the declared target instead, and the
        # selection's budget measures the one-way tables again (``AGAIN``; the sites calibrate the tree
        # measurement to what their ledger has left, its planned share).
        if progress is not None:
            progress("phase", {"name": f"marginals: no selection (its noise sd {select_sd:.0f} would exceed "
                                       f"{STAR_NOISE:g} x the {rows:.0f} rows): the tree is the star on the target, "
                                       "and the selection's budget measures the one-way tables again",
                               "selection": "star"})
        base["plan"] = plan = {**plan, "counts": [plan["counts"][0], 0, plan["counts"][2]]}
        again, sd2, again_sites = measure(AGAIN, [(j,) for j in range(d)], fine, levels=levels)
        # Averaged where the same sites answered both; where a site dropped out in between, the second
        # alone (the sum over the sites that go on, like the tree measurement after it).
        measured, sd1 = (averaged(measured, sd1, again, sd2) if set(again_sites) == set(first_sites)
                         else (again, sd2))
        rows = row_estimate(measured)
    ones_fine = _with_levels(fine, measured[:d], levels, measured[d:], rows=rows, sd=sd1)
    bins = opts["bins"]
    if bins == "auto":  # from the DP row estimate and the tree measurement's noise (its phase's share of sd1)
        bins = auto_bins(rows, sd_first * factors[2] if job.privacy.enabled else 0.0)
    disc = grouped(fine, ones_fine, bins=int(bins))
    ones, sd_ones = _coarse_ones(disc, ones_fine, sd1, estimated={j for j, _ in levels})
    tree: list[tuple[int, int]] = []
    measurements = [((j,), ones[j], sd_ones[j]) for j in range(d)]
    noise: dict[str, float] = {}
    if star:
        tree = [(min(target, j), max(target, j)) for j in range(d) if j != target]
        chosen, sd3, noise = measure("measure", tree, disc)
        measurements += [(pair, t, sd3) for pair, t in zip(tree, chosen)]
    elif d > 1:
        shares = [_probs(o) for o in ones]
        selected, _, _ = measure("select", all_pairs, disc, shares=[list(map(float, x)) for x in shares],
                                 select_shares=mode)
        if job.privacy.enabled:  # the sites' noisy scores, summed (FLAIM's local scores)
            # Less what independent columns score by chance at each site's size (the DP row estimates,
            # public): a column of many cells would otherwise win every pair and the tree would be a star.
            sizes_s = [max(float(v), 1.0) for v in (site_rows or {"all": rows}).values()]
            chance = {(a, b): sum(float(np.sqrt(2 / np.pi * m * (q := np.outer(shares[a], shares[b]).ravel())
                                                * (1 - q)).sum()) for m in sizes_s) for a, b in all_pairs}
            scores = {pair: float(v) - chance[pair] for pair, v in zip(all_pairs, selected[0])}
        else:  # the pooled exact tables: Chow and Liu's tree (non-IID sites differ by design; see ``select``)
            scores = {pair: excess_information(t, disc.sizes[pair[0]], disc.sizes[pair[1]])
                      for pair, t in zip(all_pairs, selected)}
        tree = spanning_tree(d, scores)
        chosen, sd3, noise = measure("measure", tree, disc)
        measurements += [(pair, t, sd3) for pair, t in zip(tree, chosen)]
    singles, pairs = _estimate(disc.sizes, measurements, tree, rows=rows, iters=int(opts["iters"]))
    # A missing code is a run of its own at every level: its estimate is the mean of 1 + levels counts.
    sd_missing = [sd1 / math.sqrt(1 + sum(1 for i, _ in levels if i == j)) for j in range(d)]
    _drop_missing(disc, transformer, ones_fine, sd_missing, singles, pairs)
    model = MarginalModel(transformer, disc, tree, pairs, singles)
    return model.weights(), noise


def averaged(first: list[np.ndarray], sd_first: float, second: list[np.ndarray], sd_second: float):
    """Two noisy measurements of the same tables, inverse-variance averaged: (the tables, their noise sd)."""
    w1, w2 = 1.0 / max(sd_first, 1e-12) ** 2, 1.0 / max(sd_second, 1e-12) ** 2
    tables = [(w1 * np.asarray(a, dtype=float) + w2 * np.asarray(b, dtype=float)) / (w1 + w2)
              for a, b in zip(first, second)]
    return tables, 1.0 / math.sqrt(w1 + w2)


def _target_index(job, transformer) -> int | None:
    """The declared target's column in the discretisation (None without one)."""
    names = [c.spec.name for c in transformer.columns_]
    return names.index(job.target) if job.target in names else None


def excess_information(table: np.ndarray, rows: int, cols: int) -> float:
    """A pair's score from its exact two-way counts: the G statistic ``2 N I(a; b)`` (mutual information
    in nats) less its degrees of freedom, its expectation under independence. The maximum spanning tree
    of mutual information is Chow and Liu's tree, the tree distribution closest to the joint in KL; the
    L1 scores of the DP path ranked a function of a column above the column (a yes/no flag of one kind
    above the kind) and the tree lost the kind's own dependence."""
    t = np.clip(np.asarray(table, dtype=np.float64).reshape(rows, cols), 0.0, None)
    n = t.sum()
    if n <= 0:
        return 0.0
    pa, pb = t.sum(axis=1, keepdims=True), t.sum(axis=0, keepdims=True)
    nz = t > 0
    g = 2.0 * float((t[nz] * np.log(t[nz] * n / (pa @ pb)[nz])).sum())
    return g - (int((pa > 0).sum()) - 1) * (int((pb > 0).sum()) - 1)


def uses_secure_aggregation(job, n_sites: int) -> bool:
    """Secure aggregation (with distributed noise under DP; masks alone without): two sites or more,
    unless turned off."""
    return bool(job.privacy.secure_aggregation and n_sites >= 2)


def secure_threshold(job, n_sites: int) -> int:
    """The fewest sites whose noise shares a readable sum holds: ``training.min_sites`` (default: every
    site), raised to a majority (two views of one request must not both reach it)."""
    return min(n_sites, max(int(job.training.min_sites or n_sites), n_sites // 2 + 1))


class SecureRounds:
    """The coordinator's side of ``fedtab.federation.secagg``: keys and shares once, then for each phase a
    masked request to the sites still in, and an unmasking request to those whose masked input arrived.
    ``ask(body, only=..., available=True)`` returns the replies of the sites that answered."""

    def __init__(self, ask, n_sites: int, job, progress=None, *, requests: int = len(PHASES), label: str = "marginals",
                 fresh: bool = False):
        from fedtab.errors import FederationError

        self._ask, self._progress, self._error, self._label = ask, progress, FederationError, label
        self.planned = int(requests)
        self.job = str(job.job_id or "")
        self.threshold = secure_threshold(job, n_sites)
        self._note("secure aggregation: keys")
        # ``fresh``: a key request no earlier one equals (a deployment's site replays a request it answered
        # before; a coordinator resumed mid-training needs new keys for the rounds left).
        body = {"requests": int(requests), "job": self.job, **({"fresh": os.urandom(8).hex()} if fresh else {})}
        keys = ask({"phase": KEYS, "secagg": body}, available=True)
        self.peers = self._enough(keys, "keys")
        self._note(f"secure aggregation: key shares ({self.threshold} of {len(self.peers)} sites rebuild a key)")
        shared = ask({"phase": SHARES, "secagg": {"peers": self.peers, "threshold": self.threshold, "job": self.job}},
                     only=sorted(self.peers), available=True)
        self.alive = sorted(self._enough(shared, "key shares"))
        self._s_boxes = {to: {frm: shared[frm]["shares"][to] for frm in self.alive} for to in self.alive}
        self.request = 0
        self._last: dict | None = None
        self._commits: dict[str, dict[str, str]] = {}  # the last request's commitments, per sender and recipient

    def _note(self, text: str) -> None:
        if self._progress is not None:
            self._progress("phase", {"name": f"{self._label}: {text}"})

    def _enough(self, replies: dict, what: str) -> dict:
        if len(replies) < self.threshold:
            from fedtab.federation.agreement import name_sites

            raise self._error(f"secure aggregation: {len(replies)} site(s) answered the {what} round, fewer than the "
                              f"{self.threshold} whose noise shares a readable sum needs (training.min_sites); "
                              f"answered: {name_sites(sorted(replies))}")
        return replies

    def measure(self, body: dict, *, real: bool):
        """One masked phase: (the survivors' summed counts, the sum's noise sd, each survivor's noise share)."""
        total, replies = self.secure_sum(lambda b, only: self._ask(b, only=only, available=True), body, real=real)
        sd = math.sqrt(sum(float(r["sigma"]) ** 2 for r in replies.values()))
        return total, sd, {s: float(r["sigma"]) for s, r in replies.items()}

    def secure_sum(self, ask_masked, body: dict, *, real: bool, bits: int = secagg.SCALE_BITS):
        """One masked request (``ask_masked(body, only=...)`` -> the replies that arrived) and its
        unmasking: (the survivors' summed vectors, the survivors' replies). ``real``: the sites' values in
        fixed point of ``bits`` fractional bits."""
        from fedtab.federation.agreement import name_sites

        r = self.request
        if r >= self.planned:  # each request has its own mask keys, drawn in the keys round
            raise self._error(f"secure aggregation: request {r + 1} of a job that planned {self.planned} (keys "
                              f"are drawn once per job, one per request): '{body['phase']}' cannot be masked")
        self.request += 1
        replies = ask_masked({**body, "secagg": {"request": r, "sites": self.alive, "job": self.job}},
                             only=self.alive)
        survivors = sorted(self._enough(replies, f"'{body['phase']}'"))
        dropped = sorted(set(self.alive) - set(survivors))
        if dropped:
            self._note(f"{name_sites(dropped)} dropped out of '{body['phase']}': their masks are removed from the "
                       f"sum of the {len(survivors)} others; they take part in no later request")
        shapes = {tuple(tuple(int(n) for n in x) for x in replies[s]["shapes"]) for s in survivors}
        if len(shapes) != 1:
            raise self._error("secure aggregation: the sites' masked replies have different shapes")
        b_boxes = {to: {frm: replies[frm]["b_shares"][to] for frm in survivors} for to in survivors}
        s_boxes = {to: {frm: box[frm] for frm in dropped} for to, box in self._s_boxes.items() if to in survivors}
        opened = self._ask({"phase": UNMASK, "secagg": {"request": r, "survivors": survivors, "dropped": dropped,
                                                        "b_inbox": b_boxes, "s_inbox": s_boxes, "job": self.job}},
                           only=survivors, available=True)
        self._enough(opened, "unmasking")
        # What the sum was made of, kept until the next request (its secrets rebuilt once): a sum that fails
        # its screen can be proven to the sites (``prove_last``) and opened site by site once they reveal this
        # request's mask keys (``open_revealed``).
        self._last = {"masked": {s: replies[s]["masked"] for s in survivors}, "shapes": list(next(iter(shapes))),
                      "rebuilt": secagg.rebuild({s: [o["b"][s] for o in opened.values()] for s in survivors},
                                                {d: [o["s"][d] for o in opened.values()] for d in dropped}),
                      "request": r, "real": real, "bits": bits}
        self._commits = {s: dict(replies[s].get("commits") or {}) for s in survivors}
        total = secagg.sum_inputs(peers=self.peers, job=self.job, **self._last)
        self.alive = survivors
        return total, {s: replies[s] for s in survivors}

    def prove_last(self, to: str, entries: list[int] | None = None) -> dict:
        """What proves ``entries`` (default: all) of the last request's sum to site ``to``
        (``secagg.entry_proof``)."""
        last = self._last_request()
        if entries is None:
            entries = list(range(int(sum(int(np.prod(s)) for s in last["shapes"]))))
        return secagg.entry_proof(last["masked"], entries, rebuilt=last["rebuilt"], commits=self._commits, to=to)

    def open_revealed(self, outcomes: dict):
        """Each survivor's own input of the last request, opened with the mask keys in the sites' replies
        (``outcomes``: site -> its reply, or its error; ``secagg.open_inputs``): (the inputs opened, why each
        other survivor's was not). A site that kept its key is opened where every other site revealed theirs;
        where no site revealed one the first site's error is raised."""
        keys = {s: o.get("mask_key") for s, o in outcomes.items() if isinstance(o, dict)}
        keys = {s: k for s, k in keys.items() if isinstance(k, str)}
        errors = [o for _, o in sorted(outcomes.items()) if isinstance(o, Exception)]
        if not keys and errors:
            raise errors[0]
        return secagg.open_inputs(peers=self.peers, job=self.job, keys=keys, **self._last_request())

    def _last_request(self) -> dict:
        if self._last is None:
            raise self._error("secure aggregation: no request to prove or open")
        return self._last


def row_estimate(tables: list[np.ndarray]) -> float:
    """The consortium's row count from the one-way phase's noisy tables (every one a partition of the
    rows, every cell with the same noise): ``statistics.row_estimate``, the inverse-variance mean of their
    totals, at least 1. Post-processing. (The median of the estimated columns' totals, used before, read
    high: non-negative estimates of a wide column keep the noise's positive part in its empty cells.)"""
    from fedtab.transform.statistics import row_estimate as inverse_variance_rows

    return max(1.0, inverse_variance_rows([np.asarray(t, dtype=float).ravel() for t in tables]))


# The row check (``RowChecks``): a counting phase's tables each count every row of the sites in them once,
# so their total must agree with those sites' own DP row estimates from the encoding (public), within
# this many sds of the two noises (about one false alarm in 1.7 million honest checks). Without DP, within
# 1% (and one row).
ROWS_Z = 5.0


def encoding_rows_sd(transformer) -> float:
    """The noise sd of one site's row estimate from its encoding histograms (``statistics.site_rows``: the
    inverse-variance mean over its columns' totals); 0 without DP. A categorical column counts one cell
    more than its encoding slots (its missing cell), which errs toward a larger sd."""
    from fedtab.transform.numerical import NumericalColumnTransformer
    from fedtab.transform.statistics import histogram_edges, row_estimate_sd

    plan = transformer.plan_
    if plan.dp is None:
        return 0.0
    cells = [len(histogram_edges(c.spec, float(c.lower_), float(c.upper_), plan.n_bins))  # cells + missing
             if isinstance(c, NumericalColumnTransformer) else int(c.output_dim) + 1 for c in transformer.columns_]
    return row_estimate_sd(plan, cells)


class RowChecks:
    """A site's counts must count its rows (issue 22 part 5: a hostile site's code scaling its releases).
    With secure aggregation only the sum can be checked: a failing sum stops the job (no site can be
    named); without it each site's releases are checked, a failing site named and left out of this and
    every later phase (``training.min_sites`` decides whether the job goes on). A site that also inflates
    its encoding row estimate is not caught: it reads as a larger site (its weight is its row estimate)."""

    def __init__(self, job, transformer, site_rows: dict[str, float] | None, n_sites: int, progress=None, *,
                 per_site: bool = True):
        self.rows = dict(site_rows or {})
        # Without each site's row estimate (the encoding's histograms summed securely) only a sum over
        # the encoding's own sites can be checked.
        self.per_site = per_site
        self.rows_sd = encoding_rows_sd(transformer)
        self.dp = bool(job.privacy.enabled)
        self.min_sites = int(job.training.min_sites or n_sites)
        self.progress = progress

    def z(self, tables: list[np.ndarray], sd: float, sites: list[str]) -> float:
        expected = sum(float(self.rows.get(s, 0.0)) for s in sites)
        if self.dp:
            var = sd ** 2 / sum(1.0 / max(np.size(t), 1) for t in tables) + len(sites) * self.rows_sd ** 2
        else:
            var = (0.01 * expected) ** 2 + 1.0
        return (row_estimate(tables) - expected) / math.sqrt(max(var, 1e-12))

    def of_sum(self, phase: str, tables: list[np.ndarray], sd: float, sites: list[str]) -> None:
        if not self.rows or not set(sites) <= set(self.rows) or (not self.per_site and set(sites) != set(self.rows)):
            return
        z = self.z(tables, sd, sites)
        if abs(z) > ROWS_Z:
            from fedtab.errors import FederationError

            raise FederationError(
                f"marginals '{phase}': the securely summed tables count {z:+.1f} noise sds away from the rows "
                "the sites' own encoding releases give: a site's masked release is not what its rows give (broken "
                "or hostile code at a site). Secure aggregation cannot say which site: run the job again with "
                "privacy.secure_aggregation = false to have each site's releases checked and the site named.")

    def of_sites(self, phase: str, replies: dict[str, dict]) -> list[str]:
        """The sites whose releases fail the check (named in the progress output)."""
        from fedtab.federation.agreement import leave_out

        if not self.rows or not self.per_site:
            return []
        failed = {}
        for site, reply in replies.items():
            if site in self.rows:
                z = self.z([np.asarray(t, dtype=float) for t in reply["counts"]], float(reply["sigma"]), [site])
                if abs(z) > ROWS_Z:
                    failed[site] = f"its tables count {z:+.1f} noise sds from its own row estimate"
        return leave_out(failed, going_on=len(replies) - len(failed), of=len(replies), min_sites=self.min_sites,
                         where=f"marginals '{phase}'", progress=self.progress)


def _with_levels(disc: Discretisation, fine_counts: list[np.ndarray], levels: list,
                 level_counts: list[np.ndarray], *, rows: float, sd: float) -> list[np.ndarray]:
    """Each numerical column's fine counts estimated from its fine and coarser tables (``fine_estimate``),
    then its cells brought down to ``rows`` less the column's estimated missing count by norm-sub (a constant
    off every cell, the cells it empties left empty): non-negative least squares keeps the noise's
    positive part in the empty cells of a wide range, and that mass moved the means toward the middle
    of the declared bounds. A column without levels keeps its noisy counts.

    Measured on every numerical column of the 7 tables of benchmarks/bench_tables.py, by simulating the
    one-way phase's noise at epsilon 1 on 4 sites (10 draws each; bias of the mean in the column's sds,
    mean absolute over columns): 0.61 with the estimate alone, 0.36 with the norm-sub (heart 0.16 /
    0.11, penguins 2.2 / 0.6, breast cancer 0.63 / 0.49), distribution distance (KS) level or lower. In
    benchmarks/bench_tables.py (epsilon 1, 4 sites, 3 seeds; tag rowsum against site-shares) quality
    breast cancer 0.705 / 0.693, diabetes 0.842 / 0.827, the other five within 0.006; the walk-through's
    synthetic mean cholesterol 258-281 over 6 runs (real 247; was 258-314 over 8). Then the runs that are
    most likely noise are emptied (``isolated_runs``; ``sd``: one table's noise sd)."""
    out = list(fine_counts)
    for j in sorted({j for j, _ in levels}):
        mine = [(g, y) for (i, g), y in zip(levels, level_counts) if i == j]
        est = fine_estimate(fine_counts[j], mine)
        n_cells = len(disc.columns[j]["edges"]) + 1  # then the missing code, if any
        cells = est[:n_cells]
        present = min(max(float(rows) - float(est[n_cells:].sum()), 1.0), float(cells.sum()))  # only ever less
        cells = norm_sub(cells, total=present) * present if present > 0 else cells
        cov = sum_sds(est.size, [g for i, g in levels if i == j])[:n_cells, :n_cells]
        out[j] = np.concatenate([isolated_runs(cells, cov, sd), est[n_cells:]])
    return out


def _drop_missing(disc: Discretisation, transformer, fine_counts, sds: list[float], singles: dict, pairs: dict) -> None:
    """Zero the missing code of every nullable column whose noisy missing count is not significant
    (``MISSING_Z`` times its sd in ``sds``; post-processing), in its one-way and two-way marginals."""
    for j, (c, col) in enumerate(zip(disc.columns, transformer.columns_)):
        has = c["missing"] if c["kind"] == "numerical" else bool(getattr(col, "has_missing_", False))
        if not has or float(np.asarray(fine_counts[j])[-1]) >= MISSING_Z * max(sds[j], 1e-12):
            continue
        code = disc.sizes[j] - 1
        singles[j] = renormalised(np.where(np.arange(singles[j].size) == code, 0.0, singles[j]))
        for (a, b), flat in list(pairs.items()):
            if j not in (a, b):
                continue
            table = flat.reshape(disc.sizes[a], disc.sizes[b]).copy()
            if a == j:
                table[code, :] = 0.0
            else:
                table[:, code] = 0.0
            pairs[(a, b)] = renormalised(table).ravel()


def _coarse_ones(disc: Discretisation, fine_counts: list[np.ndarray], sd: float, *, estimated=frozenset()):
    """The one-way counts on the grouped discretisation (sums of fine cells) and their noise sd: a sum of
    noisy cells carries their summed variance; a column whose cells were estimated with its coarser
    levels (``estimated``) has a run's count about as exact as one measured cell."""
    out, sds = [], []
    for j, (c, counts) in enumerate(zip(disc.columns, fine_counts)):
        counts = np.asarray(counts, dtype=float)
        if c["kind"] != "numerical":
            out.append(counts)
            sds.append(sd)
            continue
        groups = np.asarray(c["groups"], dtype=np.int64)
        coarse = np.bincount(groups, weights=counts[:groups.size], minlength=int(groups.max()) + 1)
        if c["missing"]:
            coarse = np.append(coarse, counts[groups.size:].sum())
        out.append(coarse)
        sds.append(sd if j in estimated else sd * math.sqrt(groups.size / max(1, int(groups.max()) + 1)))
    return out, sds


def _probs(counts: np.ndarray) -> np.ndarray:
    return norm_sub(counts)


def _estimate(sizes, measurements, tree, *, rows: float, iters: int):
    """Private-PGM's estimate of the joint from every noisy measurement; its one-way and tree marginals."""
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 sums: the same estimate from the same measurements
    from mbi import Domain, LinearMeasurement
    from mbi.estimation import mirror_descent

    names = [f"c{j}" for j in range(len(sizes))]
    domain = Domain(names, sizes)
    ms = [LinearMeasurement(np.asarray(y, dtype=np.float64), tuple(names[i] for i in clique), stddev=max(sd, 1.0))
          for clique, y, sd in measurements]
    model = mirror_descent(domain, ms, known_total=rows, iters=iters)
    singles = {j: _probs(np.asarray(model.project((names[j],)).datavector())) for j in range(len(sizes))}
    pairs = {}
    for a, b in tree:
        joint = np.maximum(np.asarray(model.project((names[a], names[b])).datavector(flatten=False), dtype=float), 0)
        pairs[(a, b)] = renormalised(joint).ravel()
    return singles, pairs

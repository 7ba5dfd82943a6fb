"""A marginal-based model ("mst"): a tree of two-way marginals over a discretised table, sampled in order.

The select-measure-generate family (MST, McKenna et al. 2021; AIM; FLAIM carries it to federated
sites): the sites measure noisy marginals of their rows on a public discretisation, the coordinator
sums them (counts of the union), picks a maximum spanning tree of column pairs from noisy two-way
tables, has the sites measure the tree's pairs, and estimates the joint with Private-PGM (``mbi``;
``fedtab.federation.marginals``). What this module holds is public: the discretisation, read off the
agreed encoding (DP), and the fitted model, the estimated two-way marginals of the tree's pairs.

Discretisation: a categorical or boolean column's codes are its encoding slots (categories, 'other',
missing), so a code is one-hot in the encoding's block. A numerical column is first measured in
``FINE_BINS`` equal-width cells over its agreed bounds, with a cell of its own for the lower bound and 0
(a grid value wide on a grid, a point otherwise: ``histogram_edges``) (the one-way measurement); the two-way tables
then read it in at most ``bins`` runs of cells of about equal mass under that noisy measurement
(norm-sub; a run the noise left empty joins its neighbour), plus a missing code. Sampling draws the
codes along the tree (root from its marginal, each column from its parent's row of the pair table), a
numerical value by picking a cell of its run by the one-way shares and a value uniform inside it (a
point cell gives its point), then
the column's learned rounding; the rows come back typed by the schema (no calibration: the model's own
marginals are the measured ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtab.errors import ConfigError

NAME = "mst"
# ``select_shares`` (DP): the one-way shares a site's pair scores compare its two-way tables with: the site's own
# ("site": a pair scores where it depends within a site, whatever the sites' differences; four times the sensitivity:
# the site's exact shares and rows move with a row) or the consortium's ("consortium": a pair also scores where a
# site's shares of either column differ from the consortium's, as on sites split by a column's quartiles). Measured
# across the 7 tables of benchmarks/bench_tables.py at epsilon 1 on 4 sites (2 seeds each, site against consortium;
# sensitivity 4 and 2 then): quality bank 0.916 / 0.842, Adult 0.894 / 0.872, Fair 0.954 / 0.926, heart 0.775 / 0.795,
# penguins 0.710 / 0.718, breast cancer 0.695 / 0.700, diabetes 0.797 / 0.799; TSTR higher or level on 6 of 7 (heart
# 0.67 / 0.54, penguins 0.85 / 0.70, Adult 0.81 / 0.75, bank 0.65 / 0.60; breast cancer 0.76 / 0.81, sd ~0.1).
# "pooled": the consortium's shares less the larger of the two columns' own distances from them (a site's one-way
# difference from the consortium, which every pair of that column holds), so that the sum over the sites scores what
# the pooled table depends, across sites too (Seattle weather's sites split on maximum temperature: its pair with the
# minimum, correlation 0.88, came out 0.0-0.48 under "site"); sensitivity 2 (4 when the figures below were measured:
# the prediction then took the site's exact row count). Measured at commit 20f30e0 as the default (bench_tables.py
# --only fedtab-auto-4s-eps1-, 3 seeds, epsilon 1, 4 sites; the tables whose selection is read), quality / TSTR pooled
# against site: Adult 0.915 / 0.771 against 0.900 / 0.765, bank 0.912 / 0.601 against 0.924 / 0.614, Fair 0.953 /
# 0.637 against 0.959 / 0.661, held-out Seattle weather 0.830 / 0.682 against 0.813 / 0.658, RAND HIE 0.913 / 0.545
# against 0.910 / 0.549: no better across them.
# "auto" (the default): "site" where its scores can be read (their noise sd at most ``STAR_NOISE`` x the row estimate,
# ``fedtab.federation.marginals.selection_mode``), else "pooled" where its half the noise can be (wide, small tables),
# else the star on a declared target. "pooled" as the default everywhere, with the prediction for the site's DP row
# estimate (sensitivity 2; commit d5678fd, 3 seeds, epsilon 1, 4 sites), against "site" where "site" is read: Adult
# 0.881 / 0.732 against 0.900 / 0.765, bank 0.913 / 0.618 against 0.925 / 0.614, RAND HIE 0.894 against 0.910 (the
# public row count is off the site's by its noise, which hides a weak pair's dependence). "auto" (commit 5f61b09, 6
# runs, tag select-auto) on the 3 of 15 benchmark tables where it reads "pooled" instead of the star, quality / TSTR:
# ACTG 175 0.880 / 0.530 against 0.824 / 0.584, diabetes 0.868 / 0.511 against 0.831 / 0.497, ANES 1996 0.858 / 0.880
# against 0.892 / 0.937 (its target is the hub of its pairs: the star holds them all).
DEFAULT_OPTIONS = {"bins": "auto", "iters": 1000, "shares": [0.25, 0.25, 0.5], "select_shares": "auto"}
SELECT_SHARES = ("auto", "site", "pooled", "consortium")
# ``bins = "auto"``: a numerical column's runs in the two-way tables, chosen from what is public when the
# one-way phase is in (the DP row estimate, the tree measurement's noise sd): as many as leave a pair table
# with a two-code partner an expected count per cell of at least that sd, between MIN_BINS and MAX_BINS
# (``auto_bins``). Without DP, MAX_BINS.
MIN_BINS, MAX_BINS = 4, 16
FINE_BINS = 32  # equal-width cells of a numerical column's one-way measurement, over its agreed bounds


def model_options(options: dict | None) -> dict[str, Any]:
    """The model's options with defaults filled in; unknown keys are refused."""
    out = dict(DEFAULT_OPTIONS)
    unknown = sorted(set(options or {}) - set(out))
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for model 'mst'; expected some of {sorted(out)}.")
    out.update(options or {})
    bins, iters, shares = out["bins"], out["iters"], out["shares"]
    if bins != "auto" and (isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 64):
        raise ConfigError(f"model option 'bins' must be \"auto\" or a whole number in [2, 64]. Got {bins!r} instead.")
    if isinstance(iters, bool) or not isinstance(iters, int) or not 10 <= iters <= 100_000:
        raise ConfigError(f"model option 'iters' must be a whole number in [10, 100000]. Got {iters!r} instead.")
    if (not isinstance(shares, (list, tuple)) or len(shares) != 3
            or not all(isinstance(s, (int, float)) and s > 0 for s in shares)):
        raise ConfigError("model option 'shares' must be three numbers > 0 (one-way, selection, tree "
                          f"measurement shares of the training budget). Got {shares!r} instead.")
    out["shares"] = [float(s) / float(sum(shares)) for s in shares]
    if out["select_shares"] not in SELECT_SHARES:
        raise ConfigError("model option 'select_shares' must be 'auto', 'site', 'pooled' or 'consortium'. Got "
                          f"{out['select_shares']!r} instead.")
    return out


@dataclass(frozen=True)
class Discretisation:
    """Per column (in the encoding's order): its name, kind and number of codes; numerical columns also
    their interval edges (inner ones) and whether a missing code follows the intervals."""

    columns: tuple[dict[str, Any], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(c["size"]) for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [dict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Discretisation":
        return cls(columns=tuple(dict(c) for c in data["columns"]))


def discretise(transformer) -> Discretisation:
    """The public discretisation of a fitted ``TableTransformer`` before any measurement: numerical
    columns in ``FINE_BINS`` equal-width cells over their agreed bounds (``groups`` unset)."""
    from fedtab.transform.numerical import NumericalColumnTransformer

    from fedtab.transform.statistics import histogram_edges, point_cells

    cols = []
    for col in transformer.columns_:
        if isinstance(col, NumericalColumnTransformer):
            lo, hi = float(col.lower_), float(col.upper_)
            # The encoding's cells: one per grid value where the grid fits, else equal width with a cell of
            # its own for the lower bound and 0 (point masses: counts, amounts), on a grid or not.
            full = histogram_edges(col.spec, lo, hi, FINE_BINS, points=True) if hi > lo else np.array([lo, hi])
            edges = [float(e) for e in full[1:-1]]
            points = point_cells(col.spec, full, lo)
            cols.append({"name": col.spec.name, "kind": "numerical", "lower": float(full[0]),
                         "upper": float(full[-1]), "clip": [lo, hi], "edges": edges,
                         **({"points": points} if points else {}),
                         "missing": bool(col.has_missing_), "groups": None, "size": len(edges) + 1 + int(col.has_missing_)})
        else:
            cols.append({"name": col.spec.name, "kind": "categorical", "size": int(col.output_dim)})
    return Discretisation(columns=tuple(cols))


def renormalised(p: np.ndarray) -> np.ndarray:
    """Non-negative weights as shares summing to one (uniform when they sum to nothing)."""
    total = float(p.sum())
    return p / total if total > 0 else np.full(p.shape, 1.0 / p.size)


def norm_sub(counts: np.ndarray, total: float | None = None) -> np.ndarray:
    """Noisy counts -> shares: ``fedtab.privacy.mechanisms.norm_sub`` (one constant off every cell, the
    cells it empties left empty, ``total`` left in the rest), as shares summing to one; uniform where no
    cell holds anything. Post-processing."""
    from fedtab.privacy.mechanisms import norm_sub as counts_norm_sub

    c = np.asarray(counts, dtype=float)
    if c.size == 0:
        return c
    total = float(c.sum()) if total is None else float(total)
    if total <= 0 or not np.any(c > 0):
        return np.full(c.size, 1.0 / c.size)
    return renormalised(counts_norm_sub(c, total=total))


def auto_bins(rows: float, pair_sd: float) -> int:
    """The runs of a numerical column in the two-way tables for ``bins = "auto"``: the most (at most
    ``MAX_BINS``, at least ``MIN_BINS``) that leave ``rows / (2 x runs)``, a cell's expected count in a
    table with a two-code partner, at or above ``pair_sd``, the noise sd of a tree measurement. Public
    inputs only (the DP row estimate, the plan's noise).

    Measured at epsilon 1 on 4 sites (2-3 seeds; runs 16 against 8): penguins (266 rows, sd 15.6: 8 runs)
    TSTR 0.35 / 0.78, quality level; breast cancer (455 rows, sd 32: 7) quality 0.700 / 0.712; heart (736
    rows, sd 22: 16) 0.795 / 0.788, TSTR 0.75 / 0.66; Adult, bank, diabetes and Fair (3,000 rows) keep 16.
    benchmarks/bench_tables.py (3 seeds, tag auto-bins against rowsum): breast cancer quality 0.715 / 0.705,
    penguins 0.701 / 0.731 with TSTR 0.685 / 0.507 (its TSTR spans 0.29-0.93 across seeds), heart 0.801 /
    0.800: a mixed result, kept for its rule (no table's setting), not for a table."""
    if pair_sd <= 0:
        return MAX_BINS
    return int(min(MAX_BINS, max(MIN_BINS, math.floor(float(rows) / (2.0 * float(pair_sd))))))


def grouped(disc: Discretisation, fine_counts: list[np.ndarray], *, bins: int) -> Discretisation:
    """The discretisation of the two-way tables: each numerical column's fine cells merged into at most
    ``bins`` runs of about equal mass under its noisy one-way counts (post-processing); its ``size``
    becomes the number of runs (plus the missing code). Categorical columns are unchanged."""
    cols = []
    for c, counts in zip(disc.columns, fine_counts):
        if c["kind"] != "numerical":
            cols.append(dict(c))
            continue
        n_cells = len(c["edges"]) + 1
        counts = np.asarray(counts, dtype=float)
        p = norm_sub(counts[:n_cells], total=max(float(counts.sum()) - float(counts[n_cells:].sum()), 1.0))
        # Float dust (1e-12 or less) holds no rows: a run of such cells must not count as held.
        p = renormalised(np.where(p > 1e-12, p, 0.0))
        centre = np.cumsum(p) - p / 2
        groups = np.minimum((centre * bins).astype(int), bins - 1)
        # A run without mass (cells the noise left empty) joins its neighbour: no group may hold only
        # empty cells, or a noisy two-way table would send rows into a range no site's rows occupy.
        mass = np.bincount(groups, weights=p, minlength=bins)
        if mass.sum() > 0:
            held = np.flatnonzero(mass > 0)
            groups = held[np.minimum(np.searchsorted(held, groups), held.size - 1)]
        groups = np.unique(groups, return_inverse=True)[1]  # runs numbered 0.. without gaps
        cols.append({**c, "groups": [int(g) for g in groups], "fine": [float(x) for x in p],
                     "size": int(groups.max()) + 1 + int(c["missing"])})
    return Discretisation(columns=tuple(cols))


def fine_codes(frame, transformer, disc: Discretisation) -> np.ndarray:
    """A typed table's rows as codes of the fine discretisation (rows x columns, int64), at a site."""
    from fedtab.transform.values import category_values, numeric_values

    out = np.empty((len(frame), len(disc.columns)), dtype=np.int64)
    for j, (col, c) in enumerate(zip(transformer.columns_, disc.columns)):
        series = frame[c["name"]]
        if c["kind"] == "numerical":
            x = numeric_values(series, col.spec)
            missing = np.isnan(x)
            code = np.searchsorted(np.asarray(c["edges"], dtype=float), np.where(missing, c["lower"], x), side="right")
            if c["missing"]:
                code = np.where(missing, len(c["edges"]) + 1, code)
            out[:, j] = code
        else:
            out[:, j] = np.argmax(col.transform(category_values(series, col.spec)), axis=1)
    return out


def coarse_codes(fine: np.ndarray, disc: Discretisation) -> np.ndarray:
    """Fine codes -> the grouped discretisation's codes (a numerical column's missing code comes last)."""
    out = fine.copy()
    for j, c in enumerate(disc.columns):
        if c["kind"] == "numerical" and c.get("groups") is not None:
            groups = np.asarray(c["groups"], dtype=np.int64)
            n_cells = len(groups)
            missing = fine[:, j] >= n_cells
            out[:, j] = np.where(missing, c["size"] - 1, groups[np.minimum(fine[:, j], n_cells - 1)])
    return out


def marginal_counts(codes: np.ndarray, sizes: tuple[int, ...], cliques: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Exact counts of each clique's code combinations (flattened, C order)."""
    out = []
    for clique in cliques:
        shape = tuple(sizes[i] for i in clique)
        flat = np.ravel_multi_index(tuple(codes[:, i] for i in clique), shape) if len(codes) else np.array([], int)
        out.append(np.bincount(flat, minlength=int(np.prod(shape))).astype(np.float64))
    return out


def spanning_tree(d: int, weights: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """Maximum spanning tree (Kruskal) over ``d`` columns; pairs absent from ``weights`` count as 0."""
    parent = list(range(d))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = sorted(((weights.get((a, b), 0.0), a, b) for a in range(d) for b in range(a + 1, d)),
                   key=lambda t: (-t[0], t[1], t[2]))
    tree = []
    for _, a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            tree.append((a, b))
    return tree


class MarginalModel:
    """The fitted model: the tree's two-way marginals (probabilities, grouped discretisation), the
    columns' one-way ones, and each numerical column's fine one-way shares (values inside a group)."""

    name = NAME

    def __init__(self, transformer, disc: Discretisation, tree: list[tuple[int, int]],
                 pairs: dict[tuple[int, int], np.ndarray], singles: dict[int, np.ndarray]):
        self.transformer = transformer
        self.disc = disc
        self.tree = [tuple(e) for e in tree]
        self.pairs = pairs
        self.singles = singles

    # -- the model file ------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        out = {"mst/tree": np.asarray(self.tree, dtype=np.int64).reshape(-1, 2),
               "mst/sizes": np.asarray(self.disc.sizes, dtype=np.int64)}
        for j, p in self.singles.items():
            out[f"mst/single/{j}"] = np.asarray(p, dtype=np.float64)
        for (a, b), p in self.pairs.items():
            out[f"mst/pair/{a}/{b}"] = np.asarray(p, dtype=np.float64)
        for j, c in enumerate(self.disc.columns):
            if c["kind"] == "numerical":
                out[f"mst/edges/{j}"] = np.asarray(c["edges"], dtype=np.float64)
                out[f"mst/groups/{j}"] = np.asarray(c["groups"], dtype=np.int64)
                out[f"mst/fine/{j}"] = np.asarray(c["fine"], dtype=np.float64)
        return out

    @classmethod
    def from_weights(cls, transformer, weights: dict[str, np.ndarray], options: dict) -> "MarginalModel":
        cols = []
        for j, c in enumerate(discretise(transformer).columns):  # the cells the model was fitted on, as stored
            if c["kind"] == "numerical":
                groups = [int(g) for g in np.asarray(weights[f"mst/groups/{j}"])]
                c = {**c, "edges": [float(e) for e in np.asarray(weights[f"mst/edges/{j}"])], "groups": groups,
                     "fine": [float(x) for x in np.asarray(weights[f"mst/fine/{j}"])],
                     "size": (max(groups) + 1 if groups else 1) + int(c["missing"])}
            cols.append(c)
        disc = Discretisation(columns=tuple(cols))
        tree = [tuple(int(v) for v in e) for e in np.asarray(weights["mst/tree"]).reshape(-1, 2)]
        singles = {int(k.rsplit("/", 1)[1]): np.asarray(v, dtype=np.float64)
                   for k, v in weights.items() if k.startswith("mst/single/")}
        pairs = {}
        for k, v in weights.items():
            if k.startswith("mst/pair/"):
                _, _, a, b = k.split("/")
                pairs[(int(a), int(b))] = np.asarray(v, dtype=np.float64)
        return cls(transformer, disc, tree, pairs, singles)

    # -- sampling ------------------------------------------------------------------------------------
    def _order(self) -> list[tuple[int, int | None]]:
        """(column, parent) in sampling order: every tree component from its lowest column."""
        d = len(self.disc.columns)
        nbrs: dict[int, list[int]] = {j: [] for j in range(d)}
        for a, b in self.tree:
            nbrs[a].append(b)
            nbrs[b].append(a)
        seen, order = set(), []
        for root in range(d):
            if root in seen:
                continue
            seen.add(root)
            queue = [(root, None)]
            while queue:
                j, parent = queue.pop(0)
                order.append((j, parent))
                for k in sorted(nbrs[j]):
                    if k not in seen:
                        seen.add(k)
                        queue.append((k, j))
        return order

    def _pair(self, parent: int, child: int) -> np.ndarray:
        """P(parent, child) as a matrix [parent code, child code]."""
        sizes = self.disc.sizes
        if (parent, child) in self.pairs:
            return self.pairs[(parent, child)].reshape(sizes[parent], sizes[child])
        return self.pairs[(child, parent)].reshape(sizes[child], sizes[parent]).T

    @staticmethod
    def _draw(probs: np.ndarray, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """One code per row, drawn from the row ``rows[i]`` of ``probs`` (rows normalised here)."""
        p = np.maximum(probs, 0)
        sums = p.sum(1, keepdims=True)
        p = np.where(sums > 0, p / np.where(sums > 0, sums, 1), 1.0 / p.shape[1])
        cum = np.cumsum(p, axis=1)
        u = rng.random(len(rows))
        return np.minimum((cum[rows] < u[:, None]).sum(1), p.shape[1] - 1)

    def sample_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        codes = np.zeros((n, len(self.disc.columns)), dtype=np.int64)
        for j, parent in self._order():
            if parent is None:
                p = renormalised(np.maximum(self.singles[j], 0))
                codes[:, j] = rng.choice(p.size, size=n, p=p)
            else:
                codes[:, j] = self._draw(self._pair(parent, j), rng, codes[:, parent])
        return codes

    def _values(self, j: int, code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A numerical column's values for its group codes: a fine cell of the group by its one-way share,
        then a value uniform inside the cell; the missing code gives NaN."""
        c = self.disc.columns[j]
        groups = np.asarray(c["groups"], dtype=np.int64)
        fine = np.maximum(np.asarray(c["fine"], dtype=float), 0)
        n_groups = int(groups.max()) + 1 if groups.size else 1
        # Within each group, the fine cells' shares (uniform when the group's noisy mass is nil).
        within = np.zeros((n_groups, groups.size))
        within[groups, np.arange(groups.size)] = fine + 1e-12
        g = np.minimum(code, n_groups - 1)
        cell = self._draw(within, rng, g)
        bounds = np.concatenate([[c["lower"]], np.asarray(c["edges"], dtype=float), [c["upper"]]])
        v = bounds[cell] + rng.random(len(code)) * (bounds[cell + 1] - bounds[cell])
        for i, point in c.get("points", ()):  # a point cell (a continuous column's 0 or floor): the point itself
            v = np.where(cell == int(i), float(point), v)
        v = np.clip(v, *c.get("clip", (c["lower"], c["upper"])))
        if c["missing"]:
            v = np.where(code == c["size"] - 1, np.nan, v)
        return v

    def sample_frame(self, n: int, *, seed: int, relabel: bool = True):
        """``n`` rows as a typed table in schema order (id columns absent), drawn with ``seed``; with a
        categorical target whose two-way tables the encoding measured, the target is drawn again from them
        (``relabel``, as ``FederatedSynthesizer.sample`` does for every model)."""
        import pandas as pd

        from fedtab.transform.numerical import NumericalColumnTransformer
        from fedtab.transform.values import category_series, numeric_series

        from fedtab.transform.calibration import relabelled

        rng = np.random.default_rng([int(seed), 7])
        codes = self.sample_codes(int(n), rng)
        tr = self.transformer
        decoded = {}
        for j, col in enumerate(tr.columns_):
            if isinstance(col, NumericalColumnTransformer):
                decoded[col.spec.name] = col.apply_rounding(self._values(j, codes[:, j], rng), rng)
            else:
                decoded[col.spec.name] = np.array(col.labels, dtype=object)[codes[:, j]]
        if relabel:  # a declared target: drawn again from its two-way tables of the encoding, where measured
            decoded = relabelled(tr.columns_, decoded, tr.pair_tables_, rng, other_label=tr.plan_.other_label) or decoded
        index = pd.RangeIndex(int(n))
        out = {}
        for col in tr.columns_:
            series = numeric_series if isinstance(col, NumericalColumnTransformer) else category_series
            out[col.spec.name] = series(decoded[col.spec.name], col.spec, index)
        return pd.DataFrame(out, index=index)


MODEL = MarginalModel  # what ``fedtab.models.registry.measured_module`` names

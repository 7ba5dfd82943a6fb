"""Two-way tables: counts of the sites' rows over pairs of columns, for the marginal calibration.

A generator trained under DP-SGD on a few thousand rows per site gets the one-way marginals wrong
(calibration fixes them) and, worse for utility, how the other columns relate to the one a user cares
about (measured on Adult at epsilon 1: TSTR ROC-AUC ~0.6 where the real rows give 0.93). Marginal
methods (MST, AIM) win at small epsilon because they measure such low-order tables directly. This
module lets the encoding measure them too, and the sampler rake its candidate rows onto them:

* ``EncodingPlan.pairs`` names the column pairs (``FederatedSynthesizer(target="income")`` asks for
  the target against every other column). They are one more encoding phase, ``pairs``, after
  ``histogram``, because its coarse numerical cells are read off the merged histogram (public).
* The coordinator asks only for the pairs whose tables would carry signal (``MIN_PAIR_SNR``; the
  budget of the others is not spent, so DP-SGD gets it).
* Each site releases, per pair, one count vector over the pair's cells (a record is in exactly one
  cell: L2 sensitivity 1, the same Gaussian mechanism and ledger entry kind as a histogram).
* The coordinator sums the sites' vectors and norm-subs them (post-processing), like histograms.
* ``PairTable`` keeps the merged table in the transformer (and its model file; under DP fitted to the
  one-way histograms) and codes decoded rows into its cells, so ``calibration.calibrate`` can redraw
  the target from the tables (the default) or rake the rows onto them.

Cells of one column: a categorical column's categories, then 'other' (when the plan uses it), then
missing; a numerical column's ``PAIR_CELLS`` cells of about equal mass (edges taken from the merged
histogram's edges at its quantiles), then missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtab.errors import SchemaError

PAIR_CELLS = 10  # cells per numerical column in a two-way table (fewer cells, less noise per cell)
# A pair is measured only when its merged cells would hold on average at least this many times the
# noise sd (rows / (cells x noise sd), all public before the phase). Below it the table is mostly
# noise and its budget is better left to DP-SGD: measured at epsilon 1 (30% to the encoding) on the
# heart hospitals (735 rows) every pair scores 0.09-0.32 and redrawing the target from such tables
# cut diffusion's TSTR from 0.70 to 0.44; on Adult (26,048 rows) they score 1.6-22.
MIN_PAIR_SNR = 1.0
F_PAIR_EDGES = "pair_edges"
PAIR_PREFIX = "@pair"
KEY_PAIRS_MEASURED = "@pairs/measured"


def measured_pairs(request: dict) -> list[int]:
    """Indices (into ``EncodingPlan.pairs``) of the pairs a pairs-phase request asks the sites for."""
    return [int(i) for i in np.asarray(request.get(KEY_PAIRS_MEASURED, []), dtype=np.int64)]


def pair_key(i: int, field_name: str) -> str:
    """Wire key of pair ``i``'s field (``@pair<i>/<field>``)."""
    return f"{PAIR_PREFIX}{i}/{field_name}"


def coarse_edges(edges: np.ndarray, counts: np.ndarray, cells: int = PAIR_CELLS) -> np.ndarray:
    """About ``cells`` cells of equal mass, with edges taken among the histogram's ``edges`` (pure).

    A point mass (e.g. a count of 0 for most rows) stays one cell; empty merged histograms give
    equal-width cells.
    """
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    if len(edges) - 1 <= cells:
        return edges.copy()
    total = counts.sum()
    if total <= 0:
        return edges[np.unique(np.linspace(0, len(edges) - 1, cells + 1).round().astype(int))]
    cum = np.concatenate([[0.0], np.cumsum(counts)]) / total
    inner = np.searchsorted(cum, np.arange(1, cells) / cells, side="left")
    idx = np.unique(np.concatenate([[0], np.clip(inner, 1, len(edges) - 2), [len(edges) - 1]]))
    return edges[idx]


@dataclass(frozen=True)
class CellLayout:
    """How one column's values map onto its cells in a two-way table (public)."""

    column: str
    kind: str  # "numerical" | "categorical"
    edges: np.ndarray | None = None  # numerical
    categories: tuple[str, ...] = ()  # categorical
    other: bool = False

    @property
    def size(self) -> int:
        if self.kind == "numerical":
            return len(self.edges) - 1 + 1
        return len(self.categories) + int(self.other) + 1

    def codes(self, values: np.ndarray, *, other_label: str | None = None, site: str | None = None) -> np.ndarray:
        """Cell of each value: float64 with NaN (numerical) or str/None (categorical); missing is the
        last cell. Categorical values outside the categories go to 'other' (a value equal to
        ``other_label`` too: what a decoded 'other' slot holds); without 'other' they are an error."""
        if self.kind == "numerical":
            x = np.asarray(values, dtype=np.float64)
            k = len(self.edges) - 1
            out = np.full(len(x), k, dtype=np.int64)
            present = ~np.isnan(x)
            out[present] = np.clip(np.searchsorted(self.edges, x[present], side="right") - 1, 0, k - 1)
            return out
        index = {c: i for i, c in enumerate(self.categories)}
        n_cat, missing = len(self.categories), self.size - 1
        out = np.empty(len(values), dtype=np.int64)
        unknown = set()
        for i, v in enumerate(values):
            if v is None:
                out[i] = missing
            elif v in index:
                out[i] = index[v]
            elif self.other or (other_label is not None and v == other_label):
                out[i] = n_cat
            else:
                unknown.add(v)
        if unknown:
            where = f" at site '{site}'" if site else ""
            raise SchemaError(f"Column '{self.column}'{where}: value(s) {sorted(unknown)[:5]} are outside its domain "
                              f"{list(self.categories)[:10]}; fix the data or the schema's 'categories'.")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "categories": list(self.categories),
                "other": int(self.other)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], edges: np.ndarray | None) -> "CellLayout":
        return cls(column=str(data["column"]), kind=str(data["kind"]),
                   edges=None if edges is None else np.asarray(edges, dtype=np.float64),
                   categories=tuple(str(c) for c in data["categories"]), other=bool(data["other"]))


def fit_margins(table: np.ndarray, row: np.ndarray, col: np.ndarray, iterations: int = 50) -> np.ndarray:
    """The 2-D ``table`` scaled (iterative proportional fitting) so that its row and column sums follow
    ``row`` and ``col`` (frequencies, rescaled to the table's total); pure.

    Under DP a two-way table spreads the same noise over many more cells than a one-way histogram,
    and its 'other' and missing rows carry noise the one-way release had zeroed: fitting the table to
    the one-way marginals keeps its interaction and takes the margins from the better estimate.
    """
    t = np.clip(np.asarray(table, dtype=np.float64), 0.0, None)
    total = t.sum()
    row = np.clip(np.asarray(row, dtype=np.float64), 0.0, None)
    col = np.clip(np.asarray(col, dtype=np.float64), 0.0, None)
    if total <= 0 or row.sum() <= 0 or col.sum() <= 0:
        return t
    row, col = row / row.sum() * total, col / col.sum() * total
    # A cell whose row and column both have mass but which holds nothing gets a little, so that the
    # fit can reach margins the noisy table had emptied.
    t = t + 1e-3 * total / t.size * ((row[:, None] > 0) & (col[None, :] > 0))
    for _ in range(iterations):
        r = t.sum(axis=1)
        t = t * np.divide(row, r, out=np.zeros_like(row), where=r > 0)[:, None]
        c = t.sum(axis=0)
        t = t * np.divide(col, c, out=np.zeros_like(col), where=c > 0)[None, :]
    return t


def pair_counts(a: CellLayout, b: CellLayout, codes_a: np.ndarray, codes_b: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Flat (a-major) counts of the pair's cells."""
    return np.bincount(codes_a * b.size + codes_b, weights=weights, minlength=a.size * b.size).astype(np.float64)


@dataclass(frozen=True)
class PairTable:
    """The merged two-way table of one pair (under DP: noisy, norm-subbed) and its layouts."""

    a: CellLayout
    b: CellLayout
    counts: np.ndarray  # flat, a-major, a.size * b.size cells
    noise_sd: float = 0.0

    def with_margins(self, a_freq: np.ndarray, b_freq: np.ndarray) -> "PairTable":
        """This table fitted to one-way marginals over its cells (see :func:`fit_margins`)."""
        fitted = fit_margins(np.asarray(self.counts).reshape(self.a.size, self.b.size), a_freq, b_freq)
        return PairTable(self.a, self.b, fitted.ravel(), self.noise_sd)

    @property
    def frequencies(self) -> np.ndarray:
        c = np.clip(np.asarray(self.counts, dtype=np.float64), 0.0, None)
        total = c.sum()
        return c / total if total > 0 else np.full(len(c), 1.0 / len(c))

    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able config and named float arrays (model files: JSON + safetensors, no pickle)."""
        arrays = {"counts": np.asarray(self.counts, dtype=np.float64)}
        for side, lay in (("a", self.a), ("b", self.b)):
            if lay.edges is not None:
                arrays[f"{side}_edges"] = np.asarray(lay.edges, dtype=np.float64)
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "noise_sd": float(self.noise_sd)}, arrays

    @classmethod
    def from_dict(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> "PairTable":
        return cls(a=CellLayout.from_dict(config["a"], arrays.get("a_edges")),
                   b=CellLayout.from_dict(config["b"], arrays.get("b_edges")),
                   counts=np.asarray(arrays["counts"], dtype=np.float64), noise_sd=float(config["noise_sd"]))

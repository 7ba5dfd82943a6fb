"""``TableTransformer``: the whole table, fitted once from merged site statistics, exposing spans.

Federation protocol (the coordinator and the sites exchange only flat dicts of arrays and scalars)::

    plan = EncodingPlan(schema, dp=EncodingDP(epsilon=0.1, delta=1e-6))   # public, sent to sites
    merged = None
    for phase in plan.phases():
        request = phase_request(plan, phase, merged)                        # coordinator
        stats = [site_statistics(df, plan, phase, request, ledger=l)  # each site, own ledger, secret noise
                 for each site]
        merged = merge_statistics(plan, phase, stats)                       # coordinator, pure
    transformer = TableTransformer().fit_from_statistics(plan, merged)

:func:`run_phases` is this loop; :func:`fit_federated` runs it in one process (tests, benchmarks) and
the federation engine through its transports.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd

from fedtab.errors import ConfigError, check_is_fitted
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.schema import TableSchema
from fedtab.transform.categorical import CategoricalColumnTransformer
from fedtab.transform.numerical import NumericalColumnTransformer
from fedtab.transform.plan import (
    F_CATEGORIES, F_COUNTS, F_EDGES, F_LOWER, F_MISSING, F_NOISE_SD, F_OTHER, F_RAW, F_ROUNDING, F_UPPER, KEY_PHASE,
    PHASE_HISTOGRAM, PHASE_PAIRS, ROUNDING_NOISE_FACTOR, EncodingDP, EncodingPlan, wire_key,
)
from fedtab.transform.pairs import PairTable, measured_pairs, pair_key
from fedtab.transform.spans import ConditionSpan, SpanInfo, span_offsets
from fedtab.transform.statistics import (
    cell_layout, grid_step, histogram_rows, merge_statistics, phase_request, site_rows, site_statistics,
)
from fedtab.transform.values import category_series, category_values, numeric_series, numeric_values

TRANSFORMER_FORMAT = "fedtab.table_transformer/1"


def _is_numeric(spec) -> bool:
    return spec.type in ("numerical", "datetime")


class TableTransformer:
    """Encodes a typed table into a float32 matrix of spans and decodes it back (estimator contract)."""

    def __init__(self):
        pass  # everything is learned from the plan and the merged statistics in fit_from_statistics

    def fit_from_statistics(self, plan: EncodingPlan, merged: dict[str, Any],
                            pairs: dict[str, Any] | None = None) -> "TableTransformer":
        """Fit every column from the merged ``histogram`` statistics; keep the merged two-way tables of
        the ``pairs`` phase when the plan names pairs."""
        if merged.get(KEY_PHASE) != PHASE_HISTOGRAM:
            raise ConfigError(f"fit_from_statistics needs the merged '{PHASE_HISTOGRAM}' statistics, "
                              f"got phase {merged.get(KEY_PHASE)!r}.")
        if bool(plan.pairs) != (pairs is not None) or (pairs is not None and pairs.get(KEY_PHASE) != PHASE_PAIRS):
            raise ConfigError(f"fit_from_statistics needs the merged '{PHASE_PAIRS}' statistics exactly when the "
                              f"plan names pairs (it names {len(plan.pairs)}).")
        columns = _fit_columns(plan, merged)
        tables = []
        if plan.pairs:
            request = phase_request(plan, PHASE_PAIRS, merged)
            for i in measured_pairs(request):
                a, b = plan.pairs[i]
                table = PairTable(cell_layout(plan, request, a), cell_layout(plan, request, b),
                                  counts=np.asarray(pairs[pair_key(i, F_COUNTS)], dtype=np.float64),
                                  noise_sd=float(pairs[pair_key(i, F_NOISE_SD)]))
                if plan.dp is not None:  # exact tables already agree with the exact histograms
                    table = table.with_margins(_cell_margin(table.a, merged), _cell_margin(table.b, merged))
                tables.append(table)
        self._set_fitted(plan, columns, tables)
        return self

    def fit_sites(self, releases: dict[str, dict[str, Any]]) -> "TableTransformer":
        """With a site column (``EncodingPlan.site_column``): fit each site's own column marginals from
        its ``histogram`` release alone (post-processing of what it released: no privacy cost), for
        ``inverse_transform`` to calibrate the rows labelled with that site onto them."""
        check_is_fitted(self, "plan_")
        plan = self.plan_
        site_columns, counts = {}, []
        for site in plan.schema[plan.site_column].categories:
            merged = merge_statistics(plan, PHASE_HISTOGRAM, [releases[site]])
            rows = histogram_rows(plan, merged)
            counts.append(site_rows(plan, releases[site]))
            # Exact counts fit a site's own columns; under DP only its missing shares and mode weights move
            # (see _site_numerical), so no mixture is fitted to its noisy histograms.
            own = _fit_columns(plan, merged) if plan.dp is None else [None] * len(self.columns_)
            site_columns[site] = [
                (mine if plan.dp is None else _site_numerical(union, merged, rows=rows))
                if isinstance(union, NumericalColumnTransformer) else
                _site_categorical(union, releases[site], rows=rows,
                                  noise_sd=float(merged[wire_key(union.spec.name, F_NOISE_SD)]))
                for union, mine in zip(self.columns_, own)]
        # The sites' shares from their row counts read off every column (as the FedAvg weights), not from
        # the site column's own noisy counts (heart, epsilon 1: one hospital's share read 14% for 22%).
        columns = [copy.copy(c) for c in self.columns_]
        site_col = next(c for c in columns if c.spec.name == plan.site_column)
        site_col.frequencies_ = np.asarray(counts) / sum(counts)
        self._set_fitted(plan, columns, self.pair_tables_, site_columns)
        return self

    def _set_fitted(self, plan: EncodingPlan, columns: list, pair_tables: list[PairTable],
                    site_columns: dict[str, list] | None = None) -> None:
        self.plan_ = plan
        self.site_columns_ = dict(site_columns or {})
        self.columns_ = columns
        self.pair_tables_ = list(pair_tables)
        self.spans_ = [s for c in columns for s in c.spans]
        offsets = span_offsets(self.spans_)
        conditions, i = [], 0
        for c in columns:
            if isinstance(c, CategoricalColumnTransformer):
                conditions.append(ConditionSpan(c.spec.name, offsets[i], c.output_dim, c.frequencies_.copy(),
                                                pinned=c.spec.name == plan.site_column))
            i += len(c.spans)
        self.condition_spans_ = conditions
        self.output_dim_ = int(sum(s.dim for s in self.spans_))

    # -- the contract models read ----------------------------------------------------------------
    @property
    def spans(self) -> list[SpanInfo]:
        check_is_fitted(self, "spans_")
        return list(self.spans_)

    @property
    def condition_spans(self) -> list[ConditionSpan]:
        check_is_fitted(self, "condition_spans_")
        return list(self.condition_spans_)

    @property
    def output_dim(self) -> int:
        check_is_fitted(self, "output_dim_")
        return self.output_dim_

    @property
    def schema(self) -> TableSchema:
        check_is_fitted(self, "plan_")
        return self.plan_.schema

    # -- encode / decode ---------------------------------------------------------------------------
    def transform(self, df: pd.DataFrame, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Typed table -> float32 matrix (rows x ``output_dim``). id columns are ignored.

        ``rng=None`` picks each value's most probable mixture mode (deterministic); with an ``rng`` the
        mode is drawn from its posterior, as CTGAN does when it encodes its training data.
        """
        check_is_fitted(self, "columns_")
        blocks = []
        for col in self.columns_:
            series = df[col.spec.name]
            if isinstance(col, NumericalColumnTransformer):
                blocks.append(col.transform(numeric_values(series, col.spec), rng=rng))
            else:
                blocks.append(col.transform(category_values(series, col.spec)))
        return np.concatenate(blocks, axis=1).astype(np.float32, copy=False)

    def inverse_transform(self, data: np.ndarray, *, calibrate_rows: int | None = None,
                          rng: np.random.Generator | None = None, quantile_map: bool = False,
                          relabel: bool = False) -> pd.DataFrame:
        """Matrix (rows x ``output_dim``; generator outputs after their activations) -> typed table in
        schema order, id columns absent.

        ``calibrate_rows=n`` (with an ``rng``): pick ``n`` of the rows so that category and missing shares
        (and the two-way tables of the plan's pairs) match the fitted ones, and with ``quantile_map`` map numerical values onto the fitted
        distributions too, and with ``relabel`` draw the target column again from the two-way tables
        (``fedtab.transform.calibration``; post-processing, no privacy cost). Given an ``rng`` (generated
        rows), numerical columns with a learned rounding profile are rounded to it
        (``NumericalColumnTransformer.apply_rounding``).
        """
        check_is_fitted(self, "columns_")
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != self.output_dim_:
            raise ConfigError(f"inverse_transform expects a 2-D array with {self.output_dim_} columns; "
                              f"got shape {data.shape}.")
        decoded, latent, pos = {}, {}, 0
        for col in self.columns_:
            block = data[:, pos:pos + col.output_dim]
            if isinstance(col, NumericalColumnTransformer) and col.has_missing_ and calibrate_rows is not None:
                value, score = latent[col.spec.name] = col.decode_parts(block)
                decoded[col.spec.name] = np.where(score > 0, np.nan, value)
            else:
                decoded[col.spec.name] = col.inverse_transform(block)
            pos += col.output_dim
        if calibrate_rows is not None:
            from fedtab.transform.calibration import calibrate

            rng_c = rng if rng is not None else np.random.default_rng(0)
            if self.site_columns_:
                decoded = self._calibrate_by_site(decoded, int(calibrate_rows), rng_c, quantile_map=quantile_map,
                                                  relabel=relabel, missing_scores=latent)
            else:
                decoded = calibrate(self.columns_, decoded, int(calibrate_rows), rng_c, numerical=quantile_map,
                                    pair_tables=self.pair_tables_, other_label=self.plan_.other_label,
                                    relabel=relabel, missing_scores=latent)
        if rng is not None:  # generated rows; a plain round trip keeps its values
            for col in self.columns_:
                if isinstance(col, NumericalColumnTransformer):
                    decoded[col.spec.name] = col.apply_rounding(decoded[col.spec.name], rng)
        index = pd.RangeIndex(len(next(iter(decoded.values()))))
        out = {}
        for col in self.columns_:
            series = numeric_series if isinstance(col, NumericalColumnTransformer) else category_series
            out[col.spec.name] = series(decoded[col.spec.name], col.spec, index)
        return pd.DataFrame(out, index=index)

    def _calibrate_by_site(self, decoded: dict[str, np.ndarray], n: int, rng: np.random.Generator, *,
                           quantile_map: bool, relabel: bool, missing_scores: dict) -> dict[str, np.ndarray]:
        """Calibration with a site column: each site's rows (as many as its share of the sites' rows,
        see ``fit_sites``) are picked from the candidates labelled with it and calibrated onto that
        site's own marginals. A categorical target is first drawn again from the merged two-way tables
        (``relabel``), which hold its table with the site column too."""
        from fedtab.transform.calibration import calibrate, relabelled

        plan = self.plan_
        redrawn = relabelled(self.columns_, decoded, self.pair_tables_, rng, other_label=plan.other_label) \
            if relabel else None
        decoded = decoded if redrawn is None else redrawn
        site_col = next(c for c in self.columns_ if c.spec.name == plan.site_column)
        labels = np.asarray(decoded[plan.site_column], dtype=object)
        quota = _apportion(n, np.asarray(site_col.frequencies_, dtype=np.float64))
        parts = []
        for site, want in zip(site_col.labels, quota):
            rows = np.flatnonzero(labels == site)
            columns = [c for c in self.site_columns_[str(site)] if c.spec.name != plan.site_column]
            if want == 0:
                continue
            if len(rows) < want:
                raise ConfigError(f"Site '{site}': the model drew {len(rows)} candidate row(s) labelled with it, "
                                  f"{want} are wanted (its share of {n}). A model that generates the site column "
                                  "itself (TVAE, diffusion) rarely draws this site; train longer, or use 'ctgan', "
                                  "which is conditioned on the site.")
            part = calibrate(columns, {k: v[rows] for k, v in decoded.items() if k != plan.site_column},
                             int(want), rng, numerical=quantile_map,
                             missing_scores={k: (v[rows], s[rows]) for k, (v, s) in missing_scores.items()})
            part[plan.site_column] = np.full(len(next(iter(part.values()))), site, dtype=object)
            parts.append(part)
        order = rng.permutation(sum(len(p[plan.site_column]) for p in parts))
        return {k: np.concatenate([p[k] for p in parts])[order] for k in decoded}

    # -- serialisation: JSON config + named float arrays (for JSON + safetensors; no pickle) ----------
    def to_dict(self) -> dict[str, Any]:
        """``{"config": <JSON-able>, "arrays": {name: float64 ndarray}}``."""
        check_is_fitted(self, "columns_")
        config_cols, arrays = _columns_to_dict(self.columns_)
        config_pairs = []
        for i, table in enumerate(self.pair_tables_):
            d, arr = table.to_dict()
            config_pairs.append({**d, "arrays": {k: f"pair{i}/{k}" for k in arr}})
            arrays.update({f"pair{i}/{k}": v for k, v in arr.items()})
        config_sites = {}
        for j, (site, cols) in enumerate(self.site_columns_.items()):
            config_sites[site], site_arrays = _columns_to_dict(cols, prefix=f"site{j}/")
            arrays.update(site_arrays)
        return {"config": {"format": TRANSFORMER_FORMAT, "plan": self.plan_.to_dict(), "columns": config_cols,
                           "pairs": config_pairs, "sites": config_sites}, "arrays": arrays}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TableTransformer":
        config, arrays = data["config"], data["arrays"]
        if config.get("format") != TRANSFORMER_FORMAT:
            raise ConfigError(f"Not a table transformer: expected format {TRANSFORMER_FORMAT!r}, "
                              f"got {config.get('format')!r}.")
        plan = EncodingPlan.from_dict(config["plan"])
        columns = _columns_from_dict(plan, config["columns"], arrays)
        sites = {site: _columns_from_dict(plan, cols, arrays) for site, cols in config.get("sites", {}).items()}
        tables = [PairTable.from_dict(d, {k: np.asarray(arrays[name]) for k, name in d["arrays"].items()})
                  for d in config.get("pairs", [])]
        named = {frozenset(p) for p in plan.pairs}
        if any(frozenset((t.a.column, t.b.column)) not in named for t in tables):
            raise ConfigError(f"The table transformer holds two-way tables of pairs its plan does not name "
                              f"({[(t.a.column, t.b.column) for t in tables]} vs {list(plan.pairs)}): the file "
                              "is damaged or was edited.")
        self = cls()
        self._set_fitted(plan, columns, tables, sites)
        return self


def _site_numerical(union: NumericalColumnTransformer, merged: dict[str, Any], *, rows: float) -> NumericalColumnTransformer:
    """A site's numerical column under DP: the union's modes, reweighted to the site's noisy counts, and
    the site's own missing share. A site's histogram alone is too noisy for a distribution of its own
    (heart, epsilon 1: 100 rows over 40 cells of noise sd 28; fitted ages 74 +- 5 where the rows average
    55), but a few mode weights are not: least squares with weights >= 0 on the raw counts, then
    shrunk towards the union's weights by the positive-part James-Stein factor (see ``_site_categorical``)."""
    from scipy.optimize import nnls
    from scipy.special import ndtr

    out = copy.copy(union)
    name = union.spec.name
    missing = float(merged[wire_key(name, F_MISSING)])
    present = max(rows - missing, 1.0)  # as fit_from_histogram counts them under DP
    if union.has_missing_:
        out.missing_share_ = missing / (present + missing)
    raw = merged.get(wire_key(name, F_RAW))
    if raw is None or len(union.weights_) < 2:
        return out
    edges = np.asarray(merged[wire_key(name, F_EDGES)], dtype=np.float64)
    cells = np.diff(ndtr((edges[None, :] - union.means_[:, None]) / union.stds_[:, None]), axis=1).T * present
    w, _ = nnls(cells, np.asarray(raw, dtype=np.float64))
    if w.sum() <= 0:
        return out
    w = w / w.sum()
    d = cells @ (w - union.weights_)
    energy = float(d @ d)
    sd = float(merged[wire_key(name, F_NOISE_SD)])
    lam = max(0.0, 1.0 - len(w) * sd ** 2 / energy) if energy > 0 else 0.0
    out.weights_ = union.weights_ + lam * (w - union.weights_)
    return out


def _site_categorical(union: CategoricalColumnTransformer, release: dict[str, Any], *, rows: float,
                      noise_sd: float) -> CategoricalColumnTransformer:
    """A site's categorical column: its released counts (unclipped) shrunk towards its rows spread as
    the union's frequencies by the positive-part James-Stein factor ``1 - k sigma^2 / |d|^2`` (``d``: the
    counts minus that spread, ``k`` cells, ``sigma`` the site's noise sd): a departure within the noise
    falls back to the union, one far beyond it (a hospital that never records a column) is kept."""
    name = union.spec.name
    counts = np.asarray(release[wire_key(name, F_COUNTS)], dtype=np.float64)
    labels = [str(c) for c in release[wire_key(name, F_CATEGORIES)]] + ([union.other_label] if release[wire_key(name, F_OTHER)] else [])
    own = dict(zip(labels, counts))
    own[None] = float(release[wire_key(name, F_MISSING)])
    p = np.asarray(union.frequencies_, dtype=np.float64)
    c = np.array([own.get(_label_key(label), 0.0) for label in union.labels])
    d = c - rows * p
    energy = float(d @ d)
    lam = max(0.0, 1.0 - len(p) * noise_sd ** 2 / energy) if energy > 0 else 0.0
    f = np.clip(rows * p + lam * d, 0.0, None)
    out = copy.copy(union)
    out.frequencies_ = f / f.sum() if f.sum() > 0 else p
    return out


def _label_key(label) -> str | None:
    return None if label is None else str(label)


def _apportion(n: int, shares: np.ndarray) -> np.ndarray:
    """``n`` split in proportion to ``shares`` (largest remainders; equal split when all are 0)."""
    shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(shares), 1.0 / len(shares))
    raw = shares * n
    out = np.floor(raw).astype(int)
    out[np.argsort(-(raw - out), kind="stable")[: n - out.sum()]] += 1
    return out


def _columns_to_dict(columns: list, prefix: str = "") -> tuple[list[dict], dict[str, np.ndarray]]:
    """Column transformers as JSON-able dicts whose arrays are named ``{prefix}{i}/{key}``."""
    out, arrays = [], {}
    for i, col in enumerate(columns):
        d = col.to_dict()
        for key, value in list(d.items()):
            if isinstance(value, np.ndarray):
                arrays[f"{prefix}{i}/{key}"] = np.ascontiguousarray(value, dtype=np.float64)
                d[key] = {"array": f"{prefix}{i}/{key}"}
        out.append(d)
    return out, arrays


def _columns_from_dict(plan: EncodingPlan, dicts: list[dict], arrays: dict[str, np.ndarray]) -> list:
    columns = []
    for spec, d in zip(plan.columns, dicts):
        d = {k: (np.asarray(arrays[v["array"]]) if isinstance(v, dict) and "array" in v else v) for k, v in d.items()}
        kind = NumericalColumnTransformer if d["kind"] == "numerical" else CategoricalColumnTransformer
        columns.append(kind.from_dict(d, spec))
    return columns


def _fit_columns(plan: EncodingPlan, merged: dict[str, Any]) -> list:
    """Every column's transformer fitted from merged ``histogram`` statistics."""
    columns = []
    n_rows = histogram_rows(plan, merged)
    for spec in plan.columns:
        k = lambda f: merged[wire_key(spec.name, f)]  # noqa: E731
        if _is_numeric(spec):
            col = NumericalColumnTransformer(spec, max_modes=plan.max_modes, weight_threshold=plan.weight_threshold)
            raw = merged.get(wire_key(spec.name, F_RAW))  # merged under DP only
            col.fit_from_histogram(k(F_EDGES), k(F_COUNTS), lower=k(F_LOWER), upper=k(F_UPPER),
                                   missing=k(F_MISSING), noise_sd=k(F_NOISE_SD),
                                   rows=None if raw is None else max(n_rows - float(k(F_MISSING)), 1.0),
                                   raw_counts=raw)
            if wire_key(spec.name, F_ROUNDING) in merged:
                col.fit_rounding(k(F_ROUNDING), step=grid_step(spec),
                                 noise_sd=float(k(F_NOISE_SD)) * ROUNDING_NOISE_FACTOR)
        else:
            col = CategoricalColumnTransformer(spec, other_label=plan.other_label)
            col.fit_from_counts(k(F_CATEGORIES), k(F_COUNTS), other=bool(k(F_OTHER)), missing=k(F_MISSING),
                                noise_sd=k(F_NOISE_SD))
        columns.append(col)
    return columns


def _cell_margin(layout, merged: dict[str, Any]) -> np.ndarray:
    """A column's merged one-way counts over its two-way-table cells (missing last)."""
    counts = np.clip(np.asarray(merged[wire_key(layout.column, F_COUNTS)], dtype=np.float64), 0.0, None)
    missing = max(float(merged[wire_key(layout.column, F_MISSING)]), 0.0)
    if layout.kind == "numerical":  # each histogram cell goes to the coarse cell of its midpoint
        edges = np.asarray(merged[wire_key(layout.column, F_EDGES)], dtype=np.float64)
        cells = layout.codes(0.5 * (edges[:-1] + edges[1:]))
        return np.append(np.bincount(cells, weights=counts, minlength=layout.size - 1), missing)
    return np.append(counts, missing)  # categories (+ 'other'), then missing: the histogram's own order


def run_phases(plan: EncodingPlan, ask, *, pair_noise_sd: float | None = None,
               screen=None) -> tuple["TableTransformer", dict[str, dict]]:
    """Every encoding phase: ``ask(phase, request) -> {site: release}``, merged in site-name order (the
    same sums whichever transport or order the sites answer in); then the fit. Returns the fitted
    transformer and the sites' ``histogram`` releases. ``pair_noise_sd``: the noise of the summed
    two-way tables when it is not every site's full noise (secure aggregation: one release's).
    ``screen(histogram releases) -> releases``: the releases to merge, without those of the sites it
    leaves out (the caller stops asking them; under secure aggregation, the sum less theirs)."""
    merged: dict[str, dict] = {}
    previous, histogram = None, {}
    for phase in plan.phases():
        releases = ask(phase, phase_request(plan, phase, previous, pair_noise_sd=pair_noise_sd))
        if phase == PHASE_HISTOGRAM and screen is not None:
            releases = screen(releases)
        merged[phase] = previous = merge_statistics(plan, phase, [releases[s] for s in sorted(releases)])
        if phase == PHASE_HISTOGRAM:
            histogram = releases
    transformer = TableTransformer().fit_from_statistics(plan, merged[PHASE_HISTOGRAM], pairs=merged.get(PHASE_PAIRS))
    if plan.site_column is not None:
        transformer.fit_sites(histogram)
    return transformer, histogram


def fit_federated(
    site_frames: dict[str, pd.DataFrame], schema: TableSchema, *, dp: EncodingDP | None = None,
    ledgers: dict[str, PrivacyLedger] | None = None, seed: int = 0, bins: int | None = None,
    pairs: tuple[tuple[str, str], ...] = (),
) -> TableTransformer:
    """Run every encoding phase in-process over ``site_frames`` (site name -> typed table).

    ``ledgers`` (site name -> ledger) are spent on in place; when None, each site gets a fresh ledger
    whose budget is exactly the preprocessing budget (a non-DP ledger when ``dp`` is None).
    """
    if not site_frames:
        raise ConfigError("fit_federated needs at least one site's table.")
    plan = EncodingPlan(schema, dp=dp, bins=bins, seed=seed, pairs=pairs)
    if ledgers is None:
        ledgers = {s: PrivacyLedger(s, epsilon_budget=None if dp is None else dp.epsilon,
                                    delta=None if dp is None else dp.delta) for s in site_frames}
    return run_phases(plan, lambda phase, request: {
        s: site_statistics(df, plan, phase, request, ledger=ledgers[s]) for s, df in site_frames.items()
    })[0]

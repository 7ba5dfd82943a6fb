"""One entry point per site: score a synthetic table against the site's own rows.

Everything is computed inside the site. The returned ``SiteEvaluation`` holds only aggregate figures:
row counts, scores in [0, 1], ROC-AUCs, rates, anonymeter risks, a binned DCR histogram, per-pair
association figures and per-column binned frequencies (see ``evaluation.marginals`` for what is
released and why it reveals no row). It holds no row, no row index and no raw value of a real table.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import pandas as pd
from threadpoolctl import threadpool_limits

from evaluation._tables import kinds_of, to_plain
from evaluation.consortium import ConsortiumCounts, consortium_counts
from evaluation.disclosure import DisclosureOptions, DisclosureResult, evaluate_disclosure
from evaluation.fidelity import FidelityResult, evaluate_fidelity
from evaluation.marginals import Marginal, column_marginals
from evaluation.utility import UtilityResult, evaluate_utility
from fedtab.errors import ConfigError, DataValidationError, Problem
from fedtab.schema import TableSchema


@dataclass(frozen=True)
class EvaluationOptions:
    """Row caps and attack sizes. Defaults keep a 30k-row site under a minute on two cores."""

    max_rows_quality: int = 5000
    max_rows_detection: int = 5000
    detection_folds: int = 3
    max_rows_utility: int = 20000
    disclosure: DisclosureOptions = field(default_factory=DisclosureOptions)
    marginal_bins: int = 10
    marginal_max_levels: int = 20
    min_cell: int = 5
    # Threads for the gradient boosting and BLAS. One by default: OpenMP workers that share busy cores
    # spin and can run ten times slower (measured: 3 fits on 600 rows, 10.7 s vs 0.97 s on 2 busy cores).
    # Raise it on a dedicated machine; None lets the libraries use every core.
    n_threads: int | None = 1


@dataclass(frozen=True)
class SiteEvaluation:
    n_train: int
    n_holdout: int
    n_synthetic: int
    fidelity: FidelityResult
    utility: UtilityResult | None
    disclosure: DisclosureResult
    marginals: tuple[Marginal, ...]
    timings: tuple[tuple[str, float], ...]  # component -> seconds
    options: EvaluationOptions
    # Counts of the site's training rows on a grid read off the synthetic table: what the coordinator
    # sums to score the table against the union of the sites (``evaluation.consortium``).
    consortium: ConsortiumCounts | None = None
    # With a site column: which synthetic rows this site scored ("hospital = cleveland"); None: all.
    synthetic_rows: str | None = None

    def figures(self) -> dict[str, float | None]:
        """The headline figures, flat: what the aggregate averages and the release gate reads."""
        f, d, u = self.fidelity, self.disclosure, self.utility
        out: dict[str, float | None] = {
            "fidelity.quality": f.quality,
            "fidelity.column_shapes": f.column_shapes,
            "fidelity.column_pair_trends": f.column_pair_trends,
            "fidelity.detection_auc": f.detection_auc,
            "utility.real_score": u.real_score if u else None,
            "utility.synthetic_score": u.synthetic_score if u else None,
            "utility.ratio": u.ratio if u else None,
        }
        out.update(d.figures())
        return out

    def to_dict(self, *, counts: bool = True) -> dict:
        """Plain form: what a site sends (``counts=True``); reports leave the consortium counts out."""
        d = asdict(self)
        if not counts:
            d.pop("consortium", None)
        d["utility"] = self.utility.to_dict() if self.utility else None
        d["timings"] = dict(self.timings)
        d["figures"] = self.figures()
        return d


def _check_inputs(frames: dict[str, pd.DataFrame], schema: TableSchema, target: str | None) -> None:
    problems = []
    for name, df in frames.items():
        if not isinstance(df, pd.DataFrame):
            raise ConfigError(f"evaluate_site: '{name}' must be a pandas DataFrame, got {type(df).__name__}.")
        missing = [c for c in schema.names if c not in df.columns]
        if missing:
            problems.append(Problem(None, f"{name} table lacks schema column(s) {missing}",
                                    expected="every column the schema declares"))
        if len(df) < 2:
            problems.append(Problem(None, f"{name} table has {len(df)} row(s)", expected="at least 2 rows"))
    if target is not None:
        if target not in schema:
            problems.append(Problem(target, "target is not a schema column", expected=f"one of {schema.names}"))
        elif schema[target].type in ("id", "datetime"):
            problems.append(Problem(target, f"target has type {schema[target].type!r}",
                                    expected="a categorical, boolean or numerical column"))
    if problems:
        raise DataValidationError("evaluate_site", problems)


def evaluate_site(
    real_train: pd.DataFrame,
    real_holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    schema: TableSchema,
    *,
    target: str | None = None,
    seed: int = 0,
    options: EvaluationOptions = EvaluationOptions(),
    site_column: str | None = None,
    site: str | None = None,
) -> SiteEvaluation:
    """Score ``synthetic`` against this site's training rows and its holdout rows (never trained on).

    Tables follow the typed-table dtype contract of ``fedtab.schema``. ``target`` enables the utility
    figures. With a ``site_column`` (a table conditioned on the site, see ``EncodingPlan.site_column``)
    every figure of the site is computed on the synthetic rows labelled ``site``, that column left out;
    the consortium counts (the union's quality) read the whole table, that column included.
    Raises ``DataValidationError`` listing every problem with the inputs.
    """
    frames = {"real_train": real_train, "real_holdout": real_holdout, "synthetic": synthetic}
    full, full_schema = synthetic, schema
    if site_column is not None:
        if site_column not in schema or site_column not in synthetic.columns:
            raise DataValidationError("evaluate_site", [Problem(site_column, "the site column is not in the schema "
                                                                "and the synthetic table", expected="a column of both")])
        own = synthetic[site_column].astype(str) == str(site)
        if own.sum() < 2:
            raise DataValidationError("evaluate_site", [Problem(
                site_column, f"the synthetic table has {int(own.sum())} row(s) labelled {site!r}",
                expected=f"at least 2 (labels present: {sorted(synthetic[site_column].astype(str).unique())[:10]}); "
                         "sample more rows")])
        schema = schema.without(site_column)
        frames = {k: v.drop(columns=[site_column], errors="ignore") for k, v in frames.items()}
        frames["synthetic"] = frames["synthetic"][own.to_numpy()].reset_index(drop=True)
    _check_inputs(frames, schema, target)
    with threadpool_limits(limits=options.n_threads):
        return _evaluate(frames["real_train"], frames["real_holdout"], frames["synthetic"], schema, target=target,
                         seed=seed, options=options,
                         consortium=None if site_column is None else (real_train, full, full_schema),
                         synthetic_rows=None if site_column is None else f"{site_column} = {site}")


def _evaluate(real_train, real_holdout, synthetic, schema, *, target, seed, options, consortium=None,
              synthetic_rows=None) -> SiteEvaluation:
    kinds = kinds_of(schema)
    train, holdout, synth = (to_plain(df, schema) for df in (real_train, real_holdout, synthetic))
    timings = []

    fid = evaluate_fidelity(
        train, synth, kinds, seed=seed, max_rows_quality=options.max_rows_quality,
        max_rows_detection=options.max_rows_detection, detection_folds=options.detection_folds,
    )
    timings += [(f"fidelity.{k}", v) for k, v in fid.timings]

    t = time.perf_counter()
    util = None
    if target is not None:
        util = evaluate_utility(train, holdout, synth, kinds, target, seed=seed, max_rows=options.max_rows_utility)
    timings.append(("utility", time.perf_counter() - t))

    disc = evaluate_disclosure(train, holdout, synth, kinds, target=target, seed=seed, options=options.disclosure)
    timings += [(f"disclosure.{k}", v) for k, v in disc.timings]

    t = time.perf_counter()
    marg = column_marginals(train, synth, schema, bins=options.marginal_bins,
                            max_levels=options.marginal_max_levels, min_cell=options.min_cell)
    timings.append(("marginals", time.perf_counter() - t))

    t = time.perf_counter()
    if consortium is None:
        counts = consortium_counts(train, synth, kinds)
    else:  # the whole table with its site column, against this site's rows (all labelled with it)
        rows, table, full_schema = consortium
        counts = consortium_counts(to_plain(rows, full_schema), to_plain(table, full_schema), kinds_of(full_schema))
    timings.append(("consortium_counts", time.perf_counter() - t))

    return SiteEvaluation(
        n_train=len(train), n_holdout=len(holdout), n_synthetic=len(synth), fidelity=fid, utility=util,
        disclosure=disc, marginals=marg, timings=tuple(timings), options=options, consortium=counts,
        synthetic_rows=synthetic_rows,
    )

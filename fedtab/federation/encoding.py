"""Phase 2 glue: the federated encoding (``fedtab.transform``) driven over a transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedtab.transform.plan import (  # noqa: F401
    KEY_PHASE, PHASE_DOMAIN, PHASE_HISTOGRAM, PHASE_PAIRS, EncodingDP, EncodingPlan, target_pairs,
)
from fedtab.transform.pairs import KEY_PAIRS_MEASURED  # noqa: F401
from fedtab.transform.statistics import private_row_count, site_rows, site_statistics  # noqa: F401 (site side)
from fedtab.transform.table import TableTransformer, run_phases


def make_plan(schema, job) -> EncodingPlan:
    """The public encoding plan for a job: under DP, ``preprocessing_share`` of each site's epsilon;
    with a ``target``, its two-way table against every other column (for the sampler's calibration)."""
    pre = job.privacy.preprocessing_epsilon
    dp = None if pre is None else EncodingDP(epsilon=pre, delta=job.privacy.delta)
    # A model trained by measurement reads its own cells, never the mode-specific normalisation (the mixture of each
    # numerical column): one mode keeps the fit trivial (breast cancer's 30 columns under DP: 77 of a
    # 118 s fit went to mixtures nothing used).
    from fedtab.models.registry import is_measured

    modes = {"max_modes": 1} if is_measured(job.model) else {}
    return EncodingPlan(schema, dp=dp, seed=job.seed, pairs=target_pairs(schema, job.target),
                        site_column=job.site_column, **modes)


def read_under_dp(plan: EncodingPlan, transformer: TableTransformer) -> list[str]:
    """What the encoding read under DP for the columns declared without a domain: one line per column for
    the coordinator's operator (public: DP releases), saying what it became and that declaring it costs
    nothing."""
    from fedtab.transform.categorical import CategoricalColumnTransformer

    if plan.dp is None:
        return []
    out = []
    for col in transformer.columns_:
        spec = col.spec
        if isinstance(col, CategoricalColumnTransformer) and spec.categories is None:
            kept = len(col.categories_)
            out.append(f"column '{spec.name}' (declared without categories): {kept} value(s) passed the DP "
                       "threshold" + (f"; every synthetic value reads '{col.other_label}'" if kept == 0 else
                                      f", the rest read '{col.other_label}'")
                       + ". Declare its public 'categories' in the schema (no privacy cost)")
        elif getattr(col, "lower_", None) is not None and (spec.lower is None or spec.upper is None):
            lo, hi = (f"{col.lower_:g}", f"{col.upper_:g}") if spec.type != "datetime" else \
                (str(_day(col.lower_)), str(_day(col.upper_)))  # datetimes travel as days since 1970-01-01
            out.append(f"column '{spec.name}' (declared without bounds): its range read under DP is [{lo}, {hi}] "
                       "(powers of two); its values outside it are clipped to it. Declare its public 'lower' and "
                       "'upper' in the schema (no privacy cost)")
    return out


def _day(days: float):
    import pandas as pd

    return (pd.Timestamp("1970-01-01") + pd.Timedelta(days=float(days))).date()


def check_target_read(plan: EncodingPlan, transformer: TableTransformer, target: str | None) -> None:
    """A declared ``target`` none of whose values passed the DP threshold stops the job here
    (``ConfigError``): every synthetic value of it would read 'other' and its utility figures nothing;
    the rest of each site's budget is left for a job with the categories declared."""
    from fedtab.errors import ConfigError
    from fedtab.transform.categorical import CategoricalColumnTransformer

    for col in transformer.columns_:
        if (plan.dp is not None and col.spec.name == target and isinstance(col, CategoricalColumnTransformer)
                and col.spec.categories is None and not col.categories_):
            raise ConfigError(
                f"The target '{target}' is declared without categories, and none of its values passed the DP "
                "threshold of the encoding's domain phase (the sites hold too few rows of each for this budget): "
                f"every synthetic value of it would read '{col.other_label}'. The job stops before training (the "
                "encoding's share of each site's budget is spent, the rest is not). Declare the column's public "
                "'categories' in the schema (no privacy cost).", public=True)


def plan_to_dict(plan: EncodingPlan) -> dict:
    return plan.to_dict()


def plan_from_dict(data: dict) -> EncodingPlan:
    return EncodingPlan.from_dict(data)


def run_encoding(plan: EncodingPlan, ask: Callable[[str, dict], dict[str, dict]], *,
                 pair_noise_sd: float | None = None, screen=None) -> tuple[TableTransformer, dict[str, float]]:
    """Run every phase: ``ask(phase, request) -> {site: release}``; merge; fit.

    Also returns each site's FedAvg weight: its (noisy, under DP) row count read off its histogram
    release (``site_rows``), so the weights cost no extra privacy budget (post-processing). ``screen``:
    see ``run_phases`` (a site it leaves out has no weight).
    """
    transformer, histogram = run_phases(plan, ask, pair_noise_sd=pair_noise_sd, screen=screen)
    weights = {s: site_rows(plan, r) for s, r in histogram.items()}
    return transformer, weights


def transformer_from_dict(data: dict[str, Any]) -> TableTransformer:
    return TableTransformer.from_dict(data)

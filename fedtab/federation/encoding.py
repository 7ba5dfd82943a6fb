"""Phase 2 glue: the federated encoding (``fedtab.transform``) driven over a transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedtab.transform.plan import F_COUNTS, F_MISSING, EncodingDP, EncodingPlan, wire_key
from fedtab.transform.statistics import merge_statistics, phase_request, site_statistics  # noqa: F401 (site side)
from fedtab.transform.table import TableTransformer


def make_plan(schema, job) -> EncodingPlan:
    """The public encoding plan for a job: under DP, ``preprocessing_share`` of each site's epsilon."""
    pre = job.privacy.preprocessing_epsilon
    dp = None if pre is None else EncodingDP(epsilon=pre, delta=job.privacy.delta)
    return EncodingPlan(schema, dp=dp, seed=job.seed)


def plan_to_dict(plan: EncodingPlan) -> dict:
    return plan.to_dict()


def plan_from_dict(data: dict) -> EncodingPlan:
    return EncodingPlan.from_dict(data)


def run_encoding(plan: EncodingPlan, ask: Callable[[str, dict], dict[str, dict]]) -> tuple[TableTransformer, dict[str, float]]:
    """Run every phase: ``ask(phase, request) -> {site: release}``; merge; fit.

    Also returns each site's FedAvg weight: its (noisy, under DP) row count read off its histogram
    release of the first encoded column (a record is in exactly one cell, missing included), so the
    weights cost no extra privacy budget (post-processing).
    """
    merged = None
    releases: dict[str, dict] = {}
    for phase in plan.phases():
        releases = ask(phase, phase_request(plan, phase, merged))
        merged = merge_statistics(plan, phase, [releases[s] for s in sorted(releases)])
    first = plan.columns[0].name
    weights = {s: max(1.0, float(sum(r[wire_key(first, F_COUNTS)])) + float(r[wire_key(first, F_MISSING)]))
               for s, r in releases.items()}
    return TableTransformer().fit_from_statistics(plan, merged), weights


def transformer_from_dict(data: dict[str, Any]) -> TableTransformer:
    return TableTransformer.from_dict(data)

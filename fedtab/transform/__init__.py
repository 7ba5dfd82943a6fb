"""Federated encoding: per-column transformers fitted from merged site statistics, exposing spans."""

from fedtab.transform.plan import PHASE_DOMAIN, PHASE_HISTOGRAM, EncodingDP, EncodingPlan
from fedtab.transform.spans import ConditionSpan, SpanInfo, span_offsets
from fedtab.transform.statistics import merge_statistics, phase_request, site_statistics
from fedtab.transform.table import TableTransformer, fit_federated

__all__ = [
    "PHASE_DOMAIN", "PHASE_HISTOGRAM", "ConditionSpan", "EncodingDP", "EncodingPlan", "SpanInfo",
    "TableTransformer", "fit_federated", "merge_statistics", "phase_request", "site_statistics", "span_offsets",
]

"""Evaluation of a synthetic table inside each site: fidelity, utility, disclosure risk, report.

Depends only on ``fedtab.schema`` and ``fedtab.errors``: it scores tables and knows no transport.
"""

from evaluation.aggregate import Evaluation, combine
from evaluation.disclosure import DisclosureOptions
from evaluation.site import EvaluationOptions, SiteEvaluation, evaluate_site

__all__ = ["DisclosureOptions", "Evaluation", "EvaluationOptions", "SiteEvaluation", "combine", "evaluate_site"]

"""Combine per-site evaluations into one: a pure function over the aggregate figures sites sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Mapping

from evaluation.consortium import ConsortiumQuality, consortium_quality
from evaluation.site import SiteEvaluation
from fedtab.errors import ConfigError


@dataclass(frozen=True)
class Evaluation:
    """Per-site evaluations, their weights (rows) and the row-weighted mean of every headline figure."""

    sites: Mapping[str, SiteEvaluation]
    weights: Mapping[str, int]
    figures: Mapping[str, float | None]
    consortium: ConsortiumQuality | None = None  # the table against the union of the sites' rows

    def site_figures(self) -> dict[str, dict[str, float | None]]:
        return {name: s.figures() for name, s in self.sites.items()}

    def worst(self, figure: str, *, highest: bool = True) -> tuple[str | None, float | None]:
        """The site with the highest (or lowest) value of ``figure``; sites that lack it are skipped."""
        vals = [(n, v) for n, v in ((n, s.figures().get(figure)) for n, s in self.sites.items()) if v is not None]
        if not vals:
            return None, None
        return (max if highest else min)(vals, key=lambda nv: nv[1])

    def to_dict(self) -> dict:
        return {
            "figures": dict(self.figures),
            "weights": dict(self.weights),
            "consortium": None if self.consortium is None else asdict(self.consortium),
            "sites": {name: s.to_dict(counts=False) for name, s in self.sites.items()},
        }


def weighted_mean(values: Mapping[str, float | None], weights: Mapping[str, int]) -> float | None:
    """Mean of the values that are present, weighted by ``weights``; None if no site has one."""
    pairs = [(v, weights[k]) for k, v in values.items() if v is not None]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


def combine(site_results: Mapping[str, SiteEvaluation], weights: Mapping[str, int], *,
            synthetic=None, kinds=None) -> Evaluation:
    """Row-weighted mean of each figure across sites (a site lacking a figure does not count for it).

    ``weights`` is usually each site's number of training rows. Per-site results are kept unchanged.
    With the ``synthetic`` table (plain frame, see ``evaluation._tables.to_plain``) and its ``kinds``,
    and consortium counts from every site, the table is also scored against the union of the sites'
    rows (``evaluation.consortium``): figures ``fidelity.consortium_*``.
    """
    if not site_results:
        raise ConfigError("combine: 'site_results' is empty; expected at least one site's evaluation.")
    bad = sorted(set(site_results) ^ set(weights))
    if bad:
        raise ConfigError(f"combine: sites {bad} are in only one of 'site_results' and 'weights'; "
                          "give a weight (row count) for every evaluated site.")
    neg = {k: w for k, w in weights.items() if not isinstance(w, int) or isinstance(w, bool) or w < 0}
    if neg:
        raise ConfigError(f"combine: weights must be whole numbers >= 0 (row counts). Got {neg}.")
    per_site = {name: s.figures() for name, s in site_results.items()}
    names = list(next(iter(per_site.values())))
    figures = {f: weighted_mean({s: per_site[s].get(f) for s in per_site}, weights) for f in names}
    union = None
    counts = [s.consortium for s in site_results.values()]
    if synthetic is not None and kinds is not None and all(c is not None for c in counts):
        union = consortium_quality(counts, synthetic, kinds)
        figures.update({"fidelity.consortium_quality": union.quality,
                        "fidelity.consortium_column_shapes": union.column_shapes,
                        "fidelity.consortium_column_pair_trends": union.column_pair_trends})
    return Evaluation(
        sites=MappingProxyType(dict(site_results)),
        weights=MappingProxyType(dict(weights)),
        figures=MappingProxyType(figures),
        consortium=union,
    )

"""Combine per-site evaluations into one: a pure function over the aggregate figures sites sent."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from evaluation.site import SiteEvaluation
from fedtab.errors import ConfigError


@dataclass(frozen=True)
class Evaluation:
    """Per-site evaluations, their weights (rows) and the row-weighted mean of every headline figure."""

    sites: Mapping[str, SiteEvaluation]
    weights: Mapping[str, int]
    figures: Mapping[str, float | None]

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
            "sites": {name: s.to_dict() for name, s in self.sites.items()},
        }


def weighted_mean(values: Mapping[str, float | None], weights: Mapping[str, int]) -> float | None:
    """Mean of the values that are present, weighted by ``weights``; None if no site has one."""
    pairs = [(v, weights[k]) for k, v in values.items() if v is not None]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


def combine(site_results: Mapping[str, SiteEvaluation], weights: Mapping[str, int]) -> Evaluation:
    """Row-weighted mean of each figure across sites (a site lacking a figure does not count for it).

    ``weights`` is usually each site's number of training rows. Per-site results are kept unchanged.
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
    return Evaluation(
        sites=MappingProxyType(dict(site_results)),
        weights=MappingProxyType(dict(weights)),
        figures=MappingProxyType(figures),
    )

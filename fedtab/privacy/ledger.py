"""The per-site privacy ledger: every data-dependent release is a recorded spend, checked first.

A :class:`PrivacyLedger` belongs to one site. Before a site releases anything computed from its
rows (category counts, histograms, DP-SGD steps), it calls :meth:`PrivacyLedger.spend`; the ledger
composes the new release with everything recorded so far (Opacus' RDP accountant, see
:mod:`fedtab.privacy.accountant`) and, if the total would exceed the budget, raises
:class:`~fedtab.errors.PrivacyBudgetError` and records nothing. Only after ``spend`` returns may
the caller release.

Non-DP mode: ``PrivacyLedger(site, epsilon_budget=None)`` never raises. It still records every
release, so the model file shows what left the site; an exact release (``mechanism="exact"``,
noise multiplier 0) makes the reported epsilon ``inf``. A DP ledger (finite budget) refuses exact
releases, since their epsilon is infinite.

Thresholded releases (stability-based histograms: a key is published only if its noisy count
passes a threshold) cost extra delta beyond the Gaussian noise; entries carry it as
``delta_cost`` and the accountant converts RDP to epsilon at ``delta - sum(delta_cost)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fedtab.errors import ConfigError, PrivacyBudgetError
from fedtab.privacy.accountant import GaussianEvent, compose_epsilon

LEDGER_FORMAT = "fedtab.ledger/1"
MECHANISMS = ("gaussian", "subsampled_gaussian", "thresholded_gaussian", "exact")


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded release. ``epsilon_after`` is the site's composed epsilon once it is counted."""

    phase: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    sensitivity: float
    delta_cost: float
    target: str
    epsilon_after: float

    @property
    def sigma(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def event(self) -> GaussianEvent:
        return GaussianEvent(self.noise_multiplier, self.sample_rate, self.steps)


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


class PrivacyLedger:
    """Privacy spends of one site against its ``(epsilon_budget, delta)``; ``epsilon_budget=None`` = non-DP."""

    def __init__(self, site: str, *, epsilon_budget: float | None, delta: float | None = None):
        if epsilon_budget is not None:
            if isinstance(epsilon_budget, bool) or not isinstance(epsilon_budget, (int, float)) \
                    or not (0 < epsilon_budget < math.inf):
                raise ConfigError(f"The 'epsilon_budget' parameter of PrivacyLedger must be a float in (0, inf) "
                                  f"or None (non-DP). Got {epsilon_budget!r} instead.")
        if delta is not None or epsilon_budget is not None:
            if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0 < delta < 1):
                raise ConfigError(f"The 'delta' parameter of PrivacyLedger must be a float in (0, 1) when a budget is "
                                  f"set. Got {delta!r} instead.")
        self.site = str(site)
        self.epsilon_budget = None if epsilon_budget is None else float(epsilon_budget)
        self.delta = None if delta is None else float(delta)
        self._entries: list[LedgerEntry] = []

    # -- reading -------------------------------------------------------------------------------
    @property
    def is_dp(self) -> bool:
        return self.epsilon_budget is not None

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def events(self) -> tuple[GaussianEvent, ...]:
        return tuple(e.event() for e in self._entries)

    @property
    def delta_spent(self) -> float:
        return float(sum(e.delta_cost for e in self._entries))

    @property
    def accounting_delta(self) -> float:
        """The delta left for converting the Gaussian (RDP) part into epsilon."""
        return -1.0 if self.delta is None else self.delta - self.delta_spent

    def _epsilon_of(self, events: tuple[GaussianEvent, ...], delta: float) -> float:
        if not any(e.steps > 0 for e in events):
            return 0.0
        if delta <= 0:
            return math.inf
        return compose_epsilon(events, delta=delta)

    @property
    def epsilon(self) -> float:
        """Composed epsilon of everything recorded so far (0.0 when nothing, inf after an exact release)."""
        return self._epsilon_of(self.events(), self.accounting_delta)

    @property
    def remaining(self) -> float:
        return math.inf if self.epsilon_budget is None else self.epsilon_budget - self.epsilon

    # -- spending ------------------------------------------------------------------------------
    def remaining_check(
        self, *, phase: str, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1,
        delta_cost: float = 0.0, target: str = "", extra: tuple[GaussianEvent, ...] = (),
    ) -> float:
        """The epsilon the site would reach with this release (and the ``extra`` events); raises
        PrivacyBudgetError if over budget. Records nothing either way.
        """
        events = (self.events() + (GaussianEvent(float(noise_multiplier), float(sample_rate), int(steps)),)
                  + tuple(extra))
        delta = self.accounting_delta - float(delta_cost)
        would = self._epsilon_of(events, delta)
        if self.epsilon_budget is not None and not would <= self.epsilon_budget:
            what = f" ({target})" if target else ""
            if noise_multiplier <= 0:
                why = "an exact (un-noised) release has infinite epsilon; use a DP plan or a non-DP ledger"
            elif delta <= 0:
                why = f"its extra delta {delta_cost:.3g} would use up the site's delta {self.delta:.3g}"
            else:
                why = f"the budget is {self.epsilon_budget:.4g} and {self.epsilon:.4g} is already spent"
            raise PrivacyBudgetError(
                f"Site '{self.site}': phase '{phase}'{what} would take epsilon to {would:.4g} at delta "
                f"{self.delta:.3g}, over the budget {self.epsilon_budget:.4g} ({why}). Nothing was released. "
                "Raise the site's budget, lower the epsilon asked of this phase, or declare bounds and "
                "categories in the schema (they are free).", public=True,  # the ledger's public figures only
            )
        return would

    def spend(
        self, *, phase: str, mechanism: str, noise_multiplier: float, sample_rate: float = 1.0,
        steps: int = 1, sensitivity: float = 1.0, delta_cost: float = 0.0, target: str = "",
    ) -> LedgerEntry:
        """Check, then record one release. Call BEFORE releasing; on PrivacyBudgetError release nothing."""
        if mechanism not in MECHANISMS:
            raise ConfigError(f"The 'mechanism' parameter of PrivacyLedger.spend must be one of {list(MECHANISMS)}. "
                              f"Got {mechanism!r} instead.")
        if mechanism == "exact":
            noise_multiplier = 0.0
        would = self.remaining_check(phase=phase, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                     steps=steps, delta_cost=delta_cost, target=target)
        entry = LedgerEntry(
            phase=str(phase), mechanism=mechanism, noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate), steps=int(steps), sensitivity=float(sensitivity),
            delta_cost=float(delta_cost), target=str(target), epsilon_after=float(would),
        )
        self._entries.append(entry)
        return entry

    # -- serialisation (JSON-able; stored in the model file) ----------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT, "site": self.site, "epsilon_budget": self.epsilon_budget,
            "delta": self.delta, "epsilon": _json_float(self.epsilon),
            "entries": [{**asdict(e), "epsilon_after": _json_float(e.epsilon_after),
                         "sensitivity": _json_float(e.sensitivity)} for e in self._entries],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrivacyLedger":
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise ConfigError(f"Not a privacy ledger: expected a dict with format {LEDGER_FORMAT!r}.")
        ledger = cls(data["site"], epsilon_budget=data["epsilon_budget"], delta=data["delta"])
        for e in data["entries"]:
            ledger._entries.append(LedgerEntry(**{**e, "epsilon_after": float(e["epsilon_after"]),
                                                 "sensitivity": float(e["sensitivity"])}))
        return ledger

    def __repr__(self) -> str:
        budget = "non-DP" if self.epsilon_budget is None else f"budget={self.epsilon_budget:g}, delta={self.delta:g}"
        return f"PrivacyLedger({self.site!r}, {budget}, epsilon={self.epsilon:.4g}, entries={len(self._entries)})"

"""Release gate: policy + privacy ledger + evaluation -> a verdict with every check, and an audit record.

``decide`` is pure logic over plain figures. Fidelity checks read the row-weighted mean over sites;
privacy checks read every site, because a leak at one site is a leak. No threshold is ever raised by
the data. The tested privacy figures (DCR share, near-copy excess, membership AUC, singling-out,
linkability and inference risks) each come from the site with a one-sided p-value under a null fixed
by the site's sizes alone (``evaluation.disclosure``). A figure at a site is refused when it is over the
policy's band AND significant under Holm's step-down procedure over every (site, tested figure) pair at
family-wise level ``family_alpha``: a table that never saw the sites' rows is refused at most
``family_alpha`` of the time, however many sites and checks (Holm releases exactly when Bonferroni at
``family_alpha / tests`` does; it names more of the failed checks). The exact-copy rate and the lower
DCR bound are plain thresholds. Where the near-copy check cannot catch the policy's memorised share with
the policy's power at a site, the policy's ``underpowered`` rule decides (default: DP within
``max_epsilon_per_site`` or refused). A figure that was not measured fails its check (the gate fails
closed). ``enforce`` turns a refusal into ``ReleaseRefusedError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tomllib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Mapping

from evaluation.aggregate import Evaluation
from fedtab.errors import ConfigError, ReleaseRefusedError
from fedtab.schema import atomic_write_text

AUDIT_FORMAT = "fedtab.audit/1"
_SECTIONS = {
    "fidelity": ("min_quality", "max_detection_auc"),
    "disclosure": ("dcr_share_min", "dcr_share_max", "max_exact_copy_rate", "max_near_copy_excess", "max_mia_auc",
                   "max_singling_out_risk", "max_linkability_risk", "max_inference_risk", "family_alpha",
                   "required_memorised_share", "required_power", "underpowered"),
    "privacy": ("require_dp", "max_epsilon_per_site"),
}
# Keys of earlier policies that no longer exist, and why (a policy naming one is refused, not ignored).
_REMOVED = {
    "chance_levels": "removed: a threshold is never raised by the data (a site's chance level rose with "
                     "memorisation); each privacy figure is now tested against a null fixed by the site's sizes, "
                     "false alarms controlled across sites and checks by family_alpha",
}
UNDERPOWERED_RULES = ("dp_only", "refuse")


@dataclass(frozen=True)
class ReleasePolicy:
    """Thresholds of the release gate; see ``fedtab/data/default_policy.toml`` for why each value."""

    min_quality: float = 0.70
    max_detection_auc: float = 0.95
    dcr_share_min: float = 0.30
    dcr_share_max: float = 0.60
    max_exact_copy_rate: float = 0.01
    max_mia_auc: float = 0.60
    max_singling_out_risk: float = 0.10
    max_linkability_risk: float = 0.10
    max_inference_risk: float = 0.15
    max_near_copy_excess: float = 0.02
    family_alpha: float = 0.10  # family-wise false-alarm rate over every (site, tested figure) pair (Holm)
    required_memorised_share: float = 0.20  # a memorised share every site's checks must catch ...
    required_power: float = 0.90  # ... with this power; else the ``underpowered`` rule
    underpowered: str = "dp_only"  # "dp_only": such a site passes only under DP within max_epsilon_per_site
    require_dp: bool = True
    max_epsilon_per_site: float = 10.0

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> "ReleasePolicy":
        """Build from the TOML layout (sections fidelity/disclosure/privacy), reporting every problem at once."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a release policy must be a table of sections, got {type(data).__name__}.")
        problems, values = [], {}
        for section, body in data.items():
            if section not in _SECTIONS:
                problems.append(f"unknown section [{section}]; expected one of {sorted(_SECTIONS)}")
                continue
            if not isinstance(body, Mapping):
                problems.append(f"[{section}] must be a table of keys, got {body!r}")
                continue
            for key, value in body.items():
                if key in _REMOVED:
                    problems.append(f"[{section}] {key}: {_REMOVED[key]}; delete the key")
                    continue
                if key not in _SECTIONS[section]:
                    problems.append(f"[{section}] unknown key '{key}'; expected one of {list(_SECTIONS[section])}")
                    continue
                problem = _check_value(key, value)
                if problem:
                    problems.append(f"[{section}] {key} = {value!r}: expected {problem}")
                else:
                    values[key] = value if key in _BOOLEAN_KEYS or key in _STRING_KEYS else float(value)
        if not problems:
            lo = values.get("dcr_share_min", cls.dcr_share_min)
            hi = values.get("dcr_share_max", cls.dcr_share_max)
            if lo > hi:
                problems.append(f"[disclosure] dcr_share_min = {lo} is above dcr_share_max = {hi}: "
                                "expected a band with min <= max")
        if problems:
            raise ConfigError(f"{source}: invalid release policy, {len(problems)} problem(s):\n"
                              + "\n".join(f"  - {p}" for p in problems)
                              + "\nSee fedtab/data/default_policy.toml for every key and why its default.")
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "ReleasePolicy":
        """Read a TOML policy file; ``None`` reads the packaged default policy."""
        if path is None:
            text = resources.files("fedtab").joinpath("data/default_policy.toml").read_text(encoding="utf-8")
            source = "default_policy.toml"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"{path}: cannot read release policy ({e.strerror}). "
                                  "Pass an existing TOML file, or omit it to use the default policy.") from None
            source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML ({e}).") from None
        return cls.from_dict(data, source=source)

    def stricter(self, other: "ReleasePolicy") -> "ReleasePolicy":
        """This policy with every privacy rule at least as strict as ``other``'s (a site applies the
        coordinator's policy, never looser than its own): lower upper bounds, higher lower bounds, a larger
        family-wise alpha (more refusals), a smaller memorised share to catch with more power, "refuse"
        over "dp_only", DP required if either requires it. Fidelity thresholds stay this policy's."""
        a, b = asdict(self), asdict(other)
        out = dict(a)
        for key in ("dcr_share_max", "max_exact_copy_rate", "max_mia_auc", "max_singling_out_risk",
                    "max_linkability_risk", "max_inference_risk", "max_near_copy_excess", "required_memorised_share",
                    "max_epsilon_per_site"):
            out[key] = min(a[key], b[key])
        for key in ("dcr_share_min", "family_alpha", "required_power"):
            out[key] = max(a[key], b[key])
        out["underpowered"] = "refuse" if "refuse" in (a["underpowered"], b["underpowered"]) else "dp_only"
        out["require_dp"] = a["require_dp"] or b["require_dp"]
        return type(self)(**out)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        flat = asdict(self)
        return {section: {k: flat[k] for k in keys} for section, keys in _SECTIONS.items()}


_BOOLEAN_KEYS = ("require_dp",)
_STRING_KEYS = ("underpowered",)


def _check_value(key: str, value: Any) -> str | None:
    """What is expected of ``value`` for ``key``, or None when it is fine."""
    if key in _BOOLEAN_KEYS:
        return None if isinstance(value, bool) else "true or false"
    if key == "underpowered":
        return None if value in UNDERPOWERED_RULES else f"one of {list(UNDERPOWERED_RULES)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "a finite number"
    if key == "max_epsilon_per_site":
        return None if value > 0 else "a number > 0"
    if key in ("family_alpha", "required_power"):
        return None if 0 < value < 1 else "a number strictly between 0 and 1"
    if key == "required_memorised_share":
        return None if 0 < value <= 1 else "a share in (0, 1]"
    if key in ("max_detection_auc", "max_mia_auc"):
        return None if 0.5 <= value <= 1 else "an AUC in [0.5, 1] (0.5 = no signal)"
    return None if 0 <= value <= 1 else "a number in [0, 1]"


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: str  # e.g. "<= 0.6", "in [0.3, 0.6]"
    passed: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    released: bool
    checks: tuple[Check, ...]
    # How the tested privacy figures were decided: method, family-wise alpha, number of tests, every
    # (check, site) with its value, p-value, band and outcome, and each site's memorised share caught.
    tests: dict | None = None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict:
        return {"released": self.released, "checks": [asdict(c) for c in self.checks], "tests": self.tests}


def _check(name: str, value: float | None, *, low: float | None = None, high: float | None = None,
           where: str = "all sites (row-weighted mean)", what: str = "") -> Check:
    threshold = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                 else f">= {low:g}" if low is not None else f"<= {high:g}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Check(name, None, threshold, False, f"{what} was not measured at {where}; the gate fails closed.")
    ok = (low is None or value >= low) and (high is None or value <= high)
    verb = "within" if ok else "outside"
    return Check(name, float(value), threshold, ok, f"{what} is {value:.3f} at {where}, {verb} {threshold}.")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _excess_copies(figures: Mapping[str, Mapping[str, Any]]) -> tuple[float | None, str]:
    worst, where = None, ""
    for name, f in figures.items():
        rate, natural = f.get("disclosure.exact_copy_rate"), f.get("disclosure.natural_copy_rate")
        if _missing(rate) or _missing(natural):
            return None, f"site '{name}'"
        excess = max(0.0, rate - natural)
        if worst is None or excess > worst:
            worst, where = excess, f"site '{name}' (worst of {len(figures)}; {rate:.3f} copied vs {natural:.3f} natural)"
    return worst, where


def _quality_check(p: ReleasePolicy, evaluation: Evaluation) -> Check:
    """Quality of the table against the union of the sites' rows where the sites sent consortium counts
    (the table models the consortium, and per-site scores mark down even a perfect model of the union
    for the differences between sites), else the row-weighted mean of the per-site scores."""
    union = evaluation.figures.get("fidelity.consortium_quality")
    if union is not None:
        return _check("quality", union, low=p.min_quality, what="Quality score",
                      where=f"the union of the {len(evaluation.sites)} sites' rows")
    return _check("quality", evaluation.figures.get("fidelity.quality"), low=p.min_quality, what="Quality score")


# The tested privacy checks: (check name, figure in a site's figures without "disclosure.", policy band
# attribute, what it is). Each figure comes with "disclosure.<figure>_p", its one-sided p-value.
TESTED_CHECKS = (
    ("dcr_share", "dcr_share", "dcr_share_max", "DCR share"),
    ("near_copies", "near_copy_excess", "max_near_copy_excess", "Near-copy excess"),
    ("mia_auc", "mia_auc", "max_mia_auc", "Membership-inference AUC"),
    ("singling_out_risk", "singling_out_risk", "max_singling_out_risk", "Singling-out risk"),
    ("linkability_risk", "linkability_risk", "max_linkability_risk", "Linkability risk"),
    ("inference_risk", "inference_risk", "max_inference_risk", "Attribute-inference risk"),
)


def holm(p_values: Mapping[Any, float | None], alpha: float) -> dict[Any, tuple[bool, float]]:
    """Holm's step-down procedure: each key -> (rejected, the level its p-value was read against). The
    i-th smallest of m p-values is read against alpha / (m - i + 1) while every smaller one was
    rejected; the first that is not stops the procedure (later ones keep the level they would have
    had). Family-wise error <= alpha under any dependence. A missing p-value counts as 0 (rejected: the
    gate fails closed)."""
    p = {k: (0.0 if _missing(v) else float(v)) for k, v in p_values.items()}
    order = sorted(p, key=lambda k: (p[k], str(k)))
    m, out, going = len(order), {}, True
    for i, key in enumerate(order):
        level = alpha / (m - i)
        going = going and p[key] <= level
        out[key] = (going, level)
    return out


def privacy_tests(policy: ReleasePolicy, figures: Mapping[str, Mapping[str, Any]]) -> tuple[list[Check], dict]:
    """The tested privacy checks over every site's flat figures (``SiteEvaluation.figures()`` or
    ``DisclosureResult.figures()``): one Check per figure, and the record of every (check, site) test.

    A (check, site) pair is refused when Holm rejects its p-value at ``family_alpha`` over all
    sites x tested checks AND its figure is over the policy's band: at a site of thousands of rows the
    band decides (the figure is significant long before it reaches the band), at a small site the
    size-based null does (a figure over the band that chance reaches there is no evidence). Equivalently
    each threshold is the larger of the band and the null's quantile at the Holm level: it depends on
    the site's sizes and on the family, never on a figure of the table."""
    p, sites = policy, list(figures)
    p_values = {(check, s): figures[s].get(f"disclosure.{fig}_p") for check, fig, _, _ in TESTED_CHECKS for s in sites}
    decided = holm(p_values, p.family_alpha)
    n_tests = len(p_values)
    record = {"method": "holm", "family_alpha": p.family_alpha, "n_tests": n_tests,
              "first_level": p.family_alpha / n_tests if n_tests else None, "tests": []}
    checks = []
    for check, fig, band_key, what in TESTED_CHECKS:
        band = getattr(p, band_key)
        threshold = f"<= {band:g}, or not significant (Holm, family-wise {p.family_alpha:g}, {n_tests} tests)"
        rows = []
        for s in sites:
            value, pv = figures[s].get(f"disclosure.{fig}"), figures[s].get(f"disclosure.{fig}_p")
            rejected, level = decided[(check, s)]
            measured = not _missing(value) and not _missing(pv)
            refused = not measured or (rejected and float(value) > band)
            rows.append((s, None if _missing(value) else float(value), None if _missing(pv) else float(pv), level,
                         rejected, refused, measured))
            record["tests"].append({"check": check, "site": s, "value": rows[-1][1], "p_value": rows[-1][2],
                                    "band": band, "holm_level": level, "significant": rejected and measured,
                                    "refused": refused})
        missing = [r[0] for r in rows if not r[6]]
        if missing or not rows:
            checks.append(Check(check, None, threshold, False,
                                f"{what} or its p-value was not measured at {_sites(missing) if missing else 'any site'}; "
                                "the gate fails closed."))
            continue
        refused = [r for r in rows if r[5]]
        s, value, pv, level, rejected, _, _ = min(refused or rows, key=lambda r: (r[2], r[0]))
        verdict = ("over the band and significant: refused" if refused else
                   "within the band" if value <= band else "over the band but within chance at this site's size")
        message = (f"{what} is {value:.3f} at site '{s}' ({'refused' if refused else 'most significant'} of "
                   f"{len(rows)}; band {band:g}), p = {pv:.2g} against Holm level {level:.2g}: {verdict}.")
        if refused and len(refused) > 1:
            message += " Also refused at " + ", ".join(f"'{r[0]}' ({r[1]:.3f}, p = {r[2]:.2g})" for r in refused
                                                      if r[0] != s) + "."
        checks.append(Check(check, value, threshold, not refused, message))
    return checks, record


def memorised_share_caught(policy: ReleasePolicy, near_copies: Any, n_tests: int) -> float | None:
    """The smallest planted memorised share (``NearCopies.power``) the near-copy check refuses with the
    power it was read at, at the first Holm level ``family_alpha / n_tests`` (the level any one test
    must reach when nothing else is refused) and over the band; None if no share up to the largest."""
    level = policy.family_alpha / max(1, n_tests)
    caught = [pt.share for pt in near_copies.power if pt.p_value <= level and pt.excess > policy.max_near_copy_excess]
    return min(caught) if caught else None


def power_check(policy: ReleasePolicy, near_copies: Mapping[str, Any], eps: Mapping[str, float],
                n_tests: int) -> tuple[Check, dict]:
    """Can every site's checks catch the policy's memorised share with its power? A site that cannot
    (too few rows: no split-based figure, and few near copies, stand out there) is decided by the
    policy's ``underpowered`` rule: "dp_only" (default) passes it only when it trained under DP within
    ``max_epsilon_per_site``, "refuse" refuses it. Never passes a site on its figures alone."""
    p = policy
    otherwise = f"DP with epsilon <= {p.max_epsilon_per_site:g}" if p.underpowered == "dp_only" else "refused"
    threshold = (f"memorised share {p.required_memorised_share:g} caught with power {p.required_power:g} at every "
                 f"site, else {otherwise}")
    record, notes, failed, worst = {}, [], [], None
    for s, near in near_copies.items():
        if near is None or not near.power:
            record[s] = {"share": None, "power": None, "powered": False, "passed": False}
            failed.append(s)
            notes.append(f"site '{s}': the near-copy check's power was not measured (the gate fails closed)")
            worst = math.inf
            continue
        share = memorised_share_caught(p, near, n_tests)
        powered = (share is not None and share <= p.required_memorised_share + 1e-12
                   and near.power_level >= p.required_power - 1e-12)
        e = eps.get(s)
        dp = e is not None and math.isfinite(float(e)) and 0 < float(e) <= p.max_epsilon_per_site
        passed = powered or (p.underpowered == "dp_only" and dp)
        record[s] = {"share": share, "power": near.power_level, "powered": powered, "passed": passed}
        worst = max(worst if worst is not None else 0.0, math.inf if share is None else share)
        caught = "no share up to 100%" if share is None else f"a memorised share of {share:g}"
        if powered:
            notes.append(f"'{s}' {caught}")
        else:
            why = ("" if near.power_level >= p.required_power - 1e-12 else
                   f"; its power was read at {near.power_level:g}, below the policy's {p.required_power:g}")
            rule = (f"passes under DP (epsilon {float(e):g} <= {p.max_epsilon_per_site:g})" if passed else
                    "refused: the policy refuses underpowered sites" if p.underpowered == "refuse" else
                    f"refused: not trained under DP within epsilon {p.max_epsilon_per_site:g}")
            notes.append(f"'{s}' catches {caught} only (required {p.required_memorised_share:g}){why}: "
                         f"UNDERPOWERED, {rule}")
            if not passed:
                failed.append(s)
    value = None if worst is None or math.isinf(worst) else float(worst)
    message = (f"Near copies of a share of the training rows planted at each site are caught with power "
               f"{p.required_power:g} (at Holm's first level {p.family_alpha / max(1, n_tests):.2g}): "
               + "; ".join(notes) + ".")
    return Check("memorisation_power", value, threshold, not failed, message), record


def decide(policy: ReleasePolicy, evaluation: Evaluation, ledger_epsilons: Mapping[str, float]) -> Verdict:
    """Run every check of ``policy``; the table is released only if all pass."""
    p, fig = policy, evaluation.figures
    figures = evaluation.site_figures()
    checks = [
        _quality_check(p, evaluation),
        _check("detection_auc", fig.get("fidelity.detection_auc"), high=p.max_detection_auc,
               what="Real-vs-synthetic detection AUC"),
    ]
    v, w = _excess_copies(figures)
    checks.append(_check("exact_copies", v, high=p.max_exact_copy_rate, where=w,
                         what="Excess exact-copy rate of training rows"))
    checks.append(_dcr_low_check(p, figures))
    tested, record = privacy_tests(p, figures)
    checks += tested
    power, record["power"] = power_check(p, {s: e.disclosure.near_copies for s, e in evaluation.sites.items()},
                                         ledger_epsilons, record["n_tests"])
    checks.append(power)
    checks += _privacy_checks(p, list(evaluation.sites), ledger_epsilons)
    return Verdict(released=all(c.passed for c in checks), checks=tuple(checks), tests=record)


def _threshold_text(p: ReleasePolicy, name: str) -> str:
    """The rule of check ``name`` as each site applied it (no figure: the sites send verdicts)."""
    tested = {c: getattr(p, band) for c, _, band, _ in TESTED_CHECKS}
    if name in tested:
        return (f"<= {tested[name]:g}, or not significant (Holm at each site, family-wise {p.family_alpha:g} "
                "split over the sites)")
    return {
        "quality": f">= {p.min_quality:g}", "detection_auc": f"<= {p.max_detection_auc:g}",
        "exact_copies": f"excess <= {p.max_exact_copy_rate:g}", "dcr_share_low": f">= {p.dcr_share_min:g}",
        "memorisation_power": (f"memorised share {p.required_memorised_share:g} caught with power "
                               f"{p.required_power:g}, else " + (f"DP with epsilon <= {p.max_epsilon_per_site:g}"
                                                                 if p.underpowered == "dp_only" else "refused")),
        "dp_required": "finite epsilon" if p.require_dp else "not required",
        "epsilon_per_site": f"<= {p.max_epsilon_per_site:g}",
    }.get(name, "the site's policy")


def decide_consortium(policy: ReleasePolicy, evaluation: Any, *, trained: list[str], table_sha256: str) -> Verdict:
    """The gate over the sites' verdicts (``fedtab.assess.ConsortiumEvaluation``): the table is released
    only when every site that trained answered, every one drew this very table (its hash), and every
    site passed every check. Each site decided its checks against its own rows and ``policy`` (privacy
    thresholds never looser than its own; ``family_alpha`` split over the sites, so a table that never
    saw any site's rows is refused at most ``family_alpha`` of the time by the tested checks). Holds no
    figure: a check's value is None, its message names the sites that failed it."""
    sites = dict(evaluation.sites)
    checks = []
    missing = sorted(set(trained) - set(sites))
    checks.append(Check("sites_answered", None, "every site that trained", not missing,
                        f"{_sites(missing).capitalize()} trained the model but sent no verdict: the gate fails closed." if missing
                        else f"All {len(trained)} sites that trained evaluated the table."))
    other = sorted(s for s, v in sites.items() if v.table_sha256 != table_sha256)
    checks.append(Check("same_table", None, "every site drew the released table", not other,
                        f"{_sites(other).capitalize()} evaluated another table than the one the coordinator drew (SHA-256 "
                        f"{table_sha256[:12]}...): refused." if other else
                        f"Every site drew the table that would be released (SHA-256 {table_sha256[:12]}...)."))
    names: list[str] = []
    for v in sites.values():
        names += [n for n in v.checks if n not in names]
    for name in names:
        failed = sorted(s for s, v in sites.items() if not v.checks.get(name, False))
        if failed:
            message = (f"Failed at {_sites(failed)} (decided at each site against its own rows; its figures are "
                       "in its own report).")
        else:
            message = f"Passed at all {len(sites)} site(s)."
        if name == "memorisation_power":
            weak = sorted(s for s, v in sites.items() if not v.powered)
            if weak:
                message += (f" UNDERPOWERED at {weak}: their checks cannot catch a memorised share of "
                            f"{policy.required_memorised_share:g} with power {policy.required_power:g}; the "
                            f"policy's rule '{policy.underpowered}' decided.")
        checks.append(Check(name, None, _threshold_text(policy, name), not failed, message))
    if not sites:
        checks.append(Check("site_checks", None, "every check at every site", False, "No site sent a verdict."))
    record = {"method": "each site decides every check against its own rows; Holm over its tested figures at "
                        "family_alpha / sites; the table is released only when every site passes every check",
              "family_alpha": policy.family_alpha, "n_sites": len(trained),
              "sites": {s: {"checks": dict(v.checks), "powered": v.powered} for s, v in sorted(sites.items())}}
    return Verdict(released=all(c.passed for c in checks), checks=tuple(checks), tests=record)


def _dcr_low_check(p: ReleasePolicy, figures: Mapping[str, Mapping[str, Any]]) -> Check:
    """The lower DCR bound: a plain threshold (not a privacy test). Far below 0.5 the synthetic rows sit
    on the holdout rows: training and holdout rows swapped, or a table made of the holdout's rows."""
    values = {s: f.get("disclosure.dcr_share") for s, f in figures.items()}
    missing = [s for s, v in values.items() if _missing(v)]
    if missing or not values:
        return Check("dcr_share_low", None, f">= {p.dcr_share_min:g}", False,
                     f"DCR share was not measured at {_sites(missing) if missing else 'any site'}; the gate fails closed.")
    s = min(values, key=values.get)
    return _check("dcr_share_low", values[s], low=p.dcr_share_min, where=f"site '{s}' (lowest of {len(values)})",
                  what="DCR share (below it: training and holdout rows swapped, or a table of holdout rows)")


def _privacy_checks(p: ReleasePolicy, sites: list[str], eps: Mapping[str, float]) -> list[Check]:
    known = {s: eps.get(s) for s in sites}
    finite = {s: float(e) for s, e in known.items() if e is not None and math.isfinite(float(e))}
    out = []
    if p.require_dp:
        lacking = sorted(s for s in sites if s not in finite or finite[s] <= 0)
        out.append(Check("dp_required", None, "finite epsilon at every site", not lacking,
                         f"Sites {lacking} have no finite epsilon in the privacy ledger: not trained with DP."
                         if lacking else f"All {len(sites)} sites trained with DP (finite epsilon in the ledger)."))
    if finite:
        site = max(finite, key=finite.get)
        out.append(_check("epsilon_per_site", finite[site], high=p.max_epsilon_per_site,
                          where=f"site '{site}' (largest of {len(finite)})", what="Privacy budget spent (epsilon)"))
    elif p.require_dp:
        out.append(_check("epsilon_per_site", None, high=p.max_epsilon_per_site, where="any site",
                          what="Privacy budget spent (epsilon)"))
    return out


def enforce(verdict: Verdict) -> None:
    """Raise ``ReleaseRefusedError`` naming every failed check, unless the verdict releases."""
    if not verdict.released:
        names = ", ".join(c.name for c in verdict.failed)
        lines = "\n".join(f"  - {c.name}: {c.message}" for c in verdict.failed)
        raise ReleaseRefusedError(f"Release refused: {len(verdict.failed)} check(s) failed ({names}):\n{lines}",
                                  failed=list(verdict.failed))


def _sha256_file(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("fedtab", "numpy", "pandas", "scikit-learn", "sdmetrics", "anonymeter", "torch", "opacus", "flwr"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def audit_record(
    *,
    policy: ReleasePolicy,
    verdict: Verdict,
    ledger: Mapping[str, Any],
    model_path: str | os.PathLike | None = None,
    synthetic_path: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    policy_path: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> dict:
    """What was decided, on which exact files, under which policy and software: a JSON-ready dict."""
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "format": AUDIT_FORMAT,
        "time_utc": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "released": verdict.released,
        "failed_checks": [c.name for c in verdict.failed],
        "verdict": verdict.to_dict(),
        "policy": policy.to_dict(),
        "sha256": {
            "model": _sha256_file(model_path),
            "synthetic_table": _sha256_file(synthetic_path),
            "report": _sha256_file(report_path),
            "policy_file": _sha256_file(policy_path),
            "policy": _sha256_json(policy.to_dict()),
            "ledger": _sha256_json(ledger),
        },
        "ledger": json.loads(json.dumps(ledger, default=str)),
        "versions": _versions(),
    }


def write_audit(record: Mapping[str, Any], path: str | os.PathLike, *, signing_key=None) -> Path:
    """Write the audit record as JSON atomically, signed with ``signing_key`` (the coordinator's Ed25519
    key: a ``signature`` entry over the record's canonical JSON, ``fedtab.signing``) when one is given."""
    if signing_key is not None:
        from fedtab.signing import sign_record

        record = sign_record(record, signing_key)
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")


__all__ = ["Check", "ReleasePolicy", "TESTED_CHECKS", "Verdict", "audit_record", "decide", "decide_consortium",
           "enforce", "holm",
           "memorised_share_caught", "power_check", "privacy_tests", "write_audit"]


def _sites(names) -> str:
    """Sites for a message: all of a few, else the first ones and how many more (``name_sites``)."""
    from fedtab.federation.agreement import name_sites

    return name_sites(names)

"""Release gate: policy + privacy ledger + evaluation -> a verdict with every check, and an audit record.

``decide`` is pure logic over plain figures. Fidelity checks read the row-weighted mean over sites;
privacy checks read every site, because a leak at one site is a leak: each site's figure against its
own limit, the policy's threshold or (``chance_levels``) the site's chance level if higher, i.e. what
random re-splits of that site's rows reach 1 time in 100 (``evaluation.chance``). A figure that was
not measured fails its check (the gate fails closed). ``enforce`` turns a refusal into
``ReleaseRefusedError``.
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
    "disclosure": ("dcr_share_min", "dcr_share_max", "max_exact_copy_rate", "max_mia_auc",
                   "max_singling_out_risk", "max_linkability_risk", "max_inference_risk", "chance_levels"),
    "privacy": ("require_dp", "max_epsilon_per_site"),
}


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
    chance_levels: bool = True  # a privacy threshold at a site: the larger of it and the site's chance level
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
                if key not in _SECTIONS[section]:
                    problems.append(f"[{section}] unknown key '{key}'; expected one of {list(_SECTIONS[section])}")
                    continue
                problem = _check_value(key, value)
                if problem:
                    problems.append(f"[{section}] {key} = {value!r}: expected {problem}")
                else:
                    values[key] = value if key in _BOOLEAN_KEYS else float(value)
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

    def to_dict(self) -> dict[str, dict[str, Any]]:
        flat = asdict(self)
        return {section: {k: flat[k] for k in keys} for section, keys in _SECTIONS.items()}


_BOOLEAN_KEYS = ("require_dp", "chance_levels")


def _check_value(key: str, value: Any) -> str | None:
    """What is expected of ``value`` for ``key``, or None when it is fine."""
    if key in _BOOLEAN_KEYS:
        return None if isinstance(value, bool) else "true or false"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "a finite number"
    if key == "max_epsilon_per_site":
        return None if value > 0 else "a number > 0"
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

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict:
        return {"released": self.released, "checks": [asdict(c) for c in self.checks]}


def _check(name: str, value: float | None, *, low: float | None = None, high: float | None = None,
           where: str = "all sites (row-weighted mean)", what: str = "") -> Check:
    threshold = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                 else f">= {low:g}" if low is not None else f"<= {high:g}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Check(name, None, threshold, False, f"{what} was not measured at {where}; the gate fails closed.")
    ok = (low is None or value >= low) and (high is None or value <= high)
    verb = "within" if ok else "outside"
    return Check(name, float(value), threshold, ok, f"{what} is {value:.3f} at {where}, {verb} {threshold}.")


def _excess_copies(evaluation: Evaluation) -> tuple[float | None, str]:
    worst, where = None, ""
    for name, f in evaluation.site_figures().items():
        rate, natural = f.get("disclosure.exact_copy_rate"), f.get("disclosure.natural_copy_rate")
        if rate is None or natural is None:
            return None, f"site '{name}'"
        excess = max(0.0, rate - natural)
        if worst is None or excess > worst:
            worst, where = excess, f"site '{name}' (worst of {len(evaluation.sites)}; {rate:.3f} copied vs {natural:.3f} natural)"
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


def decide(policy: ReleasePolicy, evaluation: Evaluation, ledger_epsilons: Mapping[str, float]) -> Verdict:
    """Run every check of ``policy``; the table is released only if all pass."""
    p, fig = policy, evaluation.figures
    checks = [
        _quality_check(p, evaluation),
        _check("detection_auc", fig.get("fidelity.detection_auc"), high=p.max_detection_auc,
               what="Real-vs-synthetic detection AUC"),
    ]
    checks.append(_site_limit_check(p, evaluation, "dcr_share", p.dcr_share_max, "DCR share", low=p.dcr_share_min))
    v, w = _excess_copies(evaluation)
    checks.append(_check("exact_copies", v, high=p.max_exact_copy_rate, where=w,
                         what="Excess exact-copy rate of training rows"))
    for name, limit, what in (
        ("mia_auc", p.max_mia_auc, "Membership-inference AUC"),
        ("singling_out_risk", p.max_singling_out_risk, "Singling-out risk"),
        ("linkability_risk", p.max_linkability_risk, "Linkability risk"),
        ("inference_risk", p.max_inference_risk, "Attribute-inference risk"),
    ):
        checks.append(_site_limit_check(p, evaluation, name, limit, what))
    checks += _privacy_checks(p, list(evaluation.sites), ledger_epsilons)
    return Verdict(released=all(c.passed for c in checks), checks=tuple(checks))


def _site_limit_check(p: ReleasePolicy, evaluation: Evaluation, name: str, limit: float, what: str, *,
                      low: float | None = None) -> Check:
    """A privacy figure at every site against ``limit`` (and, for a band, ``low``: read off the lowest
    site). With ``chance_levels``, a site's upper limit is the larger of ``limit`` and its
    chance level (``evaluation.chance``: what random re-splits of its rows reach 1 time in 100); a
    site that measured none keeps ``limit``. The check shows the site closest to (or furthest over) its
    limit; a site without the figure fails it (the gate fails closed)."""
    threshold = (f"in [{low:g}, {limit:g}]" if low is not None else f"<= {limit:g}") + \
        (" or the site's chance level" if p.chance_levels else "")
    figures = evaluation.site_figures()
    missing = [s for s, f in figures.items() if f.get(f"disclosure.{name}") is None]
    if missing or not figures:
        return Check(name, None, threshold, False, f"{what} was not measured at site(s) {missing or 'any'}; "
                                                   "the gate fails closed.")
    limits = {}
    for site, f in figures.items():
        level = f.get(f"disclosure.{name}_chance") if p.chance_levels else None
        limits[site] = max(limit, level) if level is not None else limit
    site = max(figures, key=lambda s: figures[s][f"disclosure.{name}"] - limits[s])
    value, at = float(figures[site][f"disclosure.{name}"]), limits[site]
    lowest = min(float(f[f"disclosure.{name}"]) for f in figures.values())
    ok = value <= at and (low is None or lowest >= low)
    if low is not None and lowest < low:
        value = float(lowest)
        message = f"{what} is {lowest:.3f} at the lowest site, below {low:g} (training and holdout rows swapped?)."
    else:
        raised = "" if at == limit else f", its chance level {at:.3f} at this site ({limit:g} in the policy)"
        message = (f"{what} is {value:.3f} at site '{site}' (nearest its limit of {len(figures)}); limit "
                   f"{at:.3f}{raised}: {'within' if ok else 'over'} it.")
    return Check(name, value, threshold, ok, message)


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


def write_audit(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the audit record as JSON atomically."""
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")


__all__ = ["Check", "ReleasePolicy", "Verdict", "audit_record", "decide", "enforce", "write_audit"]

"""Federated evaluation and the release flow: ``fedtab.evaluate`` and ``fedtab.release``.

The coordinator sends every site the model file, the sampling settings and its release policy. Each
site checks the model is the one it trained, draws the table itself, scores it against its own
training and holdout rows, decides every check of the policy at home and sends back its verdicts:
a bit per check (``fedtab.federation.site_evaluation``). The figures stay at the site, in its own
report. The coordinator draws the same table (same model, rows, seed), checks its hash against the
sites', and releases it only when every site passed every check.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from fedtab.errors import ConfigError, ReleaseRefusedError


@dataclass(frozen=True)
class SiteVerdict:
    """What one site sent back from an evaluation: its verdict on each check, nothing else."""

    checks: Mapping[str, bool]
    passed: bool
    powered: bool  # its checks catch the policy's memorised share with the policy's power
    table_sha256: str
    evaluation: int  # which evaluation of the job this was at the site ...
    max_evaluations: int  # ... of how many it allows

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> "SiteVerdict":
        return cls(checks=MappingProxyType({str(k): bool(v) for k, v in reply["checks"].items()}),
                   passed=bool(reply["passed"]), powered=bool(reply["powered"]),
                   table_sha256=str(reply["table_sha256"]), evaluation=int(reply["evaluation"]),
                   max_evaluations=int(reply["max_evaluations"]))

    def to_dict(self) -> dict:
        return {"checks": dict(self.checks), "passed": self.passed, "powered": self.powered,
                "table_sha256": self.table_sha256, "evaluation": self.evaluation,
                "max_evaluations": self.max_evaluations}


@dataclass(frozen=True)
class ConsortiumEvaluation:
    """An evaluation as the coordinator knows it: each site's verdicts on the table drawn with
    ``sampling`` (no figure computed from any site's rows).

    ``site_local``: in a simulation (the in-process transport, where the caller runs every site), each
    site's own outcome (``site_evaluation.SiteOutcome``: every figure, its policy, its verdict with
    values), read from the site workers, not from what they sent. Empty in a deployment: the figures
    stay at the sites, in their own reports."""

    sites: Mapping[str, SiteVerdict]
    sampling: Mapping[str, Any]
    target: str | None = None
    site_local: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.sites) and all(v.passed for v in self.sites.values())

    def site_figures(self) -> dict[str, dict[str, float | None]]:
        """Each site's own figures (simulation only; see ``site_local``)."""
        return {s: o.evaluation.sites[s].figures() for s, o in self.site_local.items()}

    def to_dict(self) -> dict:
        return {"sampling": dict(self.sampling), "target": self.target,
                "sites": {s: v.to_dict() for s, v in self.sites.items()}}


@dataclass(frozen=True)
class ReleaseResult:
    """What ``release`` decided and wrote (``outputs``: label -> path)."""

    verdict: object
    evaluation: ConsortiumEvaluation
    outputs: dict[str, Path] = field(default_factory=dict)


def _synthesizer(model, trusted_keys=None):
    from fedtab.api import FederatedSynthesizer, load

    if isinstance(model, (str, os.PathLike)):
        return load(model, trusted_keys=trusted_keys)
    if isinstance(model, FederatedSynthesizer):
        from fedtab.errors import check_is_fitted

        check_is_fitted(model, "weights_")
        return model
    raise ConfigError(f"'model' must be a fitted FederatedSynthesizer or a model file path. Got {type(model).__name__}.")


def _policy(policy) -> tuple[Any, str | os.PathLike | None]:
    from fedtab.release import ReleasePolicy

    if policy is None or isinstance(policy, (str, os.PathLike)):
        return ReleasePolicy.load(policy), policy
    if isinstance(policy, ReleasePolicy):
        return policy, None
    raise ConfigError(f"'policy' must be a ReleasePolicy, a policy file path or None. Got {type(policy).__name__}.")


def sampling_settings(synth, *, n: int | None, seed: int | None, quantile_map: bool) -> dict[str, Any]:
    """The table both the sites and the coordinator draw: ``n`` rows (default: the sites' total training
    rows as they reported them, noisy under DP), ``seed`` (default: the model's), ``quantile_map``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ConfigError(f"'n' must be a whole number >= 2 or None. Got {n!r} instead.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"'seed' must be a whole number >= 0 or None. Got {seed!r} instead.")
    return {"n": default_rows(synth, n), "seed": synth.seed if seed is None else int(seed),
            "quantile_map": bool(quantile_map)}


def evaluate(model, sites: Mapping, *, n: int | None = None, target: str | None = None, seed: int | None = None,
             transport: str = "inprocess", quantile_map: bool = False, ledger_dir: str | os.PathLike | None = None,
             policy=None, report_dir: str | os.PathLike | None = None, synthetic: pd.DataFrame | None = None,
             trusted_keys=None) -> ConsortiumEvaluation:
    """Have every site evaluate a table drawn from ``model``; returns their verdicts.

    Each site draws ``n`` rows with ``seed`` (and ``quantile_map``, see ``FederatedSynthesizer.sample``)
    from the model it trained, scores them against its own rows and decides every check of ``policy``
    (default: the shipped policy) at home. ``ledger_dir``: the sites' lasting ledgers, where each site
    recorded the model it trained (default: the synthesizer's own, or the books it kept in memory when it
    trained in this process); each site's full report goes to ``<ledger_dir>/<site>/reports`` (else to
    ``<report_dir>/<site>`` when given). Each evaluation counts against the site's ``max_evaluations``.
    ``synthetic`` is refused: sites evaluate only tables they draw themselves. ``trusted_keys``: for a
    model file path, the keys its signature must be by (``fedtab.load``).
    """
    from fedtab.api import _make_worker, _site_source

    if synthetic is not None:
        raise ConfigError(
            "'synthetic': sites evaluate only tables they draw themselves from the model they trained (a table of "
            "the coordinator's choosing could read their rows back). Pass the sampling settings instead (n, seed, "
            "quantile_map); FederatedSynthesizer.sample(n, seed=seed, quantile_map=...) draws the same table.")
    synth = _synthesizer(model, trusted_keys)
    _check_same_job(synth, sites, target)
    policy, _ = _policy(policy)
    sampling = sampling_settings(synth, n=n, seed=seed, quantile_map=quantile_map)
    if ledger_dir is None:
        ledger_dir = getattr(synth, "ledger_dir", None)
    books = getattr(synth, "_site_books", {}) if ledger_dir is None else {}
    factories = {str(k): functools.partial(
        _make_worker, str(k), _site_source(k, v), policy=synth._policy_of(str(k), v), ledger_dir=ledger_dir,
        records=books.get(str(k)), report_dir=None if report_dir is None else Path(report_dir) / str(k))
        for k, v in sites.items()}

    def ask(t):
        return evaluate_on(t, synth, sampling, target=target, policy=policy)

    if transport == "flower":
        from fedtab.federation.flower_app import run_flower_simulation

        return run_flower_simulation(ask, factories)
    from fedtab.federation.transport import InProcessTransport

    workers = {k: f() for k, f in factories.items()}
    result = ask(InProcessTransport(workers))
    # A simulation runs every site: their own outcomes are the caller's to read (see ``site_local``).
    local = {k: w.last_evaluation for k, w in sorted(workers.items()) if w.last_evaluation is not None}
    return ConsortiumEvaluation(sites=result.sites, sampling=result.sampling, target=result.target,
                                site_local=MappingProxyType(local))


def _check_same_job(synth, sites: Mapping, target: str | None) -> None:
    """A model is evaluated by the sites that trained it: a model none of whose sites is asked comes from
    another job (its target may be missing too; that is not the cause to report)."""
    from fedtab.errors import ModelFileError
    from fedtab.federation.agreement import name_sites

    trained = sorted(synth.privacy_ledger)
    asked = sorted(str(s) for s in sites)
    if trained and asked and not set(trained) & set(asked):
        missing = (f" (nor has its table the column {target!r}, this configuration's target)"
                   if target is not None and target not in synth.schema_ else "")
        raise ModelFileError(
            f"this model file comes from another job: {name_sites(trained)} trained it, none of them a site of this "
            f"configuration ({name_sites(asked)}){missing}. Evaluate it with the configuration it was trained with, "
            "or train a model for this configuration ('fedtab train').")


def evaluate_on(transport, synth, sampling: Mapping[str, Any], *, target: str | None = None, policy=None,
                sites=None) -> ConsortiumEvaluation:
    """Federated evaluation over an open transport (in-process, Flower simulation or a deployment)."""
    import numpy as np

    from fedtab.federation.site import EVALUATE
    from fedtab.federation.transport import broadcast

    if target is not None and target not in synth.schema_:
        raise ConfigError(f"The 'target' column {target!r} is not in the schema; columns: {synth.schema_.names}.")
    policy, _ = _policy(policy)
    body = {"job": synth.job_.site_job(), "model": np.frombuffer(synth.to_bytes(), dtype=np.uint8),
            "sampling": dict(sampling), "target": target, "policy": policy.to_dict()}
    replies = broadcast(transport, EVALUATE, body, sites=sites)
    return ConsortiumEvaluation(sites=MappingProxyType({s: SiteVerdict.from_reply(r) for s, r in sorted(replies.items())}),
                                sampling=MappingProxyType(dict(sampling)), target=target)


def default_rows(synth, n: int | None = None) -> int:
    """Rows to sample: ``n``, or the sites' total training rows as they reported them (noisy under DP)."""
    return n or max(2, int(round(sum(synth.result_.site_weights.values()))))


def release(model, sites: Mapping, out_dir: str | os.PathLike, *, policy=None, n: int | None = None,
            target: str | None = None, seed: int | None = None, transport: str = "inprocess",
            model_path: str | os.PathLike | None = None, quantile_map: bool = False,
            ledger_dir: str | os.PathLike | None = None, report_dir: str | os.PathLike | None = None,
            trusted_keys=None, signing_key=None) -> ReleaseResult:
    """Have the sites evaluate a table drawn from ``model``, apply the release gate, write the outputs.

    Always writes the public report (HTML + JSON: the table's own statistics, each site's verdicts, the
    ledgers) and an audit record; writes the synthetic table only when every site passed every check.
    Raises ``ReleaseRefusedError`` naming every failed check otherwise. Each site's full report stays
    with the site (see ``evaluate``). ``quantile_map``: see ``FederatedSynthesizer.sample``.
    ``trusted_keys``: for a model file path, the keys its signature must be by (``fedtab.load``).
    ``signing_key``: sign the model file written here and the audit record (default: the synthesizer's).
    """
    synth = _synthesizer(model, trusted_keys)
    policy_obj, policy_path = _policy(policy)
    ev = evaluate(synth, sites, n=n, target=target, seed=seed, transport=transport, quantile_map=quantile_map,
                  ledger_dir=ledger_dir, policy=policy_obj, report_dir=report_dir)
    table = synth.sample_typed(ev.sampling["n"], seed=ev.sampling["seed"], quantile_map=ev.sampling["quantile_map"])
    return gate_and_write(synth, table, ev, out_dir, policy=policy_obj, policy_path=policy_path, model_path=model_path,
                          signing_key=signing_key)


def _gate_public(synth, table: pd.DataFrame, ev: ConsortiumEvaluation, html_path: str | os.PathLike, policy):
    """The gate over the sites' verdicts on ``table`` and the public report (HTML at ``html_path``, JSON
    beside it, one document). Returns (verdict, public ledgers, html path, json path)."""
    from fedtab.federation.site_evaluation import table_sha256
    from fedtab.public_report import public_document, public_ledgers, write_public_json, write_public_report
    from fedtab.release import decide_consortium

    ledger = public_ledgers({s: led.to_dict() for s, led in synth.privacy_ledger.items()})
    verdict = decide_consortium(policy, ev, trained=sorted(synth.privacy_ledger), table_sha256=table_sha256(table))
    doc = public_document(ev, verdict=verdict, ledger=ledger, table=table, schema=synth.schema_)
    html = write_public_report(html_path, doc)
    return verdict, ledger, html, write_public_json(Path(html_path).with_suffix(".json"), doc)


def write_public(synth, ev: ConsortiumEvaluation, html_path: str | os.PathLike, *, policy=None):
    """Draw the table the sites evaluated, read their verdicts through the gate, and write the public
    report (HTML at ``html_path``, JSON beside it). Returns (verdict, html path, json path)."""
    policy, _ = _policy(policy)
    table = synth.sample_typed(ev.sampling["n"], seed=ev.sampling["seed"], quantile_map=ev.sampling["quantile_map"])
    verdict, _, html, js = _gate_public(synth, table, ev, html_path, policy)
    return verdict, html, js


def gate_and_write(synth, table: pd.DataFrame, ev: ConsortiumEvaluation, out_dir: str | os.PathLike, *, policy=None,
                   policy_path: str | os.PathLike | None = None,
                   model_path: str | os.PathLike | None = None, signing_key=None) -> ReleaseResult:
    """Apply the release gate to the sites' verdicts on ``table`` and write the public report, audit
    record and, if released, the table (``ReleaseRefusedError`` naming every failed check otherwise).
    ``signing_key`` (default: the synthesizer's ``signing_key``) signs the model file written here and
    the audit record."""
    import connectors
    from fedtab.release import audit_record, write_audit

    if policy is None or isinstance(policy, (str, os.PathLike)):
        policy, policy_path = _policy(policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdict, ledger, html, js = _gate_public(synth, table, ev, out / "report.html", policy)
    outputs = {"report": html, "figures": js}
    if signing_key is None:
        signing_key = getattr(synth, "signing_key", None)
    if model_path is None:
        model_path = synth.save(out / "model.fedtab", signing_key=signing_key)
    outputs["model"] = Path(model_path)
    table_path = None
    if verdict.released:
        table_path = out / "synthetic.csv"
        from fedtab.transform.values import as_input_dtypes

        # The released file in the input's representation (the gate judged the same rows, typed).
        connectors.write_table(as_input_dtypes(table, synth.schema_), table_path, if_exists="replace")
        outputs["synthetic table"] = table_path
    record = audit_record(policy=policy, verdict=verdict, ledger=ledger, model_path=model_path,
                          synthetic_path=table_path, report_path=outputs["report"], policy_path=policy_path)
    outputs["audit record"] = write_audit(record, out / "audit.json", signing_key=signing_key)
    result = ReleaseResult(verdict=verdict, evaluation=ev, outputs=outputs)
    if not verdict.released:
        failed = "\n".join(f"  - {c.name} ({c.threshold}): {c.message}" for c in verdict.failed)
        err = ReleaseRefusedError(
            f"the release gate refused the synthetic table ({len(verdict.failed)} failed check(s)); nothing was "
            f"released:\n{failed}\nSee {outputs['report']} and {outputs['audit record']}.",
            failed=list(verdict.failed),
        )
        err.result = result  # the report and audit record were written: callers may show them
        raise err
    return result

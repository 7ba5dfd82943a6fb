"""Federated evaluation and the release flow: ``fedtab.evaluate`` and ``fedtab.release``.

The synthetic table goes to every site; each scores it against its own training rows and its own
holdout (the same seeded split as in training, so holdout rows were never trained on) and sends back
aggregate figures only. The coordinator combines them weighted by rows, keeps each site's figures,
and the release gate decides: the table is written only when every check passes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedtab.errors import ConfigError, ReleaseRefusedError


@dataclass(frozen=True)
class ReleaseResult:
    """What ``release`` decided and wrote (``outputs``: label -> path)."""

    verdict: object
    evaluation: object
    outputs: dict[str, Path] = field(default_factory=dict)


def _synthesizer(model):
    from fedtab.api import FederatedSynthesizer, load

    if isinstance(model, (str, os.PathLike)):
        return load(model)
    if isinstance(model, FederatedSynthesizer):
        return model
    raise ConfigError(f"'model' must be a fitted FederatedSynthesizer or a model file path. Got {type(model).__name__}.")


def evaluate(model, sites: Mapping, *, synthetic: pd.DataFrame | None = None, n: int | None = None,
             target: str | None = None, seed: int | None = None, transport: str = "inprocess",
             quantile_map: bool = False, ledger_dir: str | os.PathLike | None = None):
    """Score a synthetic table at every site; returns ``evaluation.Evaluation`` (combined + per site).

    ``model``: the fitted synthesizer (or model file) whose job fixes the schema and each site's
    holdout split. ``synthetic``: the table to score (default: ``n`` rows sampled from the model,
    ``n`` defaulting to the sites' total training rows as the sites reported them; ``quantile_map``:
    see ``FederatedSynthesizer.sample``). Each site counts the evaluation against its
    ``max_evaluations`` (``ledger_dir``: the sites' lasting ledgers, as in training; the site policies
    come from ``sites`` as in ``FederatedSynthesizer``'s ``SiteSource``).
    """
    from fedtab.api import _make_worker, _site_source

    synth = _synthesizer(model)
    if synthetic is None:
        synthetic = synth.sample(default_rows(synth, n), seed=seed, quantile_map=quantile_map)
    factories = {str(k): functools.partial(_make_worker, str(k), _site_source(k, v),
                                           policy=synth._policy_of(str(k), v), ledger_dir=ledger_dir)
                 for k, v in sites.items()}

    def ask(t):
        return evaluate_on(t, synth, synthetic, target=target)

    if transport == "flower":
        from fedtab.federation.flower_app import run_flower_simulation

        return run_flower_simulation(ask, factories)
    from fedtab.federation.transport import InProcessTransport

    return ask(InProcessTransport({k: f() for k, f in factories.items()}))


def evaluate_on(transport, synth, synthetic: pd.DataFrame, *, target: str | None = None, sites=None):
    """Federated evaluation over an open transport (in-process, Flower simulation or a deployment)."""
    from evaluation import combine
    from evaluation._tables import kinds_of, to_plain
    from evaluation.plain import from_plain
    from evaluation.site import SiteEvaluation
    from fedtab.federation.site import EVALUATE
    from fedtab.federation.site_evaluation import frame_to_bytes
    from fedtab.federation.transport import broadcast

    if target is not None and target not in synth.schema_:
        raise ConfigError(f"The 'target' column {target!r} is not in the schema; columns: {synth.schema_.names}.")
    body = {"job": synth.job_.site_job(), "schema": synth.schema_.to_dict(),
            "synthetic": frame_to_bytes(synthetic), "target": target}
    replies = broadcast(transport, EVALUATE, body, sites=sites)
    results = {s: from_plain(SiteEvaluation, r["evaluation"]) for s, r in sorted(replies.items())}
    return combine(results, {s: int(r["rows"]) for s, r in sorted(replies.items())},
                   synthetic=to_plain(synthetic, synth.schema_), kinds=kinds_of(synth.schema_))


def default_rows(synth, n: int | None = None) -> int:
    """Rows to sample: ``n``, or the sites' total training rows as they reported them (noisy under DP)."""
    return n or max(2, int(round(sum(synth.result_.site_weights.values()))))


def release(model, sites: Mapping, out_dir: str | os.PathLike, *, policy=None, n: int | None = None,
            target: str | None = None, seed: int | None = None, transport: str = "inprocess",
            model_path: str | os.PathLike | None = None, quantile_map: bool = False,
            ledger_dir: str | os.PathLike | None = None) -> ReleaseResult:
    """Sample, evaluate at the sites, apply the release gate, write the outputs.

    Always writes the report (HTML + JSON) and an audit record; writes the synthetic table only
    when every check passes. Raises ``ReleaseRefusedError`` naming every failed check otherwise.
    ``quantile_map``: see ``FederatedSynthesizer.sample``.
    """
    synth = _synthesizer(model)
    table = synth.sample(default_rows(synth, n), seed=seed, quantile_map=quantile_map)
    ev = evaluate(synth, sites, synthetic=table, target=target, seed=seed, transport=transport, ledger_dir=ledger_dir)
    return gate_and_write(synth, table, ev, out_dir, policy=policy, model_path=model_path)


def gate_and_write(synth, table: pd.DataFrame, ev, out_dir: str | os.PathLike, *, policy=None,
                   model_path: str | os.PathLike | None = None) -> ReleaseResult:
    """Apply the release gate to an evaluated table and write the report, audit record and, if released,
    the table (``ReleaseRefusedError`` naming every failed check otherwise)."""
    import connectors
    from evaluation.report import write_json, write_report
    from fedtab.release import ReleasePolicy, audit_record, decide, write_audit

    policy_path = None
    if policy is None or isinstance(policy, (str, os.PathLike)):
        policy_path = policy
        policy = ReleasePolicy.load(policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ledger = {s: led.to_dict() for s, led in synth.privacy_ledger.items()}
    epsilons = {s: (led.epsilon if led.is_dp else float("inf")) for s, led in synth.privacy_ledger.items()}
    verdict = decide(policy, ev, epsilons)
    outputs = {"report": write_report(ev, out / "report.html", ledger=ledger, verdict=verdict),
               "figures": write_json(ev, out / "report.json", ledger=ledger, verdict=verdict)}
    if model_path is None:
        model_path = synth.save(out / "model.fedtab")
    outputs["model"] = Path(model_path)
    table_path = None
    if verdict.released:
        table_path = out / "synthetic.csv"
        connectors.write_table(table, table_path, if_exists="replace")
        outputs["synthetic table"] = table_path
    record = audit_record(policy=policy, verdict=verdict, ledger=ledger, model_path=model_path,
                          synthetic_path=table_path, report_path=outputs["report"], policy_path=policy_path)
    outputs["audit record"] = write_audit(record, out / "audit.json")
    result = ReleaseResult(verdict=verdict, evaluation=ev, outputs=outputs)
    if not verdict.released:
        failed = "\n".join(f"  - {c.message}" for c in verdict.failed)
        err = ReleaseRefusedError(
            f"the release gate refused the synthetic table ({len(verdict.failed)} failed check(s)); nothing was "
            f"released:\n{failed}\nSee {outputs['report']} and {outputs['audit record']}.",
            failed=list(verdict.failed),
        )
        err.result = result  # the report and audit record were written: callers may show them
        raise err
    return result

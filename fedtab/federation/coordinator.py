"""The coordinator: runs the phases over any transport and returns the global model.

schema agreement -> federated encoding (one request per encoding phase) -> training setup (each site
calibrates its DP-SGD noise to what is left of its budget) -> rounds of local training and
row-weighted FedAvg -> final ledgers. The coordinator holds no rows, only what sites released.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedtab.config import PrivacySettings, TrainingSettings
from fedtab.federation import encoding
from fedtab.federation.agreement import agree_schemas
from fedtab.federation.aggregation import weighted_average
from fedtab.federation.site import ENCODE, LEDGER, SCHEMA, SETUP, TRAIN
from fedtab.federation.transport import Transport, broadcast
from fedtab.schema import TableSchema

Progress = Callable[[str, dict], None]


@dataclass(frozen=True)
class JobSpec:
    """What the consortium agreed to run (public; sent to every site)."""

    model: str = "ctgan"
    model_options: dict = field(default_factory=dict)
    privacy: PrivacySettings = PrivacySettings()
    training: TrainingSettings = TrainingSettings()
    seed: int = 0
    holdout: float = 0.2
    missing_markers: tuple[str, ...] = ("?",)
    schema: TableSchema | None = None

    def site_job(self) -> dict:
        return {"seed": self.seed, "holdout": self.holdout, "missing_markers": list(self.missing_markers),
                "epsilon": self.privacy.epsilon, "delta": self.privacy.delta}


@dataclass(frozen=True)
class RoundRecord:
    round: int
    losses: dict[str, float]
    epsilon: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class FederationResult:
    schema: TableSchema
    encoding: dict  # TableTransformer.to_dict()
    weights: dict[str, np.ndarray]
    ledgers: dict[str, dict]
    history: tuple[RoundRecord, ...]
    site_weights: dict[str, float]
    noise_multipliers: dict[str, float]


def _notify(progress: Progress | None, event: str, **info: Any) -> None:
    if progress is not None:
        progress(event, info)


def run_federation(transport: Transport, job: JobSpec, *, progress: Progress | None = None) -> FederationResult:
    sites = transport.sites
    # Phase 1: schema agreement (schemas only, no statistics: free).
    _notify(progress, "phase", name="schema agreement", sites=sites)
    body = {"job": job.site_job(), "schema": job.schema.to_dict() if job.schema is not None else None}
    replies = broadcast(transport, SCHEMA, body)
    schema = job.schema or agree_schemas({s: TableSchema.from_dict(r["schema"]) for s, r in replies.items()})

    # Phase 2: federated encoding (noised statistics, recorded in each site's ledger).
    _notify(progress, "phase", name="federated encoding")
    plan = encoding.make_plan(schema, job)
    transformer, site_weights = encoding.run_encoding(
        plan, lambda phase, request: broadcast(transport, ENCODE, {
            "schema": schema.to_dict(), "plan": encoding.plan_to_dict(plan), "phase": phase, "request": request}),
    )

    # Phase 3: each site calibrates its DP-SGD noise to its remaining budget.
    from fedtab.federation import training

    setup = training.setup_body(job, transformer)
    replies = broadcast(transport, SETUP, setup)
    noise = {s: float(r["noise_multiplier"]) for s, r in replies.items()}
    global_weights = training.initial_weights(setup)
    history: list[RoundRecord] = []
    _notify(progress, "phase", name="training", rounds=job.training.rounds, noise_multipliers=noise)
    for r in range(job.training.rounds):
        t0 = time.perf_counter()
        replies = broadcast(transport, TRAIN, {"round": r, "weights": global_weights})
        order = sorted(replies)  # fixed order: identical sums on every transport
        global_weights = weighted_average([replies[s]["weights"] for s in order], [site_weights[s] for s in order])
        losses = {k: float(np.mean([replies[s]["losses"][k] for s in order])) for k in replies[order[0]]["losses"]}
        eps = {s: float(replies[s]["epsilon"]) for s in order}
        history.append(RoundRecord(round=r + 1, losses=losses, epsilon=eps, seconds=time.perf_counter() - t0))
        _notify(progress, "round", round=r + 1, rounds=job.training.rounds, losses=losses, epsilon=eps)

    ledgers = {s: r["ledger"] for s, r in broadcast(transport, LEDGER, {}).items()}
    return FederationResult(schema=schema, encoding=transformer.to_dict(), weights=global_weights, ledgers=ledgers,
                            history=tuple(history), site_weights=site_weights, noise_multipliers=noise)

"""The coordinator's per-round checkpoint: a ``TrainingState`` in one atomic safetensors + JSON file.

It holds only what the coordinator already had in memory: the agreed schema, the encoding (fitted
from noised statistics), each site's FedAvg weight and noise multiplier, the global weights and the
round history, and the last ledger each site's replies carried (for a site that dies before the end). No
rows, no pickle. The job's fingerprint is stored with it so that ``--resume``
refuses a checkpoint written for another configuration.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fedtab.errors import FederationError
from fedtab.federation.coordinator import JobSpec, RoundRecord, TrainingState
from fedtab.federation.wire import pack
from fedtab.schema import TableSchema
from fedtab.deploy.state_files import load_state, save_state

CHECKPOINT_FORMAT = "fedtab.checkpoint/1"


def job_fingerprint(job: JobSpec) -> str:
    t = job.training
    doc = {"site_job": job.site_job(), "model": job.model, "options": job.model_options,
           "share": job.privacy.preprocessing_share, "rounds": t.rounds, "local_epochs": t.local_epochs,
           "batch_size": t.batch_size, "max_grad_norm": t.max_grad_norm,
           "schema": job.schema.to_dict() if job.schema is not None else None}
    return hashlib.sha256(pack(doc).json.encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, state: TrainingState, job: JobSpec) -> Path:
    value = {"job": job_fingerprint(job), "schema": state.schema.to_dict(), "encoding": state.encoding,
             "site_weights": state.site_weights, "noise_multipliers": state.noise_multipliers,
             "weights": state.weights, "active_sites": list(state.active_sites), "rounds_done": state.rounds_done,
             "history": [{"round": h.round, "losses": h.losses, "epsilon": h.epsilon, "seconds": h.seconds}
                         for h in state.history],
             "seen_ledgers": state.seen_ledgers, "site_rows_known": state.site_rows_known}
    return save_state(path, value, fmt=CHECKPOINT_FORMAT)


def load_checkpoint(path: str | os.PathLike, job: JobSpec) -> TrainingState | None:
    v = load_state(path, fmt=CHECKPOINT_FORMAT)
    if v is None:
        return None
    if v["job"] != job_fingerprint(job):
        raise FederationError(f"{path}: this checkpoint was written for another configuration (seed, budget, "
                              "model or training settings differ); resume with the same CONFIG.toml or remove it")
    return TrainingState(schema=TableSchema.from_dict(v["schema"]), encoding=v["encoding"],
                         site_weights={k: float(x) for k, x in v["site_weights"].items()},
                         noise_multipliers={k: float(x) for k, x in v["noise_multipliers"].items()},
                         weights=v["weights"], history=tuple(RoundRecord(**h) for h in v["history"]),
                         active_sites=tuple(v["active_sites"]), rounds_done=int(v["rounds_done"]),
                         seen_ledgers=dict(v.get("seen_ledgers") or {}),
                         site_rows_known=bool(v.get("site_rows_known", True)))

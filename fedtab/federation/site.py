"""What a site does with each coordinator request. The same code serves every transport.

A site never sends rows. It sends: its schema (no statistics), noised (or, in non-DP mode, exact)
encoding statistics, model weights after local DP-SGD, and aggregate evaluation figures. Every
data-dependent release is first checked and recorded in the site's own ledger, which lives in the
site's persistent state and caps what any coordinator can ask for (``max_epsilon``).

Requests (``kind``): ``schema`` -> ``encode`` (one per encoding phase) -> ``setup`` -> ``train``
(one per round) -> ``ledger``; ``evaluate`` scores a synthetic table against the site's own rows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from fedtab.errors import ConfigError, FederationError
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.schema import TableSchema

# Request kinds (wire constants).
SCHEMA, ENCODE, SETUP, TRAIN, LEDGER, EVALUATE = "schema", "encode", "setup", "train", "ledger", "evaluate"


def site_seed(seed: int, site: str, *salt: int) -> int:
    """A per-site, per-purpose seed that does not depend on the transport or on site order."""
    h = zlib.crc32(site.encode("utf-8"), seed & 0xFFFFFFFF)
    for s in salt:
        h = zlib.crc32(int(s).to_bytes(8, "little", signed=True), h)
    return h


def split_holdout(frame: pd.DataFrame, *, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set a site's holdout rows aside (never trained on): seeded, stable under row order."""
    if fraction <= 0 or len(frame) < 10:
        return frame, frame.iloc[0:0]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(frame))
    k = int(round(len(frame) * fraction))
    hold = np.sort(idx[:k])
    train = np.sort(idx[k:])
    return frame.iloc[train].reset_index(drop=True), frame.iloc[hold].reset_index(drop=True)


class SiteWorker:
    """One institution's side of the federation.

    ``load_frame`` returns the site's table (typed per the schema contract when ``schema`` is given,
    otherwise raw; see ``fedtab.validation``). ``max_epsilon`` is the site's own cap: the budget the
    coordinator asks for is lowered to it.
    """

    def __init__(self, name: str, load_frame: Callable[[TableSchema | None, tuple[str, ...]], pd.DataFrame], *,
                 max_epsilon: float | None = None):
        self.name = name
        self._load_frame = load_frame
        self.max_epsilon = max_epsilon
        self._cache: dict[str, Any] = {}

    # -- dispatch ------------------------------------------------------------------------------------
    def __call__(self, kind: str, body: dict, state: dict) -> dict:
        handler = {SCHEMA: self._schema, ENCODE: self._encode, SETUP: self._setup, TRAIN: self._train,
                   LEDGER: self._ledger, EVALUATE: self._evaluate}.get(kind)
        if handler is None:
            raise FederationError(f"site '{self.name}' does not know the request '{kind}'")
        return handler(body, state)

    # -- data ---------------------------------------------------------------------------------------
    def _frames(self, state: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows, holdout rows), typed per the agreed schema."""
        schema_json = state["schema"]
        key = "frames:" + hashlib.sha256(schema_json.encode()).hexdigest()
        if key not in self._cache:
            from fedtab.validation import validate_table

            job = state["job"]
            schema = TableSchema.from_json(schema_json)
            # The site's own table lacks the job's site column: the site adds it.
            raw = self._with_site_column(self._load_frame(schema.without(job.get("site_column")),
                                                          tuple(job["missing_markers"])), job)
            typed = validate_table(raw, schema, source=f"site '{self.name}'")
            self._cache[key] = split_holdout(typed, fraction=job["holdout"], seed=site_seed(job["seed"], self.name, 1))
        return self._cache[key]

    def _with_site_column(self, raw: pd.DataFrame, job: dict) -> pd.DataFrame:
        """The site's rows with the job's site column added: this site's name on every row."""
        column = job.get("site_column")
        if column is None:
            return raw
        if column in raw.columns:
            raise ConfigError(f"site '{self.name}': the table already has a column '{column}', the job's "
                              "'site_column'; choose a site column name that no site's table uses.")
        return raw.assign(**{column: self.name})

    def _ledger_of(self, state: dict) -> PrivacyLedger:
        return PrivacyLedger.from_dict(state["ledger"])

    # -- phase 1: schema ---------------------------------------------------------------------------
    def _schema(self, body: dict, state: dict) -> dict:
        from fedtab.inference import infer_schema

        job = body["job"]
        epsilon = job["epsilon"]
        if epsilon is not None and self.max_epsilon is not None and epsilon > self.max_epsilon:
            raise ConfigError(
                f"the coordinator asks for epsilon {epsilon:g} but this site allows at most {self.max_epsilon:g}; "
                "lower 'privacy.epsilon' in the consortium configuration"
            )
        state["job"] = job
        state["ledger"] = PrivacyLedger(self.name, epsilon_budget=epsilon,
                                        delta=job["delta"] if epsilon is not None else None).to_dict()
        if body.get("schema") is not None:
            schema = TableSchema.from_dict(body["schema"], source="coordinator schema")
        else:
            raw = self._load_frame(None, tuple(job["missing_markers"]))
            schema = infer_schema(raw, missing_markers=tuple(job["missing_markers"]))
        return {"schema": schema.to_dict()}

    # -- phase 2: encoding statistics ------------------------------------------------------------------
    def _encode(self, body: dict, state: dict) -> dict:
        from fedtab.federation import encoding

        state["schema"] = TableSchema.from_dict(body["schema"]).to_json()
        train, _ = self._frames(state)
        ledger = self._ledger_of(state)
        plan = encoding.plan_from_dict(body["plan"])
        rng = np.random.default_rng(site_seed(state["job"]["seed"], self.name, 2, len(ledger.entries)))
        reply = encoding.site_statistics(train, plan, body["phase"], body["request"], ledger=ledger, rng=rng)
        state["ledger"] = ledger.to_dict()
        return reply

    # -- phase 3: training --------------------------------------------------------------------------
    def _setup(self, body: dict, state: dict) -> dict:
        from fedtab.federation import training

        train, _ = self._frames(state)
        ledger = self._ledger_of(state)
        plan = training.site_training_plan(body, n_rows=len(train), ledger=ledger)
        state["training"] = {**body, **plan}
        return {"noise_multiplier": plan["noise_multiplier"], "steps_per_round": plan["steps_per_round"]}

    def _train(self, body: dict, state: dict) -> dict:
        from fedtab.federation import training

        train, _ = self._frames(state)
        ledger = self._ledger_of(state)
        setup = state["training"]
        key = "encoded:" + setup["transformer_hash"]
        if key not in self._cache:
            self._cache[key] = training.encode_rows(setup, train)
        reply = training.train_one_round(
            setup, self._cache[key], body["weights"], round_index=int(body["round"]), ledger=ledger,
            seed=site_seed(state["job"]["seed"], self.name, 3, int(body["round"])), site=self.name,
        )
        state["ledger"] = ledger.to_dict()
        return reply

    def _ledger(self, body: dict, state: dict) -> dict:
        return {"ledger": state["ledger"]}

    # -- evaluation ---------------------------------------------------------------------------------
    def _evaluate(self, body: dict, state: dict) -> dict:
        from fedtab.federation import site_evaluation

        # Self-contained: a fresh transport (e.g. `fedtab evaluate` on a saved model) carries the job
        # and schema again, so the site sets the same holdout rows aside as during training.
        state["job"] = body["job"]
        state["schema"] = TableSchema.from_dict(body["schema"]).to_json()
        train, holdout = self._frames(state)
        schema = TableSchema.from_json(state["schema"])
        return site_evaluation.evaluate_at_site(body, train=train, holdout=holdout, schema=schema,
                                                seed=site_seed(state["job"]["seed"], self.name, 4), site=self.name)

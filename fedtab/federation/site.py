"""What a site does with each coordinator request. The same code serves every transport.

A site never sends rows. Under DP it sends: whether its table conforms to the consortium's declared
schema (and which columns do not), noised encoding statistics, and model weights after local
DP-SGD (evaluation: see ``site_evaluation``). Every data-dependent release is first checked against
the site's own rules (``SitePolicy``) and recorded in its lasting ledger (``LedgerBook``: every job
it ever served, on its own disk when it has a directory) before it leaves. Its noise comes from the
secret source (``fedtab.privacy.secret``), never from the job seed. The site plans its training from
a DP estimate of its row count, read off its own noisy histograms: no exact count leaves it.

Requests (``kind``): ``schema`` -> ``encode`` (one per encoding phase) -> ``setup`` -> ``train``
(one per round) -> ``ledger`` (the job ends; the site records the final model's identity);
``evaluate`` draws a table from that model, scores it against the site's own rows and sends back the
site's verdict on each check of the release policy (``site_evaluation``).
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from fedtab.errors import ConfigError, DataValidationError, FederationError, PrivacyBudgetError, Problem
from fedtab.privacy.book import LedgerBook, SitePolicy, job_key
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.privacy.secret import secret_source
from fedtab.schema import TableSchema

# Request kinds (wire constants).
SCHEMA, ENCODE, SETUP, TRAIN, LEDGER, EVALUATE = "schema", "encode", "setup", "train", "ledger", "evaluate"
MEASURE = "measure"  # the marginal-based model's noisy counts (fedtab.federation.marginals)
MIN_SITE_ROWS = 10  # below it a site has no holdout rows (``split_holdout``) and cannot be evaluated
# In every reply that releases something (``encode``, ``train``, a ``measure`` that counts): the job's
# ledger as the site's lasting book holds it once that release is recorded (``PrivacyLedger.to_dict``,
# what the ``ledger`` reply sends: public DP accounting, no count). The coordinator keeps the last one
# seen per site: the model file holds it for a site that dies before the job ends.
JOB_LEDGER = "job_ledger"


def _public(error: DataValidationError) -> DataValidationError:
    """The error's message may go to the coordinator: it names columns and rules, never a value."""
    error.public = True
    return error


def _all_missing(column: pd.Series, markers: tuple[str, ...]) -> bool:
    values = column.dropna()
    if values.dtype == object:
        values = values[~values.astype(str).str.strip().isin(("", *markers))]
    return values.empty


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
    otherwise raw; see ``fedtab.validation``). ``policy`` holds the site's own rules (per-job and
    total epsilon, delta, whether it serves non-DP jobs); ``book`` is its lasting ledger (default: kept
    in the transport's state for this site, ``state["book"]``, so it lasts as long as that state).
    ``report_dir``: where it writes the full report of each evaluation (every figure against its rows,
    for its data protection officer); the coordinator receives only its verdicts.
    """

    def __init__(self, name: str, load_frame: Callable[[TableSchema | None, tuple[str, ...]], pd.DataFrame], *,
                 policy: SitePolicy | None = None, book: LedgerBook | None = None, report_dir=None):
        self.name = name
        self.report_dir = report_dir  # where the site writes its own evaluation reports (None: none)
        self.last_evaluation = None
        self._load_frame = load_frame
        self.policy = policy if policy is not None else SitePolicy()
        self._book = book
        self._cache: dict[str, Any] = {}

    def book(self, state: dict) -> LedgerBook:
        """The site's lasting ledger: on its disk when it has one, else in the transport's state."""
        if self._book is not None:
            return self._book
        return LedgerBook(self.name, records=state.setdefault("book", []))

    # -- dispatch ------------------------------------------------------------------------------------
    def __call__(self, kind: str, body: dict, state: dict) -> dict:
        handler = {SCHEMA: self._schema, ENCODE: self._encode, SETUP: self._setup, TRAIN: self._train,
                   LEDGER: self._ledger, EVALUATE: self._evaluate, MEASURE: self._measure}.get(kind)
        if handler is None:
            raise FederationError(f"site '{self.name}' does not know the request '{kind}'", public=True)
        reply = handler(body, state)
        if isinstance(reply, dict) and "job_key" in state and self._releases(kind, body):
            reply = {**reply, JOB_LEDGER: self._ledger_of(state).to_dict()}
        return reply

    @staticmethod
    def _releases(kind: str, body: dict) -> bool:
        """Whether a ``kind`` request spends (its reply then carries ``JOB_LEDGER``): the encoding, a
        training round, a measurement (not the secure-aggregation rounds of keys and shares)."""
        if kind == MEASURE:
            from fedtab.federation.marginals import SECURE_ROUNDS

            return body.get("phase") not in SECURE_ROUNDS
        return kind in (ENCODE, TRAIN)

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
            raw = self._with_site_column(self._raw(schema.without(job.get("site_column")), job), job)
            typed = validate_table(raw, schema, source=f"site '{self.name}'")
            self._cache[key] = split_holdout(typed, fraction=job["holdout"], seed=site_seed(job["seed"], self.name, 1))
        return self._cache[key]

    def _raw(self, schema: TableSchema, job: dict) -> pd.DataFrame:
        """The site's own table read per ``schema`` (the declared one, without the job's site column):
        read once for schema agreement and the training and holdout rows that follow."""
        markers = tuple(job["missing_markers"])
        key = "raw:" + hashlib.sha256((schema.to_json() + "\0" + "\0".join(markers)).encode()).hexdigest()
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if not k.startswith("raw:")}  # one table kept
            self._cache[key] = self._load_frame(schema, markers)
        return self._cache[key]

    def _with_site_column(self, raw: pd.DataFrame, job: dict) -> pd.DataFrame:
        """The site's rows with the job's site column added: this site's name on every row."""
        column = job.get("site_column")
        if column is None:
            return raw
        if column in raw.columns:
            raise ConfigError(f"site '{self.name}': the table already has a column '{column}', the job's "
                              "'site_column'; choose a site column name that no site's table uses.",
                              public=True, columns=(column,))
        return raw.assign(**{column: self.name})

    def _ledger_of(self, state: dict) -> PrivacyLedger:
        """This job's ledger, as the lasting book holds it."""
        return self.book(state).ledger(state["job_key"])

    @contextlib.contextmanager
    def _spending(self, state: dict):
        """The job's ledger for a handler that releases; whatever it recorded is appended to the
        lasting book (fsync-ed when on disk) before the handler's reply can leave the site."""
        ledger = self._ledger_of(state)
        try:
            yield ledger
        finally:
            self.book(state).record(state["job_key"], ledger)

    # -- phase 1: schema ---------------------------------------------------------------------------
    def _schema(self, body: dict, state: dict) -> dict:
        job = body["job"]
        epsilon = job["epsilon"]
        key = job_key(job)
        # The site's rules come first: a refused job gets nothing, not even a conformance answer.
        book = self.book(state)
        # What the coordinator says will leave in the clear is read by the rules, not part of the job's key;
        # a coordinator that leaves it out meets the refusal at its first clear request (``_only_masked``).
        public = {**job, "in_the_clear": [str(x) for x in body.get("in_the_clear") or []]}
        book.admit(key, epsilon=epsilon, delta=job["delta"], policy=self.policy, job=public)
        kept = state.get("book")
        state.clear()  # a new job (or the same one again) starts from its schema; the book stays
        state.update(job=job, job_key=key, **({"book": kept} if kept is not None else {}))
        declared = body.get("schema")
        if declared is None:
            if epsilon is not None:
                raise ConfigError(
                    "under DP a site does not infer a schema for the coordinator (what it would send, types "
                    "and precision, can turn on one record); declare the consortium's schema: run 'fedtab "
                    "schema infer' at a site, review it, and give it to the job ('schema')", public=True)
            from fedtab.inference import infer_schema

            raw = self._load_frame(None, tuple(job["missing_markers"]))
            self._check_rows(raw)
            self._check_inferable(raw, tuple(job["missing_markers"]))
            if "fedtab_schema" in raw.attrs:  # a source read with the schema inferred from its own form
                return {"schema": raw.attrs["fedtab_schema"]}
            return {"schema": infer_schema(raw, missing_markers=tuple(job["missing_markers"])).to_dict()}
        schema = TableSchema.from_dict(declared, source="coordinator schema")
        if epsilon is None:
            self._check_rows(self._raw(schema.without(job.get("site_column")), job))
            return {"schema": schema.to_dict()}
        return {"columns": self._nonconforming(schema, job)}

    def _check_rows(self, raw: pd.DataFrame) -> None:
        """A site takes part only with at least ``MIN_SITE_ROWS`` rows (its holdout and evaluation need
        them), checked in schema agreement, before any release. The coordinator learns only that the
        table is too small, as it learns that a table does not conform (the rule's one bit); the
        count itself stays in the site's log."""
        if len(raw) >= MIN_SITE_ROWS:
            return
        from fedtab.federation.transport import SITE_LOG

        SITE_LOG.error("site %s: its table has %d row(s); a site needs at least %d", self.name, len(raw), MIN_SITE_ROWS)
        raise _public(DataValidationError("its table", [Problem(
            None, f"too few rows to take part: a site needs at least {MIN_SITE_ROWS} (its holdout rows and its "
                  "evaluation use them); the site's operator has the count in the site's log")]))

    def _check_inferable(self, raw: pd.DataFrame, markers: tuple[str, ...]) -> None:
        """Without a declared schema the sites infer theirs: a column holding only missing values at a site
        has no type to infer (it would be reported as a type disagreement); say so, by column name."""
        empty = [str(c) for c in raw.columns if _all_missing(raw[c], markers)]
        if empty:
            raise _public(DataValidationError("its table", [Problem(
                c, "holds only missing values, so no type can be inferred from it; declare the column's type in "
                   "a shared schema ('schema' in the run configuration) or leave the column out") for c in empty]))

    def _nonconforming(self, schema: TableSchema, job: dict) -> list[str]:
        """The columns in which this site's table does not conform to ``schema`` (names only; the
        problems, with values and rows, go to the site's own log)."""
        from fedtab.federation.transport import SITE_LOG
        from fedtab.validation import validate_table

        full = schema
        if job.get("site_column") is not None and job["site_column"] not in schema.names:
            from fedtab.federation.coordinator import with_site_column

            full = with_site_column(schema, job["site_column"], [self.name])
        self._check_rows(self._raw(full.without(job.get("site_column")), job))
        try:
            raw = self._with_site_column(self._raw(full.without(job.get("site_column")), job), job)
            validate_table(raw, full, source=f"site '{self.name}'")
        except DataValidationError as e:
            SITE_LOG.error("site %s: %s", self.name, e)
            return sorted(set(e.columns)) or ["(table)"]
        return []

    # -- phase 2: encoding statistics ------------------------------------------------------------------
    def _encode(self, body: dict, state: dict) -> dict:
        from fedtab.federation import encoding, secure_encoding

        if body.get("phase") in (secure_encoding.SCREEN, secure_encoding.OPEN):  # on its own release: nothing spent
            from fedtab.federation.marginals import site_session

            answer = {secure_encoding.SCREEN: secure_encoding.screen_reply,
                      secure_encoding.OPEN: secure_encoding.open_reply}[body["phase"]]
            return answer(self.name, body, state, site_session(self.name, state, self._cache))
        self._only_masked(body, "its encoding statistics")
        state["schema"] = TableSchema.from_dict(body["schema"]).to_json()
        train, _ = self._frames(state)
        plan = encoding.plan_from_dict(body["plan"])
        with self._spending(state) as ledger:
            if plan.dp is not None and not state.get("rows_checked"):
                # The delta rule needs the row count: a DP estimate of it, spent on the ledger, that
                # never leaves the site (only a refusal does, which is a function of the estimate).
                rows = encoding.private_row_count(len(train), plan, ledger=ledger,
                                                  noise=secret_source(f"{self.name}/rows"))
                SitePolicy.check_delta_for_rows(self.name, plan.dp.delta, rows, plan.noise_multiplier)
                state["rows_checked"] = True
            secure = body.get("secagg")
            session = None
            if secure is not None:  # masked for secure aggregation: the two-way tables at this site's noise
                # share, the histograms at its full noise (``secure_encoding``)
                from fedtab.federation.marginals import site_session

                session = site_session(self.name, state, self._cache)
                session.check_request(self.name, secure.get("request"), secure.get("sites") or [])
            reply = encoding.site_statistics(train, plan, body["phase"], body["request"], ledger=ledger,
                                             noise=secret_source(f"{self.name}/encode/{body['phase']}"),
                                             secure_share=None if session is None or body["phase"] != encoding.PHASE_PAIRS
                                             else session.threshold)
        if body["phase"] == encoding.PHASE_HISTOGRAM:
            # The site's row estimate for its training plan and its update's weight: post-processing of its
            # own histogram release (exact without DP), which the coordinator reads too, or only summed.
            state["rows_estimate"] = encoding.site_rows(plan, reply)
            if session is not None:
                return secure_encoding.masked_release(self.name, reply, state, session, secure, plan=body["plan"])
        if session is not None and body["phase"] == encoding.PHASE_DOMAIN:  # numerical columns' magnitude counts
            return secure_encoding.masked_domain(self.name, reply, session, secure)
        if session is not None:  # the two-way tables
            return secure_encoding.masked(self.name, reply, sorted(k for k in reply if k != encoding.KEY_PHASE),
                                          session, secure)
        return reply

    # -- phase 3: training --------------------------------------------------------------------------
    def _setup(self, body: dict, state: dict) -> dict:
        from fedtab.federation import training

        train, _ = self._frames(state)
        ledger = self._ledger_of(state)
        rows = float(len(train)) if not ledger.is_dp else float(state["rows_estimate"])
        # With the coordinator's public plan_rows (histograms summed securely) the reply is the same at
        # every site: nothing in it follows from this site's size (``training.site_training_plan``).
        plan = training.site_training_plan(body, n_rows=rows, ledger=ledger)
        state["training"] = {**body, **plan}
        return {"noise_multiplier": plan["noise_multiplier"], "steps_per_round": plan["steps_per_round"]}

    def _train(self, body: dict, state: dict) -> dict:
        from fedtab.federation import training

        if body.get("show"):  # the round's secure sum failed its screen: its mask key of it, if the job allows
            from fedtab.federation import secure_updates
            from fedtab.federation.marginals import site_session

            return secure_updates.revealed(self.name, body, state, site_session(self.name, state, self._cache))
        self._only_masked(body, "its model update")
        train, _ = self._frames(state)
        setup = state["training"]
        key = "encoded:" + setup["transformer_hash"]
        if key not in self._cache:
            self._cache[key] = training.encode_rows(setup, train)
        session = None
        if body.get("secagg") is not None:  # secure aggregation: refused before the round spends anything
            from fedtab.federation import secure_updates
            from fedtab.federation.marginals import site_session

            session = site_session(self.name, state, self._cache)
            secure_updates.check(self.name, body, session)
            kept = secure_updates.recorded(body, state)
            if kept is not None:  # this round, trained on these weights already (a resumed coordinator's fresh keys)
                return secure_updates.masked_reply(self.name, body, kept, state, session)
        with self._spending(state) as ledger:
            reply = training.train_one_round(
                setup, self._cache[key], body["weights"], round_index=int(body["round"]), ledger=ledger,
                seed=site_seed(state["job"]["seed"], self.name, 3, int(body["round"])), site=self.name,
            )
        from fedtab.federation import secure_updates

        secure_updates.keep(body, reply, state)
        if session is not None:  # only the masked, row-weighted change leaves: the coordinator reads the sum
            return secure_updates.masked_reply(self.name, body, reply, state, session)
        return reply

    def _measure(self, body: dict, state: dict) -> dict:
        from fedtab.federation import marginals

        if body.get("phase") in marginals.SECURE_ROUNDS:  # keys and shares: nothing read from the rows, nothing spent
            return marginals.secure_round(self.name, body["phase"], body.get("secagg") or {}, state, self._cache)
        self._only_masked(body, "its marginal counts")
        train, _ = self._frames(state)
        with self._spending(state) as ledger:
            return marginals.site_measure(self.name, body, state, train=train, ledger=ledger, cache=self._cache)

    def _only_masked(self, body: dict, what: str) -> None:
        """The site's rule ``require_secure_aggregation``: a request for counts or an update in the clear
        is refused before anything is computed or spent for it."""
        if self.policy.require_secure_aggregation and body.get("secagg") is None:
            raise PrivacyBudgetError(
                f"site '{self.name}' refuses to send {what} in the clear (rule require_secure_aggregation: only "
                "masked, for a secure sum). Nothing was released for this request.", public=True)

    def _ledger(self, body: dict, state: dict) -> dict:
        from fedtab.modelfile import model_digest

        ledger = self._ledger_of(state)
        book = self.book(state)
        if "weights" in body:  # the final model: the only one this site will evaluate for the job
            sites = [str(s) for s in body["sites"]]
            setup = state.get("training")
            if setup is None or self.name not in sites:
                raise FederationError(f"site '{self.name}' did not train this job's final model", public=True)
            book.record_model(state["job_key"], model_digest(setup["model"], setup["model_options"],
                                                             setup["transformer_hash"], body["weights"], sites), sites)
        book.close(state["job_key"])
        return {"ledger": ledger.to_dict()}

    # -- evaluation ---------------------------------------------------------------------------------
    def _evaluate(self, body: dict, state: dict) -> dict:
        """Evaluate a table the site draws itself from the job's final model, decide every check of the
        release policy at home, keep the figures here (``report_dir``), send back the verdicts only."""
        from fedtab.federation import site_evaluation

        job = body["job"]
        key = job_key(job)
        book = self.book(state)
        model = site_evaluation.verified_model(self.name, body, book.model_of(key) if book.admitted(key) else None)
        sampling = site_evaluation.check_sampling(self.name, body.get("sampling"))
        number = book.record_evaluation(key, self.policy, model=model.digest, sampling=sampling)
        # The holdout rows are the ones set aside in training: same job, same seeded split.
        state.update(job=job, job_key=key, schema=model.synthesizer.schema_.to_json())
        train, holdout = self._frames(state)
        ledger = book.ledger(key)
        outcome = site_evaluation.evaluate_model(
            self.name, model, sampling, train=train, holdout=holdout, target=body.get("target"),
            coordinator_policy=body.get("policy"), own_policy=self.policy.release_policy,
            ledger=ledger, seed=site_seed(job["seed"], self.name, 4))
        book.record_verdict(key, model.digest, checks=outcome.checks, privacy_passed=outcome.privacy_passed)
        self.last_evaluation = outcome  # the site's own figures (its operator's; a simulation reads them)
        if self.report_dir is not None:
            outcome.write_local_report(self.report_dir, stem=f"evaluation-{key[:12]}-{number}",
                                       ledger=ledger.to_dict())
        return outcome.reply(number=number, of=self.policy.max_evaluations)

"""The coordinator: runs the phases over any transport and returns the global model.

schema agreement -> federated encoding (one request per encoding phase) -> training setup (each site
calibrates its DP-SGD noise to what is left of its budget) -> rounds of local training and
row-weighted FedAvg -> final ledgers. The coordinator holds no rows, only what sites released.

Fault tolerance (deployments): on a transport with ``request_available`` (Flower), a training round
averages over the sites that answered; a site that missed a round is left out of later rounds, and
the run stops with a ``FederationError`` once fewer than ``training.min_sites`` (default: all) remain.
``on_round`` receives a ``TrainingState`` after every round (the deployment checkpoints it) and
``resume`` continues from one, skipping the phases it already holds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedtab.config import PrivacySettings, TrainingSettings
from fedtab.errors import ConfigError, DataValidationError, FederationError, Problem, ReadUnderDPWarning
from fedtab.federation import encoding, secure_encoding
from fedtab.federation.agreement import agree_schemas, leave_out, name_sites
from fedtab.federation.aggregation import screen_update, trimmed_average
from fedtab.federation.site import ENCODE, JOB_LEDGER, LEDGER, MEASURE, SCHEMA, SETUP, TRAIN
from fedtab.federation.transport import ERROR_KEY, Transport, broadcast, request_outcomes
from fedtab.models.registry import is_measured
from fedtab.schema import TableSchema
from fedtab.transform.plan import KEY_N_SITES

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
    target: str | None = None  # its two-way tables with the other columns are released (calibration)
    site_column: str | None = None  # a column naming each row's site, added at the sites (see with_site_column)
    # One run's name (random, public; ``FederatedSynthesizer.fit`` draws one): a site keeps one ledger per
    # run, so training the same configuration again is a new job on its book (counted in its total).
    job_id: str = ""
    # The consortium's declared upper bounds on sites' rows (public; the coordinator's check only, never
    # sent to a site): ``fedtab.federation.screening`` (declared site sizes).
    site_rows_at_most: dict = field(default_factory=dict)

    @property
    def shows_updates_on_failed_sum(self) -> bool:
        """Whether a DP-SGD round whose secure sum fails asks the sites for the keys that open their updates
        (``training.on_failed_sum``): only where the updates are summed (a DP-SGD model, the mean, secure
        aggregation on)."""
        from fedtab.federation.secure_updates import secure_updates

        return self.training.on_failed_sum == "screen_each" and secure_updates(self, n_sites=2)

    @property
    def opens_histograms_over_declared_sizes(self) -> bool:
        """Whether a secure sum of the encoding's histograms that counts more rows than the consortium's
        declared site sizes (``site_rows_at_most``) is opened site by site, once proven to each site, to name
        the site over its declaration (``training.on_failed_sum = "screen_each"``); otherwise it stops."""
        from fedtab.federation.secure_updates import secure_updates

        return bool(self.training.on_failed_sum == "screen_each" and self.site_rows_at_most
                    and self.privacy.secure_aggregation
                    and secure_encoding.summed_histograms(self, updates=secure_updates(self, n_sites=2)))

    def releases_in_the_clear(self) -> list[str]:
        """What this job sends the coordinator in the clear although secure aggregation is on (public, from
        the job alone; with it off, every release is): told to the sites with the schema request, so that a
        site requiring secure aggregation refuses the job before it spends anything on it. Empty: every
        count and update is masked (two sites or more; ``secure_encoding.summed_histograms`` and
        ``summed_domain`` decide the same from the plan)."""
        from fedtab.transform.plan import EncodingPlan

        if not self.privacy.secure_aggregation:
            return []
        out = []
        if not is_measured(self.model) and self.training.aggregation != "mean":
            out.append(f"each site's model update and encoding histograms (training.aggregation = "
                       f"\"{self.training.aggregation}\")")
        if self.site_column is not None:
            out.append("each site's encoding histograms (a site column: each site's own marginals)")
        if self.schema is None:
            out.append("the schema each site infers and the values it holds (no declared schema)")
        else:
            domain = [c for c in self.schema.columns if EncodingPlan.needs_domain(c)]
            if domain and (not self.privacy.enabled or any(c.type == "categorical" for c in domain)):
                names = ", ".join(repr(c.name) for c in domain)
                out.append(f"the values each site holds of the columns declared without categories or bounds ({names})")
        return out

    def site_job(self) -> dict:
        job = {"seed": self.seed, "holdout": self.holdout, "missing_markers": list(self.missing_markers),
               "epsilon": self.privacy.epsilon, "delta": self.privacy.delta, "site_column": self.site_column}
        if self.shows_updates_on_failed_sum:  # public in the job: no site shows an update otherwise
            job["show_update_on_failed_sum"] = True
        if self.opens_histograms_over_declared_sizes:  # the declarations too: each site checks the sum itself
            job["show_histograms_over_declared_sizes"] = True
            job["rows_at_most"] = {str(k): int(v) for k, v in sorted(self.site_rows_at_most.items())}
        if not self.privacy.secure_aggregation:  # a site that requires it refuses the job at admission
            job["secure_aggregation"] = False
        return {**job, "job_id": self.job_id} if self.job_id else job


@dataclass(frozen=True)
class RoundRecord:
    round: int
    losses: dict[str, float]
    epsilon: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class TrainingState:
    """Everything the coordinator needs to continue training after ``rounds_done`` rounds."""

    schema: TableSchema
    encoding: dict
    site_weights: dict[str, float]
    noise_multipliers: dict[str, float]
    weights: dict[str, np.ndarray]
    history: tuple[RoundRecord, ...]
    active_sites: tuple[str, ...]
    rounds_done: int
    # Per site, the last ledger its releasing replies carried (``LedgerWatch``): kept for ``_finish``.
    seen_ledgers: dict[str, dict] = field(default_factory=dict)
    # False where the encoding's histograms were summed securely: ``site_weights`` are equal shares of
    # the consortium's row estimate (``fedtab.federation.secure_encoding``).
    site_rows_known: bool = True


@dataclass(frozen=True)
class FederationResult:
    schema: TableSchema
    encoding: dict  # TableTransformer.to_dict()
    weights: dict[str, np.ndarray]
    ledgers: dict[str, dict]
    history: tuple[RoundRecord, ...]
    site_weights: dict[str, float]
    noise_multipliers: dict[str, float]
    # The sites in ``ledgers`` that did not answer the job's end: theirs is the last ledger seen before
    # the site dropped out (it covers every release of theirs in the model), not the site's final one.
    ledgers_last_seen: tuple[str, ...] = ()
    # False where the encoding's histograms were summed securely: ``site_weights`` are equal shares.
    site_rows_known: bool = True


class LedgerWatch:
    """A transport that keeps, per site, the last ``JOB_LEDGER`` its replies carried and takes it out of
    the reply (no phase sees the extra key: shape checks and merges stay as they were).

    A site that dies mid-run never answers the job's ``ledger`` request; the model file then holds this
    ledger for it. It covers every release whose reply reached the coordinator (each releasing reply
    carries the ledger with that release recorded). A release the site recorded but whose reply never
    arrived is not in the model and not in this ledger: it is only in the site's own lasting ledger.
    Ledgers only grow, so the longest one seen is kept (a replayed reply carries an older one)."""

    def __init__(self, transport: Transport, seen: dict[str, dict] | None = None):
        self._transport = transport
        self.seen: dict[str, dict] = dict(seen or {})

    @property
    def sites(self) -> list[str]:
        return self._transport.sites

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._transport, name)
        if name not in ("request", "request_available", "outcomes"):
            return attr

        def call(kind: str, bodies, *args, **kwargs):
            return self._take(attr(kind, bodies, *args, **kwargs))
        return call

    def _take(self, replies: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for site, reply in replies.items():
            if isinstance(reply, dict) and JOB_LEDGER in reply and ERROR_KEY not in reply:
                reply = dict(reply)
                ledger = reply.pop(JOB_LEDGER)
                if len(ledger.get("entries", ())) >= len(self.seen.get(site, {}).get("entries", ())):
                    self.seen[site] = ledger
            out[site] = reply
        return out


def _notify(progress: Progress | None, event: str, **info: Any) -> None:
    if progress is not None:
        progress(event, info)


def run_federation(transport: Transport, job: JobSpec, *, progress: Progress | None = None,
                   resume: TrainingState | None = None,
                   on_round: Callable[[TrainingState], None] | None = None) -> FederationResult:
    transport = LedgerWatch(transport, None if resume is None else resume.seen_ledgers)
    if is_measured(job.model):  # the marginal-based model: measurements, not rounds of DP-SGD
        return _fit_marginals(transport, job, progress)
    box: dict = {}  # the secure-aggregation rounds the encoding started, if any
    state = resume if resume is not None else _prepare(transport, job, progress, secure_box=box)
    if resume is not None:
        _notify(progress, "phase", name="resumed", rounds_done=resume.rounds_done, sites=list(resume.active_sites))
    rounds = _training_rounds(transport, job, state, box.get("rounds"), progress)
    _notify(progress, "phase", name="training", rounds=job.training.rounds, noise_multipliers=state.noise_multipliers)
    min_sites = job.training.min_sites or len(state.site_weights)
    bounds: dict[str, dict[str, float]] = {}  # per site: how far a round can move each parameter
    for r in range(state.rounds_done, job.training.rounds):
        t0 = time.perf_counter()
        body = {"round": r, "weights": state.weights}
        if rounds is not None:  # the coordinator reads the round's sum only (fedtab.federation.secure_updates)
            weights, replies, losses = _secure_round(transport, job, state, rounds, body, round_index=r,
                                                     bounds=bounds, min_sites=min_sites, progress=progress)
            order = sorted(replies)
        else:
            weights, replies, order = _plain_round(transport, job, state, body, round_index=r, min_sites=min_sites,
                                                   bounds=bounds, progress=progress)
            losses = _mean_losses(replies, order, state)
        eps = {s: float(replies[s]["epsilon"]) for s in order}
        record = RoundRecord(round=r + 1, losses=losses, epsilon=eps, seconds=time.perf_counter() - t0)
        state = replace(state, weights=weights, history=state.history + (record,), active_sites=tuple(order),
                        rounds_done=r + 1, seen_ledgers=dict(transport.seen))
        if on_round is not None:
            on_round(state)
        _notify(progress, "round", round=r + 1, rounds=job.training.rounds, losses=losses, epsilon=eps)

    return _finish(transport, state)


def _plain_round(transport: Transport, job: JobSpec, state: TrainingState, body: dict, *, round_index: int,
                 min_sites: int, bounds: dict[str, dict[str, float]], progress: Progress | None,
                 sites: list[str] | None = None):
    """One round in which every site (of ``sites``, default the active ones) sends its updated weights:
    screened one by one and averaged (``aggregate``). Returns (the new global weights, the replies, the
    sites averaged)."""
    r = round_index
    asked = list(state.active_sites) if sites is None else list(sites)
    replies = _train_round(transport, body, asked)
    order = sorted(replies)  # fixed order: identical sums on every transport
    _enough_answered(order, asked, round_index=r, min_sites=min_sites)
    order = _screened(job, state, replies, order, round_index=r, min_sites=min_sites, bounds=bounds,
                      progress=progress)
    weights = aggregate(job.training.aggregation, [replies[s]["weights"] for s in order],
                        [state.site_weights[s] for s in order])
    return weights, replies, order


def _mean_losses(replies: dict[str, Any], order: list[str], state: TrainingState) -> dict[str, float]:
    """The round's losses, row-weighted as a secure round reads them from its sum: one meaning for the
    history's losses whatever the aggregation."""
    return {k: float(np.average([replies[s]["losses"][k] for s in order],
                                weights=[max(float(state.site_weights[s]), 1e-12) for s in order]))
            for k in replies[order[0]]["losses"]}


def _enough_answered(order: list[str], asked: list[str], *, round_index: int, min_sites: int) -> None:
    if len(order) < min_sites:
        missing = sorted(set(asked) - set(order))
        raise FederationError(
            f"round {round_index + 1}: only {len(order)} site(s) answered (no reply from {name_sites(missing)}) "
            f"but 'training.min_sites' is {min_sites}. Restart the missing sites and run the coordinator "
            "again with --resume: it continues from the last checkpoint.")


def _training_rounds(transport: Transport, job: JobSpec, state: TrainingState, rounds, progress: Progress | None):
    """The secure-aggregation rounds that sum the training updates (``secure_updates``), or None: the
    encoding's (keys drawn with one request per training round) or, on resume, fresh keys for the rounds
    left. The trimmed mean needs each site's update: the coordinator says once that it sees them."""
    from fedtab.federation import marginals, secure_updates

    sites = list(state.active_sites)
    if not secure_updates.secure_updates(job, len(sites)):
        if marginals.uses_secure_aggregation(job, len(sites)) and job.training.aggregation != "mean":
            _notify(progress, "phase", name=secure_updates.TRIMMED_NOTE)
        return None
    left = secure_updates.planned_requests(job, state.rounds_done)
    if rounds is not None and rounds.planned - rounds.request >= left:
        return rounds
    return marginals.SecureRounds(_measure_ask(transport, sites), len(sites), job, progress, requests=max(left, 1),
                                  label="training", fresh=True)


def _secure_round(transport: Transport, job: JobSpec, state: TrainingState, rounds, body: dict, *, round_index: int,
                  bounds: dict[str, dict[str, float]], min_sites: int, progress: Progress | None = None):
    """One round summed securely: (the new global weights, the survivors' replies). A site that answers
    that it cannot send its update (``UnusableUpdateError``: not finite, too large to encode) is named and
    left out like a site whose update fails the screen (``_screened``); its masks leave the sum as a
    lost site's do, and it takes part in no later round."""
    from fedtab.errors import UnusableUpdateError
    from fedtab.federation import secure_updates

    def ask_train(b, only):
        outcomes = _available(transport, TRAIN, {s: b for s in only}, errors=True)
        unusable = {s: "its update cannot be sent (a value not finite or too large to encode)"
                    for s, o in outcomes.items() if isinstance(o, UnusableUpdateError)}
        for s, o in sorted(outcomes.items()):
            if isinstance(o, Exception) and s not in unusable:
                raise o  # the job's trouble (a refused budget, a bad request): stop
        replies = {s: o for s, o in outcomes.items() if not isinstance(o, Exception)}
        leave_out(unusable, going_on=len(replies), of=len(only), min_sites=min_sites,
                  where=f"round {round_index + 1}", progress=progress)
        _enough_answered(sorted(replies), [s for s in only if s not in unusable], round_index=round_index,
                         min_sites=min_sites)
        return replies

    _site_bounds(job, state, rounds.alive, bounds)
    try:
        return secure_updates.train_round(ask_train, rounds, body, state, bounds=bounds, round_index=round_index)
    except secure_updates.SumFailed as failed:
        if not job.shows_updates_on_failed_sum:
            raise
        return _opened_round(transport, job, state, rounds, body, failed, round_index=round_index, bounds=bounds,
                             min_sites=min_sites, progress=progress)


def _opened_round(transport: Transport, job: JobSpec, state: TrainingState, rounds, body: dict, failed, *,
                  round_index: int, bounds: dict[str, dict[str, float]], min_sites: int, progress: Progress | None):
    """A round whose secure sum failed its screen, under ``training.on_failed_sum = "screen_each"``: the
    sites in the sum reveal their mask key of the round (``secure_updates.revealed``), with which the
    coordinator opens each site's masked update, the very one in the sum (a site cannot show another), and
    screens them one by one as a plain round does (``aggregation.screen_update``). A site whose update fails,
    or whose update cannot be opened, is named and left out of this and every later round (the later rounds
    are summed again); the round's mean is the others' sum over their weights, as a secure round's."""
    from fedtab.federation import secure_updates, training
    from fedtab.transform.table import TableTransformer

    asked = sorted(failed.replies)
    setup = training.setup_body(job, TableTransformer.from_dict(state.encoding), plan_rows=_plan_rows(state))
    entry = secure_updates.failing_entry(failed, state.weights, setup)
    if entry is None:  # within the bound a site can check: the sites would refuse their keys
        raise FederationError(
            f"round {round_index + 1}: {failed.why}; no entry of the sum is beyond the bound each site can check "
            "itself (a round of one site holding all the summed rows), so the failure cannot be proven to the "
            "sites and no update can be opened (training.on_failed_sum): the run stops. 'training.aggregation = "
            "\"trimmed_mean\"' screens each site's update every round.")
    _notify(progress, "phase", name=f"round {round_index + 1}: the secure sum failed its screen ({failed.why}); as "
                                    f"the job allows (training.on_failed_sum = \"screen_each\"), the {len(asked)} "
                                    "sites in it check the failure, reveal this round's mask keys, and each site's "
                                    "update in the sum is screened")
    entries = [entry, secure_updates.layout(state.weights)[1][-1]]
    bodies = {s: {**body, "show": True, "proof": {"entry": entry, **rounds.prove_last(s, entries)}} for s in asked}
    # A site that keeps its key is opened all the same where every other site revealed theirs (and then
    # screened); otherwise it is named as one that cannot be opened. No key at all: the sites' refusal stops.
    opened, rejected = rounds.open_revealed(_available(transport, TRAIN, bodies, errors=True))
    names = sorted(state.weights)
    _site_bounds(job, state, asked, bounds)
    for s in sorted(opened):
        new = secure_updates.opened_update(opened[s], names, state.weights)
        why = new if isinstance(new, str) else screen_update(new, state.weights, bounds=bounds[s])
        if why is not None:
            rejected[s] = f"its update cannot be averaged: {why}"
    dropped = leave_out(rejected, going_on=len(asked) - len(rejected), of=len(asked), min_sites=min_sites,
                        where=f"round {round_index + 1}", progress=progress)
    order = [s for s in asked if s not in dropped]
    total = [sum(opened[s][i] for s in order) for i in range(len(names) + 1)]
    weight, losses = secure_updates.read_extra(total[-1])
    rounds.alive = [s for s in rounds.alive if s in order]
    return (secure_updates.mean_of_sum(total[:-1], names, state.weights, weight), {s: failed.replies[s] for s in order},
            losses)


def _site_bounds(job: JobSpec, state: TrainingState, sites, bounds: dict[str, dict[str, float]]) -> None:
    """Fill ``bounds`` with how far a round of each of ``sites`` can move each parameter, once per site and
    run: the bound depends on public settings and the site's DP row estimate."""
    from fedtab.federation import training
    from fedtab.transform.table import TableTransformer

    new = [s for s in sites if s not in bounds]
    if new:
        transformer = TableTransformer.from_dict(state.encoding)
        setup = training.setup_body(job, transformer, plan_rows=_plan_rows(state))
        bounds.update({s: training.update_bounds(setup, transformer, rows=state.site_weights[s]) for s in new})


def _plan_rows(state: TrainingState) -> float | None:
    """The public rows a site that every site plans its training for where the coordinator knows only the
    sites' summed rows (``training.site_training_plan``): the equal share; None where each site's is known."""
    if state.site_rows_known or not state.site_weights:
        return None
    return sum(state.site_weights.values()) / len(state.site_weights)


def aggregate(how: str, updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The round's global model: the row-weighted mean, or (``"trimmed_mean"``) the coordinate-wise mean
    without each value's most extreme site on either side, once there are 4 sites or more (one hostile
    site among four moves no value outside the honest sites' range)."""
    trim = (len(updates) - 1) // 3 if how == "trimmed_mean" else 0
    return trimmed_average(updates, weights, trim=trim)


def _screened(job: JobSpec, state: TrainingState, replies: dict[str, Any], order: list[str], *, round_index: int,
              min_sites: int, bounds: dict[str, dict[str, float]], progress: Progress | None) -> list[str]:
    """The sites whose update can be averaged (``aggregation.screen_update``: the global model's shapes,
    finite values, no parameter moved further than a round of Adam can move it). A site whose update
    fails is named and left out of this and every later round; fewer than ``min_sites`` left stops the run."""
    rejected = {}
    _site_bounds(job, state, order, bounds)
    for s in order:
        why = screen_update(replies[s]["weights"], state.weights, bounds=bounds[s])
        if why is not None:
            rejected[s] = f"its update cannot be averaged: {why}"
    dropped = leave_out(rejected, going_on=len(order) - len(rejected), of=len(order), min_sites=min_sites,
                        where=f"round {round_index + 1}", progress=progress)
    return [s for s in order if s not in dropped]


def _finish(transport: LedgerWatch, state: TrainingState) -> FederationResult:
    """The job ends: each site records the final model's identity (from its own setup, these weights and
    the sites that contributed) and evaluates no other model file for this job afterwards. Every site whose
    releases are in the model is asked, a site left out of later rounds included (its encoding statistics
    and earlier updates are in the model): the model file holds the ledger of each that answers, and for
    a site that does not (it died) the last ledger its replies carried (``LedgerWatch``), named in
    ``ledgers_last_seen``."""
    ledger_sites = sorted(state.site_weights)
    final = {"weights": state.weights, "sites": ledger_sites}
    ledgers = {s: r["ledger"] for s, r in _available(transport, LEDGER, {s: final for s in ledger_sites}).items()}
    last_seen = tuple(s for s in ledger_sites if s not in ledgers and s in transport.seen)
    ledgers.update({s: transport.seen[s] for s in last_seen})
    return FederationResult(schema=state.schema, encoding=state.encoding, weights=state.weights,
                            ledgers={s: ledgers[s] for s in sorted(ledgers)}, history=state.history,
                            site_weights=state.site_weights, noise_multipliers=state.noise_multipliers,
                            ledgers_last_seen=last_seen, site_rows_known=state.site_rows_known)


def _fit_marginals(transport: Transport, job: JobSpec, progress: Progress | None) -> FederationResult:
    """The marginal-based model (``fedtab.federation.marginals``): schema agreement and encoding as for
    every model, then three rounds of noisy marginal counts and Private-PGM at the coordinator."""
    from fedtab.federation import marginals
    from fedtab.transform.table import TableTransformer

    box: dict = {}  # the secure-aggregation rounds the encoding started, if any
    state = _prepare(transport, job, progress, setup=False, secure_box=box)
    transformer = TableTransformer.from_dict(state.encoding)
    sites = list(state.active_sites)  # the sites that took part in schema agreement and the encoding
    weights, noise = marginals.fit(_measure_ask(transport, sites), job, transformer, progress=progress,
                                   site_rows=state.site_weights, n_sites=len(sites), rounds=box.get("rounds"),
                                   rows_known=state.site_rows_known)
    return _finish(transport, replace(state, weights=weights, noise_multipliers=noise))


def _measure_ask(transport: Transport, sites: list[str]):
    """``ask(body, only=None, available=False)`` for ``fedtab.federation.marginals``: a measurement request
    to ``sites`` (or those in ``only``); with ``available``, the replies of the sites that answered."""
    def ask(body, only=None, available=False):
        chosen = list(only) if only is not None else sites
        if available:
            return _available(transport, MEASURE, {s: body for s in chosen})
        return broadcast(transport, MEASURE, body, sites=chosen)

    return ask


def _prepare(transport: Transport, job: JobSpec, progress: Progress | None, *, setup: bool = True,
             secure_box: dict | None = None) -> TrainingState:
    """Phases 1-3: schema agreement, federated encoding, training setup. Under secure aggregation
    (``marginals.uses_secure_aggregation``) the encoding's two-way tables with the target are summed
    securely; the rounds object, keys shared, goes into ``secure_box["rounds"]`` for the marginal model's
    measurements or the DP-SGD models' training rounds (``secure_updates``: one request per round)."""
    sites = transport.sites
    # Phase 1: schema agreement. Under DP the consortium declares the schema and each site answers only
    # which columns of its table do not conform (names, no values); without DP sites may infer one.
    _notify(progress, "phase", name="schema agreement", sites=sites)
    if job.privacy.enabled and job.schema is None:
        raise ConfigError(
            "Under DP the consortium declares its schema: sites never infer one for the coordinator (types and "
            "precision can turn on one record). Run 'fedtab schema infer' at a site, review it, declare public "
            "bounds and categories, and pass it ('schema' in the run configuration, schema= in the API).")
    body = {"job": job.site_job(), "schema": job.schema.to_dict() if job.schema is not None else None}
    clear = job.releases_in_the_clear()
    if clear:  # not in the job's key: a site's rules read it (require_secure_aggregation)
        body["in_the_clear"] = clear
    replies = _schema_replies(transport, job, body, sites, progress)
    sites = [s for s in sites if s in replies]  # the sites that go on
    schema = job.schema or agree_schemas({s: TableSchema.from_dict(r["schema"]) for s, r in replies.items()})
    if job.site_column is not None:
        schema = with_site_column(schema, job.site_column, sites)

    # Phase 2: federated encoding (noised statistics, recorded in each site's ledger).
    _notify(progress, "phase", name="federated encoding")
    plan = encoding.make_plan(schema, job)
    from fedtab.federation import marginals

    from fedtab.federation.secure_updates import planned_requests, secure_updates

    rounds = None
    training_requests = planned_requests(job) if setup and secure_updates(job, len(sites)) else 0
    measured = is_measured(job.model)
    secure = marginals.uses_secure_aggregation(job, len(sites)) and bool(plan.pairs or measured or training_requests)
    summed = secure and secure_encoding.summed_histograms(job, updates=training_requests > 0)
    domain = secure_encoding.summed_domain(plan, histograms=summed)
    if secure:
        rounds = marginals.SecureRounds(_measure_ask(transport, sites), len(sites), job, progress,
                                        # the measured model's three requests (under the star on the target the
                                        # second one-way measurement takes the selection's)
                                        requests=(1 if plan.pairs else 0) + (1 if summed else 0) + (1 if domain else 0)
                                        + (len(marginals.PHASES) if measured else 0)
                                        + training_requests, label="marginals" if measured else "federation")
        if secure_box is not None:
            secure_box["rounds"] = rounds
    if summed and not domain and plan.domain_columns():  # a set union of values: no sum carries it
        _notify(progress, "phase", name=secure_encoding.domain_note(plan))
    in_sum: list[str] = []  # the sites in the summed histograms

    def ask_masked(body, only):
        return _available(transport, ENCODE, {s: body for s in only})

    def ask_encoding(phase: str, request: dict) -> dict:
        body = {"schema": schema.to_dict(), "plan": encoding.plan_to_dict(plan), "phase": phase, "request": request}
        if (phase == encoding.PHASE_HISTOGRAM and summed) or (phase == encoding.PHASE_DOMAIN and domain):
            total, replies = rounds.secure_sum(ask_masked, body, real=False)
            in_sum[:] = sorted(replies)
            sites[:] = [s for s in sites if s in replies]  # a site lost here is in no later release of the model
            return {secure_encoding.SUMMED: secure_encoding.summed_release(total, replies)}
        if phase != encoding.PHASE_PAIRS or rounds is None or not len(request.get(encoding.KEY_PAIRS_MEASURED, [])):
            replies = broadcast(transport, ENCODE, body, sites=sites)
            # a site's own release counts one site: only a secure sum counts as several (merge_statistics)
            return {s: {k: v for k, v in r.items() if k != KEY_N_SITES} for s, r in replies.items()}
        total, replies = rounds.secure_sum(ask_masked, body, real=False)
        # One release: the sum (its noise, one release's: ``pair_noise_sd`` below), merged like a site's.
        return {secure_encoding.SUMMED: secure_encoding.summed_release(total, replies, full_noise=False)}

    def screen(histogram: dict) -> dict:
        """The histograms to merge: without the sites that count more rows than the consortium declares for
        them (``screening.oversized_sites``) or whose table is random values (the garbage screen), each named
        and left out; under secure aggregation a sum over the declared sizes stops the job."""
        from fedtab.federation import screening

        min_sites = job.training.min_sites or len(sites)
        caps = job.site_rows_at_most
        dropped: list[str] = []
        opened = None  # each site's histograms, where a sum over the declared sizes was opened
        if caps and summed:
            why = screening.summed_oversize(plan, histogram[secure_encoding.SUMMED], caps, in_sum)
            if why is not None and not job.opens_histograms_over_declared_sizes:
                raise FederationError(f"{screening.SIZES_WHERE}: {why}.")
            if why is not None:
                _notify(progress, "phase", name=f"{screening.SIZES_WHERE}: {why}; as the job allows "
                                                "(training.on_failed_sum = \"screen_each\"), the sites check it and "
                                                "reveal their mask keys, and each site's histograms are screened")
                opened = secure_encoding.open_histograms(
                    lambda bodies: _available(transport, ENCODE, bodies, errors=True), rounds, histogram, in_sum,
                    why=f"{screening.SIZES_WHERE}: {why}.")
                big = screening.oversized_sites(plan, opened, caps)
                big.update({s: "its histograms cannot be opened" for s in in_sum if s not in opened})
                if not big:
                    raise FederationError(f"{screening.SIZES_WHERE}: {why}; no site's own histograms count more "
                                          "than its declaration: the declarations are too small together")
                dropped += leave_out(big, going_on=len(in_sum) - len(big), of=len(in_sum), min_sites=min_sites,
                                     where=screening.SIZES_WHERE, progress=progress)
                opened = {s: r for s, r in opened.items() if s not in dropped}
                in_sum[:] = [s for s in in_sum if s not in dropped]
        elif caps:
            big = screening.oversized_sites(plan, histogram, caps)
            dropped += leave_out(big, going_on=len(histogram) - len(big), of=len(histogram), min_sites=min_sites,
                                 where=screening.SIZES_WHERE, progress=progress)
            histogram = {s: r for s, r in histogram.items() if s not in dropped}
        note = screening.power_note(plan, histogram, summed=secure_encoding.SUMMED if summed else None)
        if note is not None:
            _notify(progress, "phase", name=note)
        if opened is not None:  # the histograms were opened: screened as without secure aggregation
            garbage = screening.leave_out_garbage(plan, opened, min_sites=min_sites, progress=progress)
            histogram = {secure_encoding.SUMMED: secure_encoding.summed_releases(
                histogram[secure_encoding.SUMMED], [r for s, r in opened.items() if s not in garbage])}
        elif summed:  # each site screens its own release against the sum (secure_encoding)
            garbage, total = secure_encoding.screen(lambda bodies: _available(transport, ENCODE, bodies), plan,
                                                    histogram[secure_encoding.SUMMED], in_sum, prove=rounds.prove_last,
                                                    min_sites=min_sites, progress=progress)
            histogram = {secure_encoding.SUMMED: total}
        else:
            garbage = screening.leave_out_garbage(plan, histogram, min_sites=min_sites, progress=progress)
            histogram = {s: r for s, r in histogram.items() if s not in garbage}
        dropped += garbage
        sites[:] = [s for s in sites if s not in dropped]  # no later request goes to them
        if rounds is not None and dropped:
            rounds.alive = [s for s in rounds.alive if s not in dropped]
        return histogram

    transformer, site_weights = encoding.run_encoding(
        plan, ask_encoding, pair_noise_sd=plan.noise_multiplier if rounds is not None else None, screen=screen)
    for line in encoding.read_under_dp(plan, transformer):  # told, as the CLI prints phases
        if progress is None:
            warnings.warn(line, ReadUnderDPWarning, stacklevel=2)
        _notify(progress, "phase", name=line)
    encoding.check_target_read(plan, transformer, job.target)
    rows_known = secure_encoding.SUMMED not in site_weights
    if not rows_known:  # the coordinator knows the sum of the sites' rows: each site an equal share of it
        total = site_weights.pop(secure_encoding.SUMMED)
        site_weights = {s: total / len(sites) for s in sites}
    if plan.pairs:
        measured = len(transformer.pair_tables_)
        _notify(progress, "phase", measured=measured, named=len(plan.pairs),
                name=f"target '{job.target}': {measured} of {len(plan.pairs)} two-way tables measured"
                     + ("" if measured == len(plan.pairs) else
                        " (the rest would not stand above the DP noise: more rows or a larger "
                        "preprocessing_share would measure them)"))

    if not setup:  # the marginal-based model measures instead of training
        return TrainingState(schema=schema, encoding=transformer.to_dict(), site_weights=site_weights,
                             noise_multipliers={}, weights={}, history=(), active_sites=tuple(sites), rounds_done=0,
                             site_rows_known=rows_known)
    # Phase 3: each site calibrates its DP-SGD noise to its remaining budget.
    from fedtab.federation import training

    state = TrainingState(schema=schema, encoding=transformer.to_dict(), site_weights=site_weights,
                          noise_multipliers={}, weights={}, history=(), active_sites=tuple(sites), rounds_done=0,
                          site_rows_known=rows_known)
    setup = training.setup_body(job, transformer, plan_rows=_plan_rows(state))
    replies = broadcast(transport, SETUP, setup, sites=sites)
    noise = {s: float(r["noise_multiplier"]) for s, r in replies.items()}
    return replace(state, noise_multipliers=noise, weights=training.initial_weights(setup))


def _schema_replies(transport: Transport, job: JobSpec, body: dict, sites: list[str],
                    progress: Progress | None) -> dict[str, Any]:
    """The schema replies of the sites that go on. A site that cannot take part (its table cannot be read,
    does not conform to the declared schema or is too small; no reply) is left out, and named, when at
    least ``training.min_sites`` (default: all) remain; otherwise the run stops with its error."""
    outcomes = request_outcomes(transport, SCHEMA, {s: body for s in sites})
    failed = {s: o for s, o in outcomes.items() if isinstance(o, Exception)}
    bad = {s: r["columns"] for s, r in outcomes.items()
           if s not in failed and job.privacy.enabled and r["columns"]}
    going_on = [s for s in sites if s not in failed and s not in bad]
    if not failed and not bad:
        return outcomes
    for error in failed.values():  # the job itself is refused (a site's rules, a bad setting): stop
        if not _cannot_take_part(error):
            raise error
    min_sites = job.training.min_sites or len(sites)
    if len(going_on) < min_sites and job.training.min_sites is None:
        if len(failed) + len(bad) == 1 and failed:
            raise next(iter(failed.values()))  # every site must take part: its own error, its own exit code
        if not failed:
            raise DataValidationError("schema agreement", [
                Problem(c, f"does not conform to the declared schema at site '{s}'",
                        expected="the declared type, bounds and categories (the site's operator has the details)")
                for s, cols in sorted(bad.items()) for c in cols])
    reasons = {s: str(e).removeprefix(f"site '{s}': ") for s, e in failed.items()}
    reasons.update({s: "its table does not conform to the declared schema (column(s) "
                       f"{', '.join(repr(c) for c in cols)})" for s, cols in bad.items()})
    leave_out(reasons, going_on=len(going_on), of=len(sites), min_sites=min_sites, where="schema agreement",
              progress=progress)
    return {s: outcomes[s] for s in going_on}


def _cannot_take_part(error: Exception) -> bool:
    """A site's own trouble (its table, its connection), not the job's: the others may go on without it."""
    from fedtab.errors import SourceError

    return isinstance(error, (SourceError, DataValidationError)) or getattr(error, "no_reply", False)


def with_site_column(schema: TableSchema, column: str, sites: list[str]) -> TableSchema:
    """The agreed schema plus the site column: categorical, never missing, declared categories = the
    site names, sorted (public: declared categories cost no privacy budget). A schema that already holds it
    (a saved model's) must name the same sites."""
    from fedtab.errors import ConfigError
    from fedtab.schema import ColumnSpec

    # Sorted: the same categories (and so the same encoding and model) whichever transport lists the sites.
    spec = ColumnSpec(name=column, type="categorical", nullable=False, categories=tuple(sorted(sites)))
    if column in schema.names:
        if schema[column] != spec:
            raise ConfigError(f"The site column '{column}' is already a column of the schema "
                              f"({schema[column].to_dict()}), not the site names {list(sites)}: choose a "
                              "'site_column' name that no site's table uses.")
        return schema
    return replace(schema, columns=tuple(schema.columns) + (spec,))


def _available(transport: Transport, kind: str, bodies: dict[str, Any], *, errors: bool = False) -> dict[str, Any]:
    """Replies of the sites that answered (transports without ``request_available``: all or raise). With
    ``errors``, each site's error comes back as its outcome (``request_outcomes``) for the coordinator to
    weigh, a site that did not answer left out (a transport without ``outcomes``: a site's error raises)."""
    if errors and getattr(transport, "outcomes", None) is not None:
        return {s: o for s, o in request_outcomes(transport, kind, bodies).items() if not getattr(o, "no_reply", False)}
    request_available = getattr(transport, "request_available", None)
    if request_available is None:
        return transport.request(kind, bodies)
    return request_available(kind, bodies)


def _train_round(transport: Transport, body: dict, sites: list[str]) -> dict[str, Any]:
    return _available(transport, TRAIN, {s: body for s in sites})

"""The Python API: ``FederatedSynthesizer`` and ``load``.

>>> import fedtab
>>> sites = fedtab.datasets.load_heart_sites()            # name -> DataFrame, one per hospital
>>> synth = fedtab.FederatedSynthesizer(model="ctgan", epsilon=1.0, delta=1e-5, rounds=5, seed=0)
>>> synth.fit(sites)                                      # doctest: +SKIP
>>> table = synth.sample(1000, seed=1)                    # doctest: +SKIP
>>> synth.save("heart.fedtab"); same = fedtab.load("heart.fedtab")   # doctest: +SKIP

``fit`` runs the whole federation (schema agreement, DP encoding, DP-SGD rounds) over the chosen
transport: ``"inprocess"`` (all sites in this process; the default) or ``"flower"`` (Flower's
simulation engine, one SuperNode per site). Both give the same model for the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedtab.config import PrivacySettings, RunConfig, SiteSource, TrainingSettings, check_settings
from fedtab.errors import ConfigError, check_is_fitted
from fedtab.federation.coordinator import FederationResult, JobSpec, Progress, run_federation
from fedtab.federation.site import SiteWorker
from fedtab.models.registry import is_measured, measured_module
from fedtab.modelfile import ModelBundle, bundle_bytes, load_bundle, package_versions, save_bundle
from fedtab.privacy.book import LedgerBook, SitePolicy
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.schema import TableSchema

TRANSPORTS = ("inprocess", "flower")
CALIBRATION_OVERSAMPLE = 3  # candidate rows drawn per row kept when sampling with marginal calibration
# With a site column each site's rows are picked from the candidates labelled with it, onto that site's
# own shares, which lie further from the generator's than the union's do (heart, epsilon 1: Hungary
# records no vessel count, 86% missing in its shares against 45% among the candidates; a pick from 3x
# can weight a row at most 3x the mean). Detection AUC at Cleveland / Hungary / VA on one demo model:
# 0.966 / 0.982 / 0.922 from 3x, 0.948 / 0.945 / 0.935 from 10x, 0.914 / 0.927 / 0.930 from 30x.
SITE_CALIBRATION_OVERSAMPLE = 30
MAX_CANDIDATES = 2_000_000  # oversampling stops growing the candidates beyond this (memory)
SiteInput = pd.DataFrame | str | os.PathLike | SiteSource | Mapping


class FederatedSynthesizer:
    """Train a synthesizer across sites that keep their rows; sample a synthetic table.

    ``model``: "auto" (the default) chooses from what is public (DP or not, the declared schema's
    columns) and keeps the choice and its reason in ``model_choice_`` (``fedtab.models.choice``; today
    the marginal-based "mst" for every table it can model); or name one: "mst", "ctgan", "tvae",
    "diffusion".

    Parameters (all keyword-only except ``model``) follow ``fedtab.config``: ``epsilon`` is each
    site's total budget, preprocessing included (``None``: non-DP mode, exact statistics, still no
    rows leave a site); ``preprocessing_share`` of it goes to the encoding statistics (default: chosen
    with the model, ``fedtab.models.choice.preprocessing_share_for``: 0.3 for "mst" with a ``target``,
    else 0.1); ``rounds`` federated rounds of ``local_epochs`` local passes each.
    ``secure_aggregation`` (under DP, 2+ sites, the "mst" model): the coordinator receives only the sum of
    the sites' measurements and each of the n sites adds 1/sqrt(n) of the noise, so the sum carries the
    noise of one release instead of sqrt(n) times it (``fedtab.federation.secagg`` states what is assumed).
    ``aggregation`` (DP-SGD models): "mean" (row-weighted FedAvg) or "trimmed_mean" (each value without its
    most extreme site on either side, from 4 sites: robust to one hostile site in four). Every round, a
    site's update that is not finite, has other shapes or moves a parameter further than a round of Adam
    can is named and left out (``fedtab.federation.aggregation.screen_update``). ``min_sites``: the fewest
    sites that must take part (default: all); a site left out beyond that stops the run.
    ``on_failed_sum`` (DP-SGD models, updates summed securely): when a round's sum fails its screen,
    "screen_each" (the default): the sites, told so in the job they accept, show that round's updates
    (each a DP release already on its ledger: under DP each site keeps its full DP-SGD noise), which the
    coordinator screens one by one, naming and leaving out a site whose update fails; every round whose
    sum passes stays a sum. "stop": the run stops (which site sent the broken update cannot be told) and
    no site ever shows an update.
    ``site_rows_at_most``: site name -> the consortium's public declaration of its most rows (a run
    configuration's ``[sites.<name>] rows_at_most``); a site whose encoding histograms count more is named
    and left out, and under secure aggregation a sum over the declared sizes stops the run
    (``fedtab.federation.screening``): a site whose code inflates all its counts weighs no more than declared.
    ``target``: the column that matters most downstream (e.g. the label a model will be trained on):
    the encoding also measures its two-way table with every other column (under DP from the same
    preprocessing budget) and ``sample`` calibrates the rows onto those tables, so how the other
    columns relate to it survives DP-SGD's noise. ``parallel_sites``: with the in-process transport,
    how many sites work side by side (default: one per core; the result does not depend on it).
    ``site_column``: add a column of that name holding each row's site (the site names are the
    categories); the generator is conditioned on it (CTGAN: every row, each site training its own
    sites' slice; TVAE, diffusion: a column like the others), ``sample`` draws it by the sites' shares,
    and each site is evaluated on the rows labelled with its own name. For consortia whose sites
    differ (a hospital's case mix, what it measures): a table of their union mixes them.

    The sites' own rules (``fedtab.SitePolicy``): ``site_policy`` (one policy for every site, or site
    name -> policy; a ``SiteSource`` may carry its own). By default a site refuses a job without DP
    (``epsilon=None``; pass ``site_policy=fedtab.SitePolicy(allow_non_dp=True)`` to allow it), a delta
    above 1e-5, and its refusal releases nothing. ``ledger_dir``: keep each site's lasting ledger in
    ``<ledger_dir>/<site>/ledger.jsonl``, so that repeated runs on the same data add up against each
    site's ``max_total_epsilon`` (default: a ledger that lives as long as this ``fit``).

    ``signing_key``: the coordinator's Ed25519 private key (a file from ``fedtab signing-keygen``, or
    a key object): ``save`` signs the model file with it and ``fedtab.release`` the audit record too
    (``fedtab.signing``); default None: files are written unsigned, as before.
    """

    def __init__(self, model: str = "auto", *, epsilon: float | None = None, delta: float = 1e-5,
                 rounds: int = 5, local_epochs: float = 1.0, batch_size: int = 500, max_grad_norm: float = 1.0,
                 preprocessing_share: float | None = None, seed: int = 0, schema: TableSchema | str | None = None,
                 missing_markers: tuple[str, ...] = ("?",), holdout: float = 0.2, transport: str = "inprocess",
                 model_options: Mapping[str, Any] | None = None, target: str | None = None,
                 parallel_sites: int | None = None, site_column: str | None = None,
                 signing_key: str | os.PathLike | Any | None = None,
                 progress: Progress | None = None, site_policy: SitePolicy | Mapping[str, SitePolicy] | None = None,
                 ledger_dir: str | os.PathLike | None = None, secure_aggregation: bool = True,
                 aggregation: str = "mean", min_sites: int | None = None,
                 site_rows_at_most: Mapping[str, int] | None = None, on_failed_sum: str = "screen_each"):
        self.model = model
        self.epsilon = epsilon
        self.delta = delta
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.max_grad_norm = max_grad_norm
        self.preprocessing_share = preprocessing_share
        self.seed = seed
        self.schema = schema
        self.missing_markers = missing_markers
        self.holdout = holdout
        self.transport = transport
        self.model_options = model_options
        self.target = target
        self.parallel_sites = parallel_sites
        self.site_column = site_column
        self.progress = progress
        self.site_policy = site_policy
        self.ledger_dir = ledger_dir
        self.signing_key = signing_key
        self.secure_aggregation = secure_aggregation
        self.aggregation = aggregation
        self.min_sites = min_sites
        self.site_rows_at_most = site_rows_at_most
        self.on_failed_sum = on_failed_sum
        self._check_params()  # a misspelt model or a budget of 'x' is refused here, not after the sites' work

    # -- configuration --------------------------------------------------------------------------
    def _check_params(self) -> tuple[PrivacySettings, TrainingSettings]:
        """Every problem with the parameters at once (ConfigError), before any site is asked; the
        settings they make."""
        privacy = PrivacySettings(epsilon=self.epsilon, delta=self.delta, preprocessing_share=self.preprocessing_share,
                                  secure_aggregation=self.secure_aggregation)
        training = TrainingSettings(rounds=self.rounds, local_epochs=self.local_epochs,
                                    batch_size=self.batch_size, max_grad_norm=self.max_grad_norm,
                                    aggregation=self.aggregation, min_sites=self.min_sites,
                                    on_failed_sum=self.on_failed_sum)
        problems = check_settings(model=self.model, privacy=privacy, training=training, holdout=self.holdout)
        if self.transport not in TRANSPORTS:
            problems.append(f"'transport' must be one of {list(TRANSPORTS)}. Got {self.transport!r} instead.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(f"'seed' must be a whole number >= 0. Got {self.seed!r} instead.")
        if self.target is not None and not isinstance(self.target, str):
            problems.append(f"'target' must be a column name or None. Got {self.target!r} instead.")
        if self.site_column is not None and (not isinstance(self.site_column, str) or not self.site_column):
            problems.append(f"'site_column' must be a column name or None. Got {self.site_column!r} instead.")
        if self.parallel_sites is not None and (isinstance(self.parallel_sites, bool)
                                                or not isinstance(self.parallel_sites, int) or self.parallel_sites < 1):
            problems.append(f"'parallel_sites' must be a whole number >= 1 or None. Got {self.parallel_sites!r} instead.")
        if self.schema is not None and not isinstance(self.schema, (TableSchema, str, os.PathLike)):
            problems.append(f"'schema' must be a TableSchema, the path of a schema JSON file or None. Got "
                            f"{type(self.schema).__name__} instead.")
        if self.signing_key is not None:  # a missing or world-readable key is refused before any site is asked
            from fedtab.signing import load_signing_key

            try:
                load_signing_key(self.signing_key)
            except ConfigError as e:
                problems.append(f"'signing_key': {e}")
        caps = self.site_rows_at_most
        if caps is not None and (not isinstance(caps, Mapping) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in caps.values())):
            problems.append("'site_rows_at_most' must map site names to whole numbers >= 1 (each site's declared "
                            f"most rows) or be None. Got {caps!r} instead.")
        if problems:
            raise ConfigError("Invalid FederatedSynthesizer parameters:\n" + "\n".join(f"  - {p}" for p in problems))
        return privacy, training

    def _job(self) -> JobSpec:
        privacy, training = self._check_params()
        schema = TableSchema.load(self.schema) if isinstance(self.schema, (str, os.PathLike)) else self.schema
        model = self.model
        if model == "auto":  # chosen from what is public, before any site is asked; the reason is kept
            from fedtab.models.choice import choose_model

            choice = choose_model(dp=privacy.enabled, schema=schema)
            self.model_choice_ = choice
            model = choice.model
        if is_measured(model):  # its options are checked here, before any site is asked
            try:
                measured_module(model).model_options(dict(self.model_options or {}))
            except ConfigError as e:
                raise ConfigError(f"Invalid FederatedSynthesizer parameters:\n  - {e}") from None
        if privacy.preprocessing_share is None:  # chosen with the model (fedtab.models.choice)
            from fedtab.models.choice import preprocessing_share_for

            privacy = dataclasses.replace(privacy, preprocessing_share=preprocessing_share_for(model, target=self.target))
            if self.model == "auto" and privacy.enabled:
                self.model_choice_ = dataclasses.replace(self.model_choice_, reason=(
                    f"{self.model_choice_.reason}; {privacy.preprocessing_share:.0%} of each site's epsilon to the "
                    "encoding (fedtab.models.choice.preprocessing_share_for)"))
        return JobSpec(model=model, model_options=dict(self.model_options or {}), privacy=privacy,
                       training=training, seed=self.seed, holdout=self.holdout,
                       missing_markers=tuple(self.missing_markers), schema=schema, target=self.target,
                       site_column=self.site_column,
                       site_rows_at_most={str(k): int(v) for k, v in (self.site_rows_at_most or {}).items()})

    @classmethod
    def from_config(cls, config: RunConfig, *, transport: str = "inprocess",
                    progress: Progress | None = None) -> "FederatedSynthesizer":
        return cls(config.model, epsilon=config.privacy.epsilon, delta=config.privacy.delta,
                   preprocessing_share=config.privacy.preprocessing_share, rounds=config.training.rounds,
                   local_epochs=config.training.local_epochs, batch_size=config.training.batch_size,
                   max_grad_norm=config.training.max_grad_norm, aggregation=config.training.aggregation,
                   min_sites=config.training.min_sites, on_failed_sum=config.training.on_failed_sum,
                   seed=config.seed, schema=config.schema_path,
                   missing_markers=config.missing_markers, holdout=config.holdout, transport=transport,
                   model_options=config.model_options, target=config.target, site_column=config.site_column,
                   signing_key=config.signing_key,
                   progress=progress, ledger_dir=config.ledger_dir,
                   secure_aggregation=config.privacy.secure_aggregation,
                   site_rows_at_most=config.site_rows_at_most or None)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, sites: Mapping[str, SiteInput]) -> "FederatedSynthesizer":
        """Train across ``sites`` (name -> DataFrame, file path, SQLAlchemy URL or SiteSource)."""
        job = dataclasses.replace(self._job(), job_id=uuid.uuid4().hex)  # one run, one job on the sites' books
        if self.model == "auto" and self.progress is not None:
            self.progress("phase", {"name": f"model: {job.model} (chosen: {self.model_choice_.reason})"})
        if not isinstance(sites, Mapping) or not sites:
            raise ConfigError("'sites' must be a non-empty mapping of site name -> table or source. "
                              f"Got {type(sites).__name__} instead.")
        _check_sites(sites)
        unknown = sorted(set(job.site_rows_at_most) - {str(n) for n in sites})
        if unknown:
            raise ConfigError(f"'site_rows_at_most' names {unknown}, which are not among the sites "
                              f"{sorted(map(str, sites))}.")
        # Without a ledger directory each site's book lives in memory: kept here, so that evaluating this
        # model in the same process finds the model each site recorded (a simulation runs every site).
        # (In-process only: Flower's simulation keeps a site's book in the site's own context state.)
        self._site_books = ({str(name): [] for name in sites} if self.ledger_dir is None and self.transport == "inprocess"
                            else {})
        factories = {str(name): functools.partial(_make_worker, str(name), _site_source(name, s),
                                                  policy=self._policy_of(str(name), s), ledger_dir=self.ledger_dir,
                                                  records=self._site_books.get(str(name)))
                     for name, s in sites.items()}
        if self.transport == "flower":
            from fedtab.federation.flower_app import run_flower_simulation

            result = run_flower_simulation(functools.partial(run_federation, job=job, progress=self.progress),
                                           factories)
        else:
            from fedtab.federation.transport import InProcessTransport

            transport = InProcessTransport({name: f() for name, f in factories.items()},
                                           max_parallel=self.parallel_sites)
            try:
                result = run_federation(transport, job, progress=self.progress)
            finally:
                transport.close()
        self._set_result(result, job)
        return self

    def _policy_of(self, name: str, site: Any) -> SitePolicy:
        """The rules of site ``name``: ``site_policy`` (one for all, or by name), else its SiteSource's."""
        p = self.site_policy
        if isinstance(p, SitePolicy):
            return p
        if isinstance(p, Mapping) and name in p:
            if not isinstance(p[name], SitePolicy):
                raise ConfigError(f"site_policy['{name}'] must be a fedtab.SitePolicy. Got {type(p[name]).__name__} instead.")
            return p[name]
        if p is not None and not isinstance(p, Mapping):
            raise ConfigError(f"The 'site_policy' parameter of FederatedSynthesizer must be a fedtab.SitePolicy, a "
                              f"mapping of site name -> SitePolicy, or None. Got {type(p).__name__} instead.")
        if isinstance(site, SiteSource) and site.policy:
            return SitePolicy.from_dict(site.policy)
        return SitePolicy()

    def _set_result(self, result: FederationResult, job: JobSpec) -> None:
        from fedtab.federation import encoding, training

        self.schema_ = result.schema
        self.transformer_ = encoding.transformer_from_dict(result.encoding)
        self.weights_ = result.weights
        self.ledgers_ = {s: PrivacyLedger.from_dict(d) for s, d in result.ledgers.items()}
        # Sites whose ledger here is the last one seen before they dropped out (not their final one).
        self.ledgers_last_seen_ = tuple(result.ledgers_last_seen)
        self.history_ = result.history
        self.result_ = result
        # The options the sites trained with (a declared target may condition the model): saved with it.
        self.job_ = dataclasses.replace(job, model_options=training.resolve_model_options(job, self.transformer_))
        self._model = None

    # -- using the model ----------------------------------------------------------------------------
    @property
    def privacy_ledger(self) -> dict[str, PrivacyLedger]:
        """Each site's privacy ledger (entries and composed epsilon)."""
        check_is_fitted(self, "ledgers_")
        return self.ledgers_

    def sample(self, n: int, *, seed: int | None = None, calibrate: bool = True,
               quantile_map: bool = False, relabel: bool | None = None) -> pd.DataFrame:
        """``n`` synthetic rows in the agreed schema (id columns get fresh synthetic ids), each column in
        the representation the input held it in where the schema records it (``ColumnSpec.dtype``:
        integers stay integers, a 0/1 column stays 0/1, text stays text); ``sample_typed`` gives the
        same rows in fedtab's typed contract (``fedtab.schema``), as the sites evaluate them.

        ``calibrate`` (default): the model draws ``CALIBRATION_OVERSAMPLE`` x n rows (with a site
        column ``SITE_CALIBRATION_OVERSAMPLE`` x n, at most ``MAX_CANDIDATES`` or 3 x n) and raking weights
        pick ``n`` of them so every category share and missing share matches the marginals the sites
        agreed on in the encoding phase (``fedtab.transform.calibration``: post-processing, no privacy
        cost). Measured: Adult (4 sites, non-DP, short run) quality 0.757 -> 0.816, TSTR 0.493 -> 0.528.
        ``quantile_map`` also maps every numerical column onto its agreed distribution (a Gaussian
        mixture): it helps tiny DP sites (heart hospitals at epsilon 1: pooled quality 0.666 -> 0.701)
        but hurts where a column has point masses the mixture cannot hold (Adult's capital gain: TSTR
        0.528 -> 0.398), hence off by default. ``calibrate=False`` returns the generator's raw rows.

        With a categorical ``target`` (its two-way tables measured in the encoding), ``relabel=True``
        draws each row's target again from those tables (naive Bayes over them) and rakes on the one-way
        marginals; ``relabel=False`` keeps the generator's target and rakes the rows onto the tables.
        The default (None) redraws, except for a model trained without DP and conditioned on the target
        (diffusion with a declared target draws it from the agreed frequencies first, then the row for
        it): measured on Adult, 4 sites, quality / TSTR kept vs redrawn: non-DP 0.949 / 0.892 vs
        0.941 / 0.885 (3 sampling seeds); at epsilon 1 0.776 / 0.810 vs 0.784 / 0.879, at epsilon 10
        0.854 / 0.865 vs 0.866 / 0.884 (2 seeds): through DP-SGD noise the tables know the target better.
        Measured on Adult (4 sites), quality / TSTR redrawn vs raked: non-DP CTGAN 0.824 / 0.881 vs
        0.822 / 0.854, TVAE 0.921 / 0.881 vs 0.917 / 0.865, diffusion 0.931 / 0.882 vs 0.918 / 0.865;
        at epsilon 1 CTGAN 0.780 / 0.870 vs 0.764 / 0.791. The price: the target follows the tables'
        pairwise relations, so interactions of two columns with the target are the generator's no more.
        """
        from fedtab.transform.values import as_input_dtypes

        frame = self.sample_typed(n, seed=seed, calibrate=calibrate, quantile_map=quantile_map, relabel=relabel)
        return as_input_dtypes(frame, self.schema_)

    def sample_typed(self, n: int, *, seed: int | None = None, calibrate: bool = True,
                     quantile_map: bool = False, relabel: bool | None = None) -> pd.DataFrame:
        """``sample``'s rows in fedtab's typed contract (``fedtab.schema``: categories as text, integers as
        ``Int64``, booleans as ``boolean``): what the sites evaluate and what the release gate hashes."""
        check_is_fitted(self, "weights_")
        check_sample_request(n, seed, n_columns=len(self.schema_),
                             oversample=CALIBRATION_OVERSAMPLE if calibrate and not is_measured(self.job_.model) else 1)
        from fedtab.federation import training

        seed = self.seed if seed is None else seed
        if self._model is None:
            self._model = training.model_from_weights(self.job_.model, self.job_.model_options,
                                                      self.transformer_, self.weights_, seed=self.seed)
        if is_measured(self.job_.model):  # it draws typed rows itself (its own marginals: no calibration)
            return _with_ids(self._model.sample_frame(int(n), seed=seed, relabel=relabel is not False), self.schema_,
                             seed=seed)
        if relabel is None:  # see the docstring: a non-DP model conditioned on the target keeps its own
            relabel = self.job_.model_options.get("condition_column") is None or self.job_.privacy.epsilon is not None
        encoded = training.sample_encoded(self._model, self._candidates(int(n)) if calibrate else int(n), seed=seed)
        frame = self.transformer_.inverse_transform(encoded, calibrate_rows=int(n) if calibrate else None,
                                                    quantile_map=quantile_map, relabel=relabel,
                                                    rng=np.random.default_rng([int(seed), 1]))
        return _with_ids(frame, self.schema_, seed=seed)

    def _candidates(self, n: int) -> int:
        """How many rows the model draws for ``n`` calibrated ones (see ``sample``)."""
        if self.transformer_.plan_.site_column is None:
            return CALIBRATION_OVERSAMPLE * n
        return max(CALIBRATION_OVERSAMPLE * n, min(SITE_CALIBRATION_OVERSAMPLE * n, MAX_CANDIDATES))

    def save(self, path: str | os.PathLike, *, signing_key: str | os.PathLike | Any | None = None) -> Path:
        """Write the model file (safetensors + JSON; see ``fedtab.modelfile``), signed with ``signing_key``
        (default: this synthesizer's ``signing_key``; neither: unsigned)."""
        key = self.signing_key if signing_key is None else signing_key
        return save_bundle(path, self._bundle(), signing_key=key)

    def to_bytes(self) -> bytes:
        """The model file's bytes (what ``save`` writes)."""
        return bundle_bytes(self._bundle(), signing_key=self.signing_key)

    def _bundle(self) -> ModelBundle:
        check_is_fitted(self, "weights_")
        job = self.job_
        manifest = {
            "schema": self.schema_.to_dict(), "encoding": self.result_.encoding, "model": job.model,
            "model_options": job.model_options, "seed": job.seed,
            "privacy": {"epsilon": job.privacy.epsilon, "delta": job.privacy.delta,
                        "preprocessing_share": job.privacy.preprocessing_share,
                        "secure_aggregation": job.privacy.secure_aggregation},
            "training": {"rounds": job.training.rounds, "local_epochs": job.training.local_epochs,
                         "batch_size": job.training.batch_size, "max_grad_norm": job.training.max_grad_norm,
                         "aggregation": job.training.aggregation, "on_failed_sum": job.training.on_failed_sum},
            # public declarations, part of the job the sites accepted where a sum over them may be opened
            "site_rows_at_most": dict(job.site_rows_at_most),
            "ledgers": self.result_.ledgers, "noise_multipliers": self.result_.noise_multipliers,
            # The sites that died before the job ended: theirs is the last ledger seen before they dropped
            # out (every release of theirs in this model is in it), not the final one they hold.
            "ledgers_last_seen": list(self.result_.ledgers_last_seen),
            "site_weights": self.result_.site_weights,
            # False: the encoding's histograms were summed securely, the weights are equal shares of the sum
            "site_rows_known": self.result_.site_rows_known,
            # Under DP a round's duration follows the sites' (Poisson) batch sizes, so their row counts:
            # the published file leaves it out (the operator's progress bar shows it).
            "history": [{"round": h.round, "losses": h.losses, "epsilon": h.epsilon,
                         "seconds": None if job.privacy.enabled else h.seconds} for h in self.history_],
            "missing_markers": list(job.missing_markers), "holdout": job.holdout, "job_id": job.job_id,
            "versions": package_versions(),
        }
        return ModelBundle(manifest=manifest, weights=self.weights_)


BYTES_PER_CELL = 64  # a sampled cell's peak memory while a table is drawn, decoded and typed (measured ~40)
MEMORY_SHARE = 0.5  # a table may take at most this share of the machine's memory


def max_sample_rows(n_columns: int, *, oversample: int = 1) -> int:
    """The most rows ``sample`` draws at once on this machine: half its memory over ``BYTES_PER_CELL``
    per cell (x the calibration's candidates). Larger tables: draw in parts with different seeds."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    return max(1, int(MEMORY_SHARE * memory / (BYTES_PER_CELL * max(n_columns, 1) * max(oversample, 1))))


def check_sample_request(n, seed, *, n_columns: int, oversample: int = 1) -> None:
    """Clear errors for a row count or seed that cannot work, before anything is drawn."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"The 'n' parameter of sample must be a whole number >= 1. Got {n!r} instead.")
    ceiling = max_sample_rows(n_columns, oversample=oversample)
    if n > ceiling:
        raise ConfigError(f"{n:,} rows would take more than half of this machine's memory ({n_columns} columns); "
                          f"the ceiling here is {ceiling:,} rows. Draw the table in parts of at most that many "
                          "rows with different seeds.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32):
        raise ConfigError(f"The 'seed' must be a whole number in [0, 2**32). Got {seed!r} instead.")


def load(path: str | os.PathLike, *, trusted_keys=None) -> FederatedSynthesizer:
    """Load a model file written by ``FederatedSynthesizer.save`` or ``fedtab train``.

    ``trusted_keys``: the coordinator's public key file(s) (``fedtab signing-keygen``'s PATH.pub) or key
    objects; default: the files named in ``FEDTAB_TRUSTED_KEYS``. With any, a file not signed by one of
    them is refused (``SignatureError``, exit code 7) and ``signed_by_`` holds the signer's fingerprint;
    with none, the file is read with a ``SignatureNotCheckedWarning`` (``fedtab.signing``). Either way
    its content hash catches accidental corruption."""
    from fedtab.errors import SignatureNotCheckedWarning
    from fedtab.signing import NOT_CHECKED, TRUSTED_KEYS_ENV, resolve_trusted_keys

    trusted = resolve_trusted_keys(trusted_keys)
    bundle = load_bundle(path, trusted_keys=trusted)
    synth = from_bundle(bundle, source=str(path))
    synth.signed_by_ = bundle.signed_by
    if not trusted:
        warnings.warn(f"{NOT_CHECKED} (pass trusted_keys= or set {TRUSTED_KEYS_ENV})", SignatureNotCheckedWarning,
                      stacklevel=2)
    return synth


def from_bundle(b: ModelBundle, *, source: str = "model file") -> FederatedSynthesizer:
    """A fitted synthesizer from a verified model file's contents (``fedtab.modelfile.read_bundle``)."""
    from fedtab.errors import ModelFileError
    from fedtab.federation.coordinator import RoundRecord

    path = source
    m = b.manifest
    try:
        synth = FederatedSynthesizer(
            m["model"], epsilon=m["privacy"]["epsilon"], delta=m["privacy"]["delta"],
            preprocessing_share=m["privacy"]["preprocessing_share"], rounds=m["training"]["rounds"],
            secure_aggregation=bool(m["privacy"].get("secure_aggregation", False)),
            local_epochs=m["training"]["local_epochs"], batch_size=m["training"]["batch_size"],
            max_grad_norm=m["training"]["max_grad_norm"], aggregation=m["training"].get("aggregation", "mean"),
            on_failed_sum=m["training"].get("on_failed_sum", "stop"),  # files from before the setting: "stop"
            seed=m["seed"], schema=TableSchema.from_dict(m["schema"]),
            missing_markers=tuple(m["missing_markers"]), holdout=m["holdout"], model_options=m["model_options"],
            site_column=m["encoding"]["config"]["plan"].get("site_column"),
            site_rows_at_most=m.get("site_rows_at_most") or None)
        history = tuple(RoundRecord(**h) for h in m["history"])
        result = FederationResult(schema=TableSchema.from_dict(m["schema"]), encoding=m["encoding"],
                                  weights=b.weights, ledgers=m["ledgers"], history=history,
                                  site_weights=m["site_weights"], noise_multipliers=m["noise_multipliers"],
                                  ledgers_last_seen=tuple(m.get("ledgers_last_seen", ())),
                                  site_rows_known=bool(m.get("site_rows_known", True)))
        synth._set_result(result, dataclasses.replace(synth._job(), job_id=m.get("job_id", "")))
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: the model file's manifest lacks {e}: written by another fedtab version?") from None
    return synth


def _site_source(name: str, s: SiteInput) -> pd.DataFrame | SiteSource:
    if isinstance(s, pd.DataFrame):
        return s
    if isinstance(s, SiteSource):
        return s
    if isinstance(s, (str, os.PathLike)):
        return SiteSource(source=str(s))
    if isinstance(s, Mapping) and isinstance(s.get("source"), str):
        return SiteSource(source=s["source"], table=s.get("table"))
    raise ConfigError(f"site '{name}': expected a DataFrame, a file path, a SQLAlchemy URL or "
                      f"{{'source': ..., 'table': ...}}. Got {type(s).__name__} instead.")


def _check_sites(sites: Mapping) -> None:
    """Site names safe as folder names and unique (``fedtab.config.check_site_names``); a DataFrame's
    column names are text (an integer name would fail deep inside the encoding)."""
    from fedtab.config import check_site_names

    problems = check_site_names(list(sites))
    for name, s in sites.items():
        if isinstance(s, pd.DataFrame):
            bad = [c for c in s.columns if not isinstance(c, str)]
            if bad:
                problems.append(f"site '{name}': column names must be text; {len(bad)} are not (e.g. {bad[0]!r}); "
                                "rename them first, e.g. df.columns = df.columns.astype(str)")
    if problems:
        raise ConfigError("Invalid sites:\n" + "\n".join(f"  - {p}" for p in problems))


def _make_worker(name: str, source: pd.DataFrame | SiteSource, *, policy: SitePolicy | None = None,
                 book: LedgerBook | None = None, ledger_dir: str | os.PathLike | None = None,
                 records: list | None = None, report_dir: str | os.PathLike | None = None) -> SiteWorker:
    def load_frame(schema: TableSchema | None, markers: tuple[str, ...]) -> pd.DataFrame:
        if isinstance(source, pd.DataFrame):
            return source
        from connectors import read_table

        return read_table(source.source, table=source.table, schema=schema, missing_markers=markers)

    if book is None and ledger_dir is not None:
        book = LedgerBook(name, Path(ledger_dir) / name)
    elif book is None and records is not None:
        book = LedgerBook(name, records=records)
    if report_dir is None and ledger_dir is not None:
        report_dir = Path(ledger_dir) / name / "reports"
    return SiteWorker(name, load_frame, policy=policy, book=book, report_dir=report_dir)


def _with_ids(frame: pd.DataFrame, schema: TableSchema, *, seed: int) -> pd.DataFrame:
    """Put id columns back as fresh synthetic ids: real ids are never copied into synthetic data."""
    out = {}
    for spec in schema.columns:
        if spec.type == "id":
            out[spec.name] = [f"synthetic-{i + 1}" for i in range(len(frame))]
        else:
            out[spec.name] = frame[spec.name]
    return pd.DataFrame(out)

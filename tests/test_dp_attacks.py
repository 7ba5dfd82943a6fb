"""Attacks on fedtab's differential privacy (issue 18): replay, empirical audit, leak scan.

* Replay: an attacker who knows everything public (the job seed, the site names, the plan, the
  ledgers) re-derives the encoding noise by every seeded scheme it can think of and subtracts it from
  the histograms the coordinator received. Under the secret source no scheme gives the exact counts;
  in the broken control (noise seeded from the job seed, the test seam) the right scheme gives them all.
* Audit: many runs on a table with and without one canary record give a statistical lower bound on
  epsilon (``fedtab.privacy.audit``); it must stay within what the ledger claims for the real encoding
  release and the real DP-SGD step, and exceed it for broken variants (a tenth of the noise; noise
  seeded from the public job seed). ``benchmarks/bench_dp_audit.py`` runs the same audits with more runs.
* Leak scan: a canary row with unique values at one site, a DP job through the CLI and through a
  recorded in-process transport; no file, output, progress event or message holds the canary's values,
  a site's exact row counts or its exact sample rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from fedtab.config import PrivacySettings, TrainingSettings
from fedtab.datasets import heart_schema, heart_site_path
from fedtab.federation.coordinator import FederationResult, JobSpec, run_federation
from fedtab.federation.site import ENCODE, SiteWorker, site_seed, split_holdout
from fedtab.federation.transport import InProcessTransport
from fedtab.privacy.audit import clopper_pearson_upper, empirical_epsilon, epsilon_from_rates
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.privacy.secret import SecretSource, SeededSource, _replace_source_for_tests, seeded_sources_for_tests
from fedtab.transform.plan import (
    F_COUNTS, F_MISSING, F_ROUNDING, PHASE_HISTOGRAM, ROUNDING_NOISE_FACTOR, EncodingPlan, wire_key,
)
from fedtab.transform.statistics import site_statistics
from fedtab.validation import validate_table
from tests.dp_audit import dpsgd_audit, encoding_audit

JOB_SEED = 3
CANARY_SITE, OTHER_SITE = "switzerland", "hungary"
BATCH = 64
# Implausible but inside the declared bounds of fedtab/data/heart_schema.json; 'thal' is left without
# declared categories (canary_schema), so its categories go through the DP set union.
CANARY_CATEGORY = "canary-thal-zq7"
CANARY_ROW = {"age": "113", "sex": "1", "cp": "4", "trestbps": "287", "chol": "941", "fbs": "1", "restecg": "2",
              "thalach": "239", "exang": "1", "oldpeak": "9.3", "slope": "3", "ca": "3", "thal": CANARY_CATEGORY,
              "num": "4"}
CANARY_NUMBERS = {113.0: "canary age", 287.0: "canary trestbps", 941.0: "canary chol", 239.0: "canary thalach",
                  9.3: "canary oldpeak"}


def canary_schema():
    schema = heart_schema()
    return schema.replace_column(dataclasses.replace(schema["thal"], categories=None))


def raw_site(site: str) -> pd.DataFrame:
    """A site's table as its CSV holds it (strings), the canary row appended at the canary site."""
    with heart_site_path(site).open("r", encoding="utf-8") as f:
        raw = pd.read_csv(f, dtype=str, keep_default_na=False)
    if site == CANARY_SITE:
        raw = pd.concat([raw, pd.DataFrame([CANARY_ROW])], ignore_index=True)
    return raw


def training_rows(site: str, schema=None) -> pd.DataFrame:
    """The rows a site trains on, as the site splits them (``SiteWorker._frames``)."""
    typed = validate_table(raw_site(site), schema or canary_schema(), source=site)
    train, _ = split_holdout(typed, fraction=0.2, seed=site_seed(JOB_SEED, site, 1))
    return train


def dp_job(schema) -> JobSpec:
    """Without secure aggregation: the coordinator reads each site's releases (under it, only their sums),
    the widest view these attacks can have."""
    return JobSpec(model="ctgan", privacy=PrivacySettings(epsilon=1.0, delta=1e-5, preprocessing_share=0.5,
                                                          secure_aggregation=False),
                   training=TrainingSettings(rounds=1, local_epochs=0.5, batch_size=BATCH), seed=JOB_SEED,
                   schema=schema)


class RecordingTransport(InProcessTransport):
    """The in-process transport, recording every request body the coordinator sends and every reply
    it receives (after the wire's pack/unpack, as the coordinator sees them)."""

    def __init__(self, workers):
        super().__init__(workers)
        self.messages: list[tuple[str, str, Any, Any]] = []  # (kind, site, body sent, reply received)

    def outcomes(self, kind, bodies):  # every request goes through it (``request`` raises the error replies)
        replies = super().outcomes(kind, bodies)
        self.messages.extend((kind, site, bodies[site], replies[site]) for site in bodies if site in replies)
        return replies


@dataclass
class Recorded:
    messages: list[tuple[str, str, Any, Any]]
    events: list[tuple[str, dict]]
    result: FederationResult


def run_recorded() -> Recorded:
    """A small DP job (2 heart hospitals, the canary at one, CTGAN, 1 round) over a recording transport."""
    schema = canary_schema()
    workers = {site: SiteWorker(site, lambda _schema, _markers, raw=raw_site(site): raw)
               for site in (CANARY_SITE, OTHER_SITE)}
    transport = RecordingTransport(workers)
    events: list[tuple[str, dict]] = []
    try:
        result = run_federation(transport, dp_job(schema), progress=lambda e, info: events.append((e, info)))
    finally:
        transport.close()
    return Recorded(transport.messages, events, result)


@pytest.fixture(scope="module")
def production_run() -> Recorded:
    return run_recorded()


@pytest.fixture(scope="module")
def seeded_run() -> Recorded:
    """The broken control: every secret source replaced by one seeded from the public job seed."""
    with _replace_source_for_tests(seeded_sources_for_tests(JOB_SEED)):
        return run_recorded()


def test_the_canary_is_a_training_row():
    assert (training_rows(CANARY_SITE)["thal"] == CANARY_CATEGORY).sum() == 1


# -- 1. replay ----------------------------------------------------------------------------------------
class _NoNoise(SecretSource):
    """The attacker's ground truth: the site's own code path with no noise at all."""

    def __init__(self):
        pass

    def discrete_gaussian(self, counts, sigma):
        return np.asarray(counts).astype(np.int64)


def _histogram_vectors(plan: EncodingPlan, release: dict) -> list[tuple[np.ndarray, float]]:
    """A histogram-phase release as the site noised it: (vector, sigma) in the order of its draws."""
    z = plan.noise_multiplier
    out = [(np.append(np.asarray(release[wire_key(c.name, F_COUNTS)], dtype=np.float64),
                      float(release[wire_key(c.name, F_MISSING)])), z) for c in plan.columns]
    out += [(np.asarray(release[wire_key(c.name, F_ROUNDING)], dtype=np.float64), z * ROUNDING_NOISE_FACTOR)
            for c in plan.rounding_columns()]
    return out


def _histogram_releases(recorded: Recorded):
    """(site, plan, request, release, exact release) for every histogram-phase release received."""
    for kind, site, body, reply in recorded.messages:
        if kind == ENCODE and body["phase"] == PHASE_HISTOGRAM:
            plan = EncodingPlan.from_dict(body["plan"])
            ledger = PrivacyLedger("attacker", epsilon_budget=1e6, delta=0.5)
            exact = site_statistics(training_rows(site), plan, PHASE_HISTOGRAM, body["request"], ledger=ledger,
                                    noise=_NoNoise())
            yield site, plan, body["request"], reply, exact


def _seeded_replay(material, *, skip: tuple[tuple[int, float], ...] = ()):
    def draw(sizes_sigmas):
        src = SeededSource(material)
        for size, sigma in skip:  # the stream already used by an earlier release
            src.discrete_gaussian(np.zeros(size), sigma)
        return [src.discrete_gaussian(np.zeros(size), sigma).astype(np.float64) for size, sigma in sizes_sigmas]
    return draw


def _numpy_replay(material):
    def draw(sizes_sigmas):
        rng = np.random.default_rng(material)
        return [rng.normal(0.0, sigma, size) for size, sigma in sizes_sigmas]
    return draw


def attacker_hypotheses(seed: int, site: str, z: float) -> dict[str, Any]:
    """Every derivation of a site's encoding noise from public values that the attacker tries."""
    hyps: dict[str, Any] = {}
    for label in (f"{site}/encode/{PHASE_HISTOGRAM}", f"encoding/{PHASE_HISTOGRAM}", f"{site}/encode/domain",
                  f"{site}/rows", f"{site}/train/0", site, "", "dp-sgd"):
        material = [seed, zlib.crc32(label.encode("utf-8"))]
        hyps[f"seeded test source {label!r}"] = _seeded_replay(material)
        hyps[f"seeded test source {label!r} after the row count"] = _seeded_replay(material, skip=((1, z),))
    for k in range(64):  # before f52d53b: site_seed(job seed, site, 2, entries in the ledger)
        hyps[f"default_rng(site_seed(seed, site, 2, {k}))"] = _numpy_replay(site_seed(seed, site, 2, k))
    for salt in range(8):
        hyps[f"default_rng(site_seed(seed, site, {salt}))"] = _numpy_replay(site_seed(seed, site, salt))
    hyps["default_rng(seed)"] = _numpy_replay(seed)
    hyps["default_rng([seed, crc32(site)])"] = _numpy_replay([seed, zlib.crc32(site.encode("utf-8"))])
    return hyps


def replay_attack(recorded: Recorded) -> dict[str, dict[str, float]]:
    """For every site and hypothesis, the share of histogram cells whose exact count the replay recovers.
    The attacker reads the job seed off the plan every site received (it is public)."""
    out: dict[str, dict[str, float]] = {}
    for site, plan, _, release, exact in _histogram_releases(recorded):
        assert plan.seed == JOB_SEED
        noisy = _histogram_vectors(plan, release)
        truth = [v for v, _ in _histogram_vectors(plan, exact)]
        # A noisy release is not its exact counts (what the replay has to undo).
        assert sum(np.sum(v != t) for (v, _), t in zip(noisy, truth)) > 0
        shares = {}
        for name, draw in attacker_hypotheses(plan.seed, site, plan.noise_multiplier).items():
            noise = draw([(v.size, sigma) for v, sigma in noisy])
            hits = sum(int(np.sum(np.rint(v - n) == t)) for (v, _), n, t in zip(noisy, noise, truth))
            shares[name] = hits / sum(t.size for t in truth)
        out[site] = shares
    return out


def test_replaying_seeded_noise_does_not_recover_the_exact_counts(production_run, seeded_run):
    attacked = replay_attack(production_run)
    assert set(attacked) == {CANARY_SITE, OTHER_SITE}
    for site, shares in attacked.items():
        # Chance alone matches a cell now and then (noise within half a count of the replay's).
        best = max(shares, key=shares.get)
        assert shares[best] < 0.25, f"{site}: {best} recovers {shares[best]:.0%} of the exact counts"
    # The control: noise seeded from the public job seed. The attacker who knows the scheme replays it
    # and has every exact count (error 0); the production run resisted that very attack above.
    control = replay_attack(seeded_run)
    for site in (CANARY_SITE, OTHER_SITE):
        assert control[site][f"seeded test source '{site}/encode/{PHASE_HISTOGRAM}'"] == 1.0


# -- 2. empirical audit ---------------------------------------------------------------------------------
def test_audit_maths_on_known_cases():
    assert clopper_pearson_upper(0, 100, alpha=0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(100, 100, alpha=0.05) == 1.0
    # 3 of 10: the exact one-sided bound solves P[Binomial(10, p) <= 3] = alpha.
    p = clopper_pearson_upper(3, 10, alpha=0.05)
    assert binom.cdf(3, 10, p) == pytest.approx(0.05)
    assert epsilon_from_rates(0.01, 0.5, delta=0.0) == pytest.approx(math.log(50))
    assert epsilon_from_rates(0.6, 0.6, delta=0.0) == 0.0
    rng = np.random.default_rng(0)
    # Perfectly separated runs reach the ceiling of 500 bounding runs; identical ones prove little.
    perfect = empirical_epsilon(np.zeros(1000), np.ones(1000), delta=1e-5)
    u = clopper_pearson_upper(0, 500, alpha=0.025)
    assert perfect.epsilon_lower == pytest.approx(math.log((1 - 1e-5 - u) / u)) and perfect.fpr == perfect.fnr == 0
    assert empirical_epsilon(rng.normal(size=1000), rng.normal(size=1000), delta=1e-5).epsilon_lower < 0.5
    # Gaussian, sensitivity 1, sigma 1: its true epsilon at delta 1e-5 is about 4.4 (analytic Gaussian).
    shifted = empirical_epsilon(rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + [0.0, 1.0], delta=1e-5)
    assert shifted.statistic == 1 and shifted.direction == 1 and 0.3 < shifted.epsilon_lower < 4.4


def test_audit_of_the_encoding_release_stays_within_its_ledger_epsilon():
    real = encoding_audit("secret", runs=1000)
    assert 0.5 < real.claimed_epsilon < 1.0  # 3 of the plan's 4 releases (its row count is the 4th) at epsilon 1
    assert real.result.epsilon_lower <= real.claimed_epsilon, real


@pytest.mark.parametrize("variant", ["noise/10", "seeded"])
def test_audit_flags_a_broken_encoding_release(variant):
    broken = encoding_audit(variant, runs=400)
    assert broken.result.epsilon_lower > broken.claimed_epsilon, broken
    if variant == "seeded":  # the replayed statistic (column 1) separates D from D' without error
        assert broken.result.statistic == 1 and broken.result.fpr == broken.result.fnr == 0.0


def test_audit_of_dpsgd_stays_within_the_accountant_epsilon():
    real = dpsgd_audit("secret", runs=1000)
    assert 1.0 < real.claimed_epsilon < 3.0
    assert real.result.epsilon_lower <= real.claimed_epsilon, real


@pytest.mark.parametrize("variant", ["noise/10", "seeded"])
def test_audit_flags_a_broken_dpsgd_step(variant):
    broken = dpsgd_audit(variant, runs=500)
    assert broken.result.epsilon_lower > broken.claimed_epsilon, broken
    if variant == "seeded":
        assert broken.result.statistic == 1 and broken.result.fpr == broken.result.fnr == 0.0


# -- 3. leak scan ---------------------------------------------------------------------------------------
# A number written out: not part of a word, a version string or a longer number.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w]|\.\d)")
# Message fields holding noisy counts: integer-valued, so one may equal a count by chance; they are
# checked as whole vectors against the exact counts instead (test_replaying_...: never equal).
COUNT_FIELDS = ("/" + F_COUNTS, "/" + F_MISSING, "/" + F_ROUNDING)


@dataclass
class Secrets:
    strings: tuple[str, ...]
    numbers: dict[float, str]  # exact values that must never be written
    rates: dict[float, str]  # exact sample rates (also caught when written rounded to 3+ decimals)
    findings: list[str] = field(default_factory=list)

    def check_number(self, x: float, where: str, text: str | None = None) -> None:
        if not math.isfinite(x):
            return
        for value, what in self.numbers.items():
            if x == value:
                self.findings.append(f"{where}: {text or x!r} is the {what}")
        decimals = len(text.split(".")[1].split("e")[0].split("E")[0]) if text and "." in text else None
        for rate, what in self.rates.items():
            rounded = decimals is not None and decimals >= 3 and x == round(rate, decimals)
            if rounded or abs(x - rate) <= 1e-9 * rate:
                self.findings.append(f"{where}: {text or x!r} is the {what}")

    def check_text(self, text: str, where: str) -> None:
        for s in self.strings:
            if s in text:
                self.findings.append(f"{where}: holds {s!r}")
        for token in NUMBER.findall(text):
            self.check_number(float(token), where, token)

    def check_value(self, obj: Any, where: str) -> None:
        """Every string and scalar in a nest of dicts, lists and arrays (dict keys included); arrays of
        noisy counts and weights are left to the vector checks."""
        if isinstance(obj, dict):
            for k, v in obj.items():
                self.check_text(str(k), f"{where} key")
                if not str(k).endswith(COUNT_FIELDS):
                    self.check_value(v, f"{where}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                self.check_value(v, f"{where}[{i}]")
        elif isinstance(obj, str):
            self.check_text(obj, where)
        elif isinstance(obj, (bool, np.bool_)) or obj is None:
            pass
        elif isinstance(obj, (int, float, np.integer, np.floating)):
            self.check_number(float(obj), where)
        elif isinstance(obj, np.ndarray):
            if obj.dtype.kind in ("U", "S", "O"):
                for i, v in enumerate(obj.ravel()):
                    self.check_value(v, f"{where}[{i}]")
        else:
            self.check_text(repr(obj), where)


def secrets_of_the_job() -> Secrets:
    """What no output may hold: the canary's values, every site's exact row counts (training rows,
    all rows, and their totals) and its exact sample rate batch / training rows."""
    numbers = dict(CANARY_NUMBERS)
    rates = {}
    train_total = all_total = 0
    for site in (CANARY_SITE, OTHER_SITE):
        n_train, n_all = len(training_rows(site)), len(raw_site(site))
        numbers[float(n_train)] = f"exact training row count of {site}"
        numbers[float(n_all)] = f"exact row count of {site}"
        rates[BATCH / n_train] = f"exact sample rate of {site} ({BATCH} / {n_train})"
        train_total, all_total = train_total + n_train, all_total + n_all
    numbers[float(train_total)] = "exact total of training rows"
    numbers[float(all_total)] = "exact total of rows"
    return Secrets(strings=(CANARY_CATEGORY,), numbers=numbers, rates=rates)


def scan_model_file(path: Path, secrets: Secrets) -> dict:
    """The model file's bytes (canary strings), its safetensors header and manifest (every token)."""
    data = path.read_bytes()
    for s in secrets.strings:
        if s.encode("utf-8") in data:
            secrets.findings.append(f"{path.name}: its bytes hold {s!r}")
    (size,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + size].decode("utf-8")
    secrets.check_text(header, f"{path.name} header")
    manifest = json.loads(json.loads(header)["__metadata__"]["manifest"])
    secrets.check_value(manifest, f"{path.name} manifest")
    return manifest


def write_job(tmp: Path) -> Path:
    schema_path = tmp / "schema.json"
    schema_path.write_text(canary_schema().to_json())
    csv = tmp / f"{CANARY_SITE}.csv"
    raw_site(CANARY_SITE).to_csv(csv, index=False)
    config = tmp / "job.toml"
    config.write_text(
        f"seed = {JOB_SEED}\nschema = '{schema_path}'\nledger_dir = '{tmp / 'ledgers'}'\n"
        "[model]\nname = 'ctgan'\n"
        "[privacy]\nepsilon = 1.0\ndelta = 1e-5\npreprocessing_share = 0.5\n"
        f"[training]\nrounds = 1\nlocal_epochs = 0.5\nbatch_size = {BATCH}\n"
        f"[sites.{CANARY_SITE}]\nsource = '{csv}'\n[sites.{OTHER_SITE}]\nsource = '{heart_site_path(OTHER_SITE)}'\n")
    return config


def test_no_output_of_a_dp_job_holds_the_canary_or_exact_counts(production_run, tmp_path, cli):
    secrets = secrets_of_the_job()
    # Through the CLI, as a user runs it: every file written, and what it prints (stdout and stderr).
    config = write_job(tmp_path)
    before = set(tmp_path.rglob("*"))
    result = cli("train", config, "-o", tmp_path / "model.fedtab")
    assert result.exit_code == 0, result.output
    secrets.check_text(result.output, "fedtab train output")
    written = sorted(p for p in set(tmp_path.rglob("*")) - before if p.is_file())
    assert tmp_path / "model.fedtab" in written and len(list((tmp_path / "ledgers").rglob("ledger.jsonl"))) == 2
    for path in written:
        if path.suffix == ".fedtab":
            manifest = scan_model_file(path, secrets)
            assert manifest["ledgers"] and manifest["site_weights"]
        else:
            secrets.check_text(path.read_text(encoding="utf-8"), path.name)
    # In process: every progress event and every message the coordinator received (and sent).
    for event, info in production_run.events:
        secrets.check_value(info, f"progress event {event!r}")
    for kind, site, body, reply in production_run.messages:
        secrets.check_value(reply, f"{kind} reply of {site}")
        secrets.check_value(body, f"{kind} request to {site}")  # what the coordinator made of the replies
    kinds = {kind for kind, *_ in production_run.messages}
    assert {"schema", "encode", "setup", "train", "ledger"} <= kinds
    assert not secrets.findings, "\n".join(secrets.findings)
    # The count vectors left out above: never the exact ones (checked for the histogram phase in the
    # replay test; the DP set union's keys are strings and were scanned: the canary's category is not there).
    for site, plan, _, release, exact in _histogram_releases(production_run):
        for (v, _), (t, _) in zip(_histogram_vectors(plan, release), _histogram_vectors(plan, exact)):
            assert not np.array_equal(v, t) or t.size == 0


def test_the_scan_finds_what_it_looks_for():
    """The scanner itself: a message holding the canary, a count or a rounded sample rate is caught."""
    secrets = secrets_of_the_job()
    n_train = len(training_rows(OTHER_SITE))
    secrets.check_value({"rows": n_train}, "m1")
    secrets.check_value({"note": f"trained on {n_train} rows at rate {BATCH / n_train:.4f}"}, "m2")
    secrets.check_value({"thal/keys": ["3", CANARY_CATEGORY]}, "m3")
    secrets.check_value({"x": np.float64(941.0)}, "m4")
    assert [f.split(":")[0] for f in secrets.findings] == ["m1/rows", "m2/note", "m2/note", "m3/thal/keys[1]", "m4/x"]
    clean = secrets_of_the_job()
    clean.check_value({"age/counts": np.array([float(n_train)]), "version": "2.13.0", "eps": 0.99}, "ok")
    assert not clean.findings

"""Leak scan of evaluation and release (issue 19): a canary row with unique values and a unique
category at one site, a DP model trained through the CLI, then `fedtab release` and `fedtab evaluate`
through the CLI and an evaluation over a recording transport. Nothing the coordinator receives or
publishes (the public report, HTML and JSON; the audit record; the CLI output; every evaluation
request and reply) holds the canary's values, its category (held by one row: below the DP threshold),
a site's exact row counts (training, holdout, all, and totals) or a real percentile of a site's
columns; each site's own report still holds every figure. The broken control: a site that replies as
the old protocol did (its figures) is caught by the same scan.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import fedtab
from fedtab.api import _make_worker
from fedtab.assess import evaluate_on, sampling_settings
from fedtab.federation.site_evaluation import SiteOutcome
from tests.conftest import lenient_policy_file, lenient_site_policy
from tests.test_dp_attacks import (
    CANARY_SITE, OTHER_SITE, RecordingTransport, canary_schema, raw_site, secrets_of_the_job, training_rows, write_job,
)

ROWS = 300  # sampled rows: given explicitly (the default, the sum of the DP row estimates, may round to an exact count)
STAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?Z?")  # times of day are not counts


def evaluation_secrets():
    """The training-time secrets plus the holdout counts and the canary site's real 1st and 99th
    percentiles that no table drawn at the data's resolution holds by chance (finer than 0.1)."""
    secrets = secrets_of_the_job()
    holdout_total = 0
    for site in (CANARY_SITE, OTHER_SITE):
        n_hold = len(raw_site(site)) - len(training_rows(site))
        secrets.numbers[float(n_hold)] = f"exact holdout row count of {site}"
        holdout_total += n_hold
    secrets.numbers[float(holdout_total)] = "exact total of holdout rows"
    rows = training_rows(CANARY_SITE)
    for spec in canary_schema().columns:
        if spec.type != "numerical":
            continue
        x = rows[spec.name].dropna().to_numpy(dtype=float)
        for q in (1, 99):
            v = float(np.percentile(x, q))
            if round(v, 1) != v:
                secrets.numbers[v] = f"real {q}th percentile of {spec.name} at {CANARY_SITE}"
    assert any("percentile" in what for what in secrets.numbers.values())
    return secrets


def scan_document(secrets, path: Path, table_stats: dict) -> None:
    """Every token of a published file. The synthetic table's own statistics are numbers of synthetic
    rows (a median heart rate of 124 equals a row count by chance): that section is checked to be a
    function of the sampled table alone (recomputed from it) and scanned for the canary's strings."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        doc = json.loads(text)
        doc.pop("time_utc", None)
        section = doc.pop("synthetic_table", None)
        if section is not None:
            assert section == json.loads(json.dumps(table_stats)), f"{path.name}: not the sampled table's statistics"
            for string in _strings(section):
                secrets.check_text(string, f"{path.name} table")
        secrets.check_value(doc, path.name)
    else:
        text = STAMP.sub(" ", text)
        start = text.find("<h2>The synthetic table</h2>")
        if start >= 0:
            end = text.find("<h2>", start + 4)
            for token in re.findall(r"[A-Za-z][\w-]*", text[start:end]):
                secrets.check_text(token, f"{path.name} table section")
            text = text[:start] + text[end:]
        secrets.check_text(text, path.name)


def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [str(k) for k in obj] + [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


@pytest.fixture(scope="module")
def trained_job(tmp_path_factory):
    from typer.testing import CliRunner

    from fedtab.cli import app

    tmp = tmp_path_factory.mktemp("leaks")
    config = write_job(tmp)
    # Three evaluations of one model: the sites' own release policy and the coordinator's are lenient (a
    # chance privacy refusal would stop the later ones; this test is about what leaves, not the verdict).
    config.write_text(config.read_text().replace("source = ", f"release_policy = '{lenient_policy_file()}'\nsource = "))
    result = CliRunner().invoke(app, ["train", str(config), "-o", str(tmp / "model.fedtab"), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp, config


def _recorded_evaluation(tmp: Path):
    synth = fedtab.load(tmp / "model.fedtab")
    sites = {CANARY_SITE: str(tmp / f"{CANARY_SITE}.csv"), OTHER_SITE: None}
    from fedtab.datasets import heart_site_path

    sites[OTHER_SITE] = str(heart_site_path(OTHER_SITE))
    workers = {s: _make_worker(s, fedtab.api._site_source(s, p), ledger_dir=tmp / "ledgers", policy=lenient_site_policy())
               for s, p in sites.items()}
    transport = RecordingTransport(workers)
    evaluate_on(transport, synth, sampling_settings(synth, n=ROWS, seed=4, quantile_map=False), target="num",
                policy=lenient_policy_file())
    return transport.messages


def test_nothing_published_or_sent_in_evaluation_holds_the_canary_or_exact_counts(trained_job, cli):
    tmp, config = trained_job
    secrets = evaluation_secrets()
    before = set(tmp.rglob("*"))
    lenient = lenient_policy_file()
    out = cli("release", config, "--model", tmp / "model.fedtab", "--out", tmp / "rel", "-n", str(ROWS), "--target", "num",
              "--policy", lenient)
    assert out.exit_code in (0, 10), out.output
    secrets.check_text(STAMP.sub(" ", out.output), "fedtab release output")
    out = cli("evaluate", tmp / "model.fedtab", config, "-o", tmp / "public.html", "-n", str(ROWS), "--target", "num",
              "--policy", lenient)
    assert out.exit_code == 0, out.output
    secrets.check_text(STAMP.sub(" ", out.output), "fedtab evaluate output")
    published = [tmp / "rel" / "report.html", tmp / "rel" / "report.json", tmp / "rel" / "audit.json",
                 tmp / "public.html", tmp / "public.json"]
    from fedtab.public_report import table_statistics

    model = fedtab.load(tmp / "model.fedtab")
    stats = table_statistics(model.sample(ROWS, seed=model.seed), model.schema_)
    for path in published:
        scan_document(secrets, path, stats)
    messages = _recorded_evaluation(tmp)
    assert {kind for kind, *_ in messages} == {"evaluate"} and len(messages) == 2
    for kind, site, body, reply in messages:
        secrets.check_value(reply, f"{kind} reply of {site}")
        secrets.check_value({k: v for k, v in body.items() if k != "model"}, f"{kind} request to {site}")
    assert not secrets.findings, "\n".join(secrets.findings)
    # The site's own report (written at the site) still shows every figure, its exact counts included.
    local = sorted(p for p in set(tmp.rglob("*")) - before if "reports" in p.parts and p.suffix == ".json")
    assert {p.parent.parent.name for p in local} == {CANARY_SITE, OTHER_SITE}
    own = json.loads([p for p in local if CANARY_SITE in p.parts][0].read_text())["evaluation"]["sites"][CANARY_SITE]
    assert own["n_train"] == len(training_rows(CANARY_SITE)) and 0 <= own["figures"]["fidelity.quality"] <= 1
    site_secrets = evaluation_secrets()
    site_secrets.check_value(own, "site report")
    assert site_secrets.findings  # the scan would see them, had they left


def test_the_scan_catches_a_site_that_sends_its_figures(trained_job, monkeypatch):
    """The broken control: a site replying with its figures, as evaluation did before, is caught."""
    tmp, _ = trained_job
    honest = SiteOutcome.reply

    def leaky(self, **kw):
        return {**honest(self, **kw), "figures": self.evaluation.to_dict()}

    monkeypatch.setattr(SiteOutcome, "reply", leaky)
    secrets = evaluation_secrets()
    for kind, site, body, reply in _recorded_evaluation(tmp):
        secrets.check_value(reply, f"{kind} reply of {site}")
    assert any("exact training row count" in f for f in secrets.findings)

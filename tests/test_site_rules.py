"""A site's own rules and its lasting ledger: total budget across jobs (also after kill -9), delta
caps, non-DP refused unless the site opts in; a refusal releases nothing and names its rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fedtab
from fedtab.datasets import heart_schema, load_heart_sites
from fedtab.errors import ConfigError, PrivacyBudgetError
from fedtab.federation.site import ENCODE, SCHEMA
from fedtab.privacy.book import BOOK_FILE, LedgerBook, SitePolicy
from tests.conftest import lenient_policy_file, lenient_site_policy

SITES = ("cleveland", "hungary")


def _sites():
    every = load_heart_sites()
    return {s: every[s] for s in SITES}


def _fit(epsilon, *, seed=0, recorder=None, **kw):
    synth = fedtab.FederatedSynthesizer("ctgan", epsilon=epsilon, rounds=1, local_epochs=1.0, seed=seed,
                                        schema=heart_schema(), **kw)
    if recorder is not None:
        synth.progress = recorder
    return synth.fit(_sites())


def _book_lines(directory, site):
    path = directory / site / BOOK_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_total_budget_adds_up_across_jobs_and_a_second_job_is_refused_before_any_release(tmp_path, caplog):
    policy = SitePolicy(max_total_epsilon=1.0)
    first = _fit(0.9, ledger_dir=tmp_path, site_policy=policy)
    assert all(l.epsilon <= 0.9 + 1e-9 for l in first.privacy_ledger.values())
    before = {s: _book_lines(tmp_path, s) for s in SITES}
    assert all(any(r["type"] == "close" for r in lines) for lines in before.values())
    events = []
    # Another seed is another job: it does not get a fresh budget.
    with pytest.raises(PrivacyBudgetError, match="rule max_total_epsilon") as info:
        _fit(0.9, seed=1, ledger_dir=tmp_path, site_policy=policy, recorder=lambda e, i: events.append((e, i)))
    assert "Nothing was released" in str(info.value)
    # The refusal came at schema agreement: no encoding phase started, the books hold no new record.
    assert [i.get("name") for e, i in events if e == "phase"] == ["schema agreement"]
    assert {s: _book_lines(tmp_path, s) for s in SITES} == before
    # A small job that fits in what is left is admitted (what job 1 spent is what counts once it ended).
    spent = max(LedgerBook(s, tmp_path / s).total_epsilon() for s in SITES)
    assert spent == pytest.approx(0.9, abs=1e-3)


def test_a_site_killed_mid_job_remembers_it_after_restart(tmp_path):
    """kill -9 during training: the job counts with its whole budget (it never ended), so the next
    job of 0.9 under a total of 1.0 is refused by the restarted site."""
    script = textwrap.dedent(f"""
        import fedtab
        from fedtab.datasets import heart_schema, load_heart_sites
        sites = {{s: df for s, df in load_heart_sites().items() if s in {SITES!r}}}
        fedtab.FederatedSynthesizer("ctgan", epsilon=0.9, rounds=400, seed=0, schema=heart_schema(),
                                    ledger_dir={str(tmp_path)!r},
                                    site_policy=fedtab.SitePolicy(max_total_epsilon=1.0)).fit(sites)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = _book_lines(tmp_path, SITES[0]) if (tmp_path / SITES[0] / BOOK_FILE).exists() else []
            if any(r["type"] == "spend" and r["entry"]["phase"].startswith("training/") for r in lines):
                break
            assert proc.poll() is None, "the training job ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the job never reached training")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    book = LedgerBook(SITES[0], tmp_path / SITES[0])  # the restarted site reads its book back
    assert book.total_epsilon() == pytest.approx(0.9)
    with pytest.raises(PrivacyBudgetError, match="rule max_total_epsilon"):
        _fit(0.9, seed=1, ledger_dir=tmp_path, site_policy=SitePolicy(max_total_epsilon=1.0))


def test_a_torn_last_line_is_dropped_and_the_book_goes_on(tmp_path):
    book = LedgerBook("a", tmp_path)
    book.admit("job1", epsilon=0.5, delta=1e-6, policy=SitePolicy())
    with open(tmp_path / BOOK_FILE, "ab") as f:
        f.write(b'{"format": "fedtab.site-ledger/1", "type": "spe')  # a kill -9 during a write
    again = LedgerBook("a", tmp_path)
    assert again.admitted("job1") and again.total_epsilon() == pytest.approx(0.5)
    again.admit("job2", epsilon=0.2, delta=1e-6, policy=SitePolicy())
    assert LedgerBook("a", tmp_path).total_epsilon() == pytest.approx(0.7)


def test_non_dp_jobs_are_refused_unless_the_site_allows_them():
    with pytest.raises(PrivacyBudgetError, match="rule allow_non_dp"):
        _fit(None)
    synth = _fit(None, site_policy=SitePolicy(allow_non_dp=True))
    assert all(l.epsilon == float("inf") for l in synth.privacy_ledger.values())
    # One site opting in is not enough.
    with pytest.raises(PrivacyBudgetError, match="site 'hungary' refuses the job .rule allow_non_dp"):
        _fit(None, site_policy={"cleveland": SitePolicy(allow_non_dp=True), "hungary": SitePolicy()})


def test_delta_caps_are_the_sites_own(caplog):
    with pytest.raises(PrivacyBudgetError, match=r"rule max_delta: the job asks for delta 0.001, this site allows at most 1e-05"):
        _fit(1.0, delta=1e-3)
    # A site that allows a larger delta still holds it below 1 / (10 x its DP row estimate + 2 sds)
    # (~240 rows, sd ~140 here: ~2e-4); the check reads a private row count that never leaves the site.
    events = []
    with pytest.raises(PrivacyBudgetError, match=r"rule max_delta: delta 0.01 is not below 1 / \(10 x the site's DP row"):
        _fit(1.0, delta=1e-2, site_policy=SitePolicy(max_delta=0.05), recorder=lambda e, i: events.append((e, i)))
    # Refused at the first encoding request, before any statistic left a site (secure aggregation's key
    # rounds, which carry nothing from the rows, may come before it).
    assert [i.get("name") for e, i in events if e == "phase" and "secure aggregation" not in i.get("name", "")] \
        == ["schema agreement", "federated encoding"]
    assert _fit(1.0, delta=1e-4, site_policy=SitePolicy(max_delta=1e-3)).privacy_ledger["cleveland"].epsilon <= 1.0


def test_per_job_cap_and_policy_validation():
    with pytest.raises(PrivacyBudgetError, match="rule max_epsilon: the job asks for epsilon 2, this site allows at most 1"):
        _fit(2.0, site_policy=SitePolicy(max_epsilon=1.0))
    with pytest.raises(ConfigError, match="'max_total_epsilon' must be a number > 0"):
        SitePolicy(max_total_epsilon=-1)
    with pytest.raises(ConfigError, match="'max_delta' must be a number in"):
        SitePolicy(max_delta=2)


def test_under_dp_a_site_sends_conformance_only_and_never_infers_a_schema():
    every = load_heart_sites()
    worker = fedtab.api._make_worker("cleveland", every["cleveland"])
    job = {"seed": 0, "holdout": 0.2, "missing_markers": ["?"], "epsilon": 1.0, "delta": 1e-5, "site_column": None}
    state: dict = {}
    reply = worker(SCHEMA, {"job": job, "schema": heart_schema().to_dict()}, state)
    assert reply == {"columns": []}
    bad = every["cleveland"].copy()
    bad.loc[3, "age"] = 250  # outside the declared bounds
    worker = fedtab.api._make_worker("cleveland", bad)
    reply = worker(SCHEMA, {"job": job, "schema": heart_schema().to_dict()}, {})
    assert reply == {"columns": ["age"]}  # the column's name, not the value or the row
    with pytest.raises(ConfigError, match="under DP a site does not infer a schema"):
        worker(SCHEMA, {"job": {**job, "seed": 5}, "schema": None}, {})
    with pytest.raises(ConfigError, match="Under DP the consortium declares its schema"):
        fedtab.FederatedSynthesizer("ctgan", epsilon=1.0, rounds=1).fit(_sites())
    assert ENCODE == "encode"


def test_evaluations_of_a_job_are_capped_and_counted_on_the_lasting_ledger(tmp_path):
    policy = lenient_site_policy(max_evaluations=1)  # the cap, not the gate, is what stops the second table
    synth = _fit(1.0, ledger_dir=tmp_path, site_policy=policy)
    fedtab.evaluate(synth, _sites(), n=80, seed=1, ledger_dir=tmp_path, policy=lenient_policy_file())
    lines = _book_lines(tmp_path, "cleveland")
    assert [r["type"] for r in lines].count("evaluation") == 1
    # Another table of the same job (another sampling seed) is another evaluation: refused past the cap.
    with pytest.raises(PrivacyBudgetError, match="rule max_evaluations"):
        fedtab.evaluate(synth, _sites(), n=80, seed=2, ledger_dir=tmp_path)
    with pytest.raises(ConfigError, match="'max_evaluations' must be a whole number"):
        SitePolicy(max_evaluations=-1)


def test_a_dp_run_configuration_without_a_schema_is_refused_before_any_work(tmp_path):
    from fedtab.config import load_config

    cfg = tmp_path / "job.toml"
    cfg.write_text('[privacy]\nepsilon = 1.0\n[sites.a]\nsource = "a.csv"\n')
    with pytest.raises(ConfigError, match="'schema' must name the consortium's schema file under DP"):
        load_config(cfg)
    cfg.write_text('[sites.a]\nsource = "a.csv"\n')  # without DP the sites may still agree on an inferred one
    assert load_config(cfg).schema_path is None

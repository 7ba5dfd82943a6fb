"""Evaluation at the sites: a site evaluates only tables it draws from the model it trained, counts each
evaluation on its lasting ledger, decides every check at home and sends back its verdicts only.

Attacks a curious coordinator can mount, each with the control that shows the attack would work if
the rule were missing: a probe table sent in place of the model (the old protocol scored it), a model
file that is not the one the sites trained (tampered weights, another job's model), a table drawn with
other settings than the one released, re-sampling after a privacy refusal, evaluating past the cap.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import fedtab
from fedtab.api import _make_worker
from fedtab.assess import ConsortiumEvaluation, evaluate_on, sampling_settings
from fedtab.datasets import heart_schema, load_heart_sites
from fedtab.errors import PrivacyBudgetError, ReleaseRefusedError
from fedtab.federation.site import EVALUATE
from fedtab.federation.site_evaluation import table_sha256
from fedtab.federation.transport import InProcessTransport
from fedtab.privacy.book import LedgerBook, job_key
from fedtab.release import ReleasePolicy
from tests.conftest import lenient_policy_file, lenient_site_policy

SITES = ("hungary", "switzerland")
FAST = dict(rounds=1, local_epochs=0.5, batch_size=128, seed=11, preprocessing_share=0.5)


@pytest.fixture(scope="module")
def sites():
    return {k: v for k, v in load_heart_sites().items() if k in SITES}


@pytest.fixture(scope="module")
def trained(sites, tmp_path_factory):
    ledgers = tmp_path_factory.mktemp("ledgers")
    # Several evaluations of one model: the sites' own release policy is lenient (a chance privacy refusal
    # would stop the later ones); the tests below pass the coordinator's policy where it matters.
    synth = fedtab.FederatedSynthesizer("ctgan", epsilon=1.0, schema=heart_schema(), ledger_dir=ledgers,
                                        site_policy=lenient_site_policy(), **FAST).fit(sites)
    return synth, ledgers


def _worker(site, sites, ledgers, **policy):
    return _make_worker(site, sites[site], policy=lenient_site_policy(**policy), ledger_dir=ledgers)


def frame_to_bytes(frame: pd.DataFrame) -> np.ndarray:
    """A table as the old protocol carried it (Parquet bytes)."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _body(synth, **sampling):
    return {"job": synth.job_.site_job(), "model": np.frombuffer(synth.to_bytes(), dtype=np.uint8),
            "sampling": {"n": 200, "seed": 1, "quantile_map": False, **sampling}, "target": "num",
            "policy": ReleasePolicy.load(lenient_policy_file()).to_dict()}


def test_each_site_records_the_final_model_it_trained(trained, tmp_path):
    synth, ledgers = trained
    key = job_key(synth.job_.site_job())
    from fedtab.modelfile import model_identity, read_bundle

    digest = model_identity(read_bundle(synth.to_bytes()))
    for site in SITES:
        record = LedgerBook(site, ledgers / site).model_of(key)
        assert record == {"digest": digest, "sites": sorted(SITES)}
    # The model file written and read back has the same identity (the encoding survives the round trip).
    loaded = fedtab.load(synth.save(tmp_path / "m.fedtab"))
    assert model_identity(read_bundle(loaded.to_bytes())) == digest


def test_a_site_draws_the_table_the_coordinator_releases_and_sends_only_verdicts(trained, sites, tmp_path):
    synth, ledgers = trained
    workers = {s: _worker(s, sites, ledgers) for s in SITES}
    sampling = sampling_settings(synth, n=200, seed=1, quantile_map=False)
    ev = evaluate_on(InProcessTransport(workers), synth, sampling, target="num", policy=lenient_policy_file())
    assert isinstance(ev, ConsortiumEvaluation) and set(ev.sites) == set(SITES)
    table = synth.sample(200, seed=1)
    for site, v in ev.sites.items():
        assert v.table_sha256 == table_sha256(table)  # the site drew exactly the coordinator's table
        assert all(isinstance(ok, bool) for ok in v.checks.values()) and "quality" in v.checks
        # ... and kept its figures: the site's own outcome holds them, computed on that very table.
        local = workers[site].last_evaluation.evaluation.sites[site]
        assert local.n_synthetic == 200 and 0 <= local.figures()["fidelity.quality"] <= 1
    # Each site's full report, written at the site only.
    for site in SITES:
        assert len(list((ledgers / site / "reports").glob("*.html"))) >= 1


def test_a_probe_table_is_refused_and_the_old_protocol_would_have_scored_it(trained, sites):
    synth, ledgers = trained
    site = "hungary"
    worker = _worker(site, sites, ledgers)
    book = LedgerBook(site, ledgers / site)
    key = job_key(synth.job_.site_job())
    before = book.evaluations(key)
    probe = sites[site].head(50)  # the coordinator's table: here the site's own rows

    body = {**_body(synth), "synthetic": frame_to_bytes(probe)}
    with pytest.raises(PrivacyBudgetError, match="draws itself"):
        worker(EVALUATE, body, {})
    body = {k: v for k, v in _body(synth).items() if k != "model"}
    body["synthetic"] = frame_to_bytes(probe)
    with pytest.raises(PrivacyBudgetError, match="draws itself"):
        worker(EVALUATE, body, {})
    assert LedgerBook(site, ledgers / site).evaluations(key) == before  # nothing counted, nothing left
    # Control: scoring the probe the way the old protocol did reads the site's rows straight back.
    from evaluation import evaluate_site

    result = evaluate_site(probe, sites[site].tail(50), probe, synth.schema_, seed=0)
    assert result.disclosure.exact_copy_rate == 1.0


def test_a_model_file_other_than_the_trained_one_is_refused(trained, sites):
    synth, ledgers = trained
    worker = _worker("switzerland", sites, ledgers)
    from fedtab.api import from_bundle
    from fedtab.modelfile import read_bundle

    other = from_bundle(read_bundle(synth.to_bytes()))
    name = sorted(other.weights_)[0]
    other.weights_ = {**other.weights_, name: other.weights_[name] + np.float32(1e-3)}
    with pytest.raises(PrivacyBudgetError, match="not the final model"):
        worker(EVALUATE, _body(other) | {"job": synth.job_.site_job()}, {})
    # Another job's model (same settings, trained again: a new job on the sites' books).
    with pytest.raises(PrivacyBudgetError, match="no record"):
        worker(EVALUATE, _body(synth) | {"job": {**synth.job_.site_job(), "job_id": "another-run"}}, {})
    # Control: the trained model itself is evaluated.
    reply = worker(EVALUATE, _body(synth), {})
    assert set(reply) == {"checks", "passed", "powered", "table_sha256", "evaluation", "max_evaluations"}


def test_a_table_other_than_the_evaluated_one_is_not_released(trained, sites, tmp_path):
    from fedtab.assess import gate_and_write

    synth, ledgers = trained
    workers = {s: _worker(s, sites, ledgers) for s in SITES}
    lenient = ReleasePolicy.load(lenient_policy_file())
    ev = evaluate_on(InProcessTransport(workers), synth, sampling_settings(synth, n=200, seed=1, quantile_map=False),
                     target="num", policy=lenient)
    other = synth.sample(200, seed=2)  # not the table the sites judged
    with pytest.raises(ReleaseRefusedError) as refused:
        gate_and_write(synth, other, ev, tmp_path / "rel", policy=lenient)
    assert "same_table" in {c.name for c in refused.value.failed}
    assert not (tmp_path / "rel" / "synthetic.csv").exists()


def fedtab_policy():
    from fedtab.release import ReleasePolicy

    return ReleasePolicy.load()


def test_after_a_privacy_refusal_no_other_table_of_the_model_is_evaluated(sites, tmp_path):
    synth = fedtab.FederatedSynthesizer("ctgan", epsilon=1.0, schema=heart_schema(), ledger_dir=tmp_path,
                                        site_policy=lenient_site_policy(), **FAST).fit(sites)
    # A coordinator policy a table fails on a privacy check (a DCR share of at least 0.6 asked for; chance
    # is 0.5): refused ...
    strict = dataclasses.replace(fedtab_policy(), dcr_share_min=0.6)
    ev = fedtab.evaluate(synth, sites, n=200, seed=1, target="num", policy=strict)
    assert not ev.passed and any(not v.checks["dcr_share_low"] for v in ev.sites.values())
    # ... and sampling again (another seed, the shipped policy) does not make the model evaluable.
    with pytest.raises(PrivacyBudgetError, match="already failed a privacy check"):
        fedtab.evaluate(synth, sites, n=200, seed=2, target="num")
    # Control: a fidelity refusal does not stop the next table (a better sample may pass).
    synth2 = fedtab.FederatedSynthesizer("ctgan", epsilon=1.0, schema=heart_schema(), ledger_dir=tmp_path,
                                         site_policy=lenient_site_policy(), **FAST).fit(sites)
    picky = dataclasses.replace(ReleasePolicy.load(lenient_policy_file()), min_quality=0.999)
    assert not fedtab.evaluate(synth2, sites, n=200, seed=1, target="num", policy=picky).passed
    again = fedtab.evaluate(synth2, sites, n=200, seed=2, target="num", policy=picky)
    assert {v.evaluation for v in again.sites.values()} == {2}


def test_a_site_never_applies_a_looser_privacy_rule_than_its_own(trained, sites, tmp_path):
    from fedtab.federation.site_evaluation import site_release_policy

    loose = dataclasses.replace(fedtab_policy(), max_mia_auc=1.0, max_exact_copy_rate=1.0, family_alpha=0.01,
                                min_quality=0.0)
    own = fedtab_policy()
    used = site_release_policy(loose.to_dict(), None, n_sites=4)
    assert used.max_mia_auc == own.max_mia_auc and used.max_exact_copy_rate == own.max_exact_copy_rate
    assert used.family_alpha == pytest.approx(own.family_alpha / 4)
    assert used.min_quality == 0.0  # fidelity is the consortium's to set
    stricter = tmp_path / "site_policy.toml"
    stricter.write_text("[disclosure]\nmax_mia_auc = 0.55\n")
    assert site_release_policy(None, str(stricter), n_sites=2).max_mia_auc == 0.55

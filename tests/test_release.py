"""The release gate: refuses a synthesizer that copies training rows, passes an independent sample,
fails closed on missing figures, and writes an audit record that pins the exact files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from evaluation import combine
from fedtab.errors import ConfigError, ReleaseRefusedError
from fedtab.release import ReleasePolicy, audit_record, decide, enforce, write_audit
from tests.test_evaluation_data import copying_evaluation, independent_evaluation

PRIVACY_CHECKS = {"dcr_share", "exact_copies", "mia_auc", "singling_out_risk", "linkability_risk", "inference_risk"}


def _one_site(ev, name="cleveland"):
    return combine({name: ev}, {name: ev.n_train})


def test_default_policy_file_matches_the_documented_defaults():
    assert ReleasePolicy.load() == ReleasePolicy()
    d = ReleasePolicy().to_dict()
    assert ReleasePolicy.from_dict(d) == ReleasePolicy()
    assert d["privacy"] == {"require_dp": True, "max_epsilon_per_site": 10.0}


def test_copying_synthesizer_is_refused_and_the_failed_checks_are_named():
    verdict = decide(ReleasePolicy(), _one_site(copying_evaluation()), {"cleveland": 3.0})
    assert not verdict.released
    failed = {c.name for c in verdict.failed}
    assert {"exact_copies", "dcr_share", "mia_auc"} <= failed
    copies = next(c for c in verdict.checks if c.name == "exact_copies")
    assert copies.value == 1.0 and "cleveland" in copies.message
    with pytest.raises(ReleaseRefusedError) as e:
        enforce(verdict)
    assert "exact_copies" in str(e.value) and "mia_auc" in str(e.value)
    assert {c.name for c in e.value.failed} == failed
    assert e.value.exit_code == 10


def test_independent_sample_passes_every_privacy_check_and_is_released():
    verdict = decide(ReleasePolicy(), _one_site(independent_evaluation()), {"cleveland": 3.0})
    by_name = {c.name: c for c in verdict.checks}
    assert PRIVACY_CHECKS <= set(by_name)
    assert all(by_name[n].passed for n in PRIVACY_CHECKS), [by_name[n].message for n in PRIVACY_CHECKS]
    assert verdict.released, [c.message for c in verdict.failed]
    enforce(verdict)  # does not raise


def test_privacy_checks_read_the_worst_site_not_the_average():
    ev = combine({"good": independent_evaluation(), "leaky": copying_evaluation()}, {"good": 10_000, "leaky": 10})
    verdict = decide(ReleasePolicy(), ev, {"good": 1.0, "leaky": 1.0})
    copies = next(c for c in verdict.checks if c.name == "exact_copies")
    assert not copies.passed and "leaky" in copies.message  # the weighted mean would be ~0.001


def test_dp_requirement_and_epsilon_limit():
    ev = _one_site(independent_evaluation())
    for ledger in ({"cleveland": math.inf}, {}):  # a non-DP site, or no ledger at all
        v = decide(ReleasePolicy(), ev, ledger)
        assert {c.name for c in v.failed} == {"dp_required", "epsilon_per_site"}
    v = decide(ReleasePolicy(max_epsilon_per_site=2.0), ev, {"cleveland": 8.0})
    eps = next(c for c in v.checks if c.name == "epsilon_per_site")
    assert not eps.passed and eps.value == 8.0 and eps.threshold == "<= 2"
    assert decide(ReleasePolicy(require_dp=False), ev, {"cleveland": math.inf}).released


def _with_disclosure(ev, **changes):
    return replace(ev, disclosure=replace(ev.disclosure, **changes))


def test_a_site_s_chance_level_raises_its_privacy_thresholds_and_nothing_else():
    from evaluation.chance import ChanceLevel

    ind = independent_evaluation()
    level = lambda at: ChanceLevel(mean=0.5, sd=0.06, level=at, resplits=400)  # noqa: E731
    # Above the policy's 0.60 but within what random re-splits of this small site reach: passes.
    small = _with_disclosure(ind, mia_auc=0.63, mia_auc_chance=level(0.65), dcr_share=0.64,
                             dcr_share_chance=level(0.66))
    v = decide(ReleasePolicy(), _one_site(small), {"cleveland": 1.0})
    mia = next(c for c in v.checks if c.name == "mia_auc")
    assert v.released and mia.passed and "chance level 0.650" in mia.message and "0.6 in the policy" in mia.message
    assert mia.threshold == "<= 0.6 or the site's chance level"
    # Beyond the chance level: refused, the site and both limits named.
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(small, mia_auc=0.66)), {"cleveland": 1.0})
    mia = next(c for c in v.checks if c.name == "mia_auc")
    assert not mia.passed and mia.value == 0.66 and "cleveland" in mia.message and "over it" in mia.message
    # The policy can switch it off; and a site that measured no level keeps the policy's threshold.
    v = decide(ReleasePolicy(chance_levels=False), _one_site(small), {"cleveland": 1.0})
    assert {c.name for c in v.failed} == {"mia_auc", "dcr_share"}
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(small, mia_auc_chance=None)), {"cleveland": 1.0})
    assert {c.name for c in v.failed} == {"mia_auc"}
    # A level below the policy's threshold never tightens it.
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, mia_auc=0.58, mia_auc_chance=level(0.55))),
               {"cleveland": 1.0})
    assert v.released
    # The lower DCR bound and the exact-copy check ignore the levels.
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, dcr_share=0.2, dcr_share_chance=level(0.7))),
               {"cleveland": 1.0})
    dcr = next(c for c in v.checks if c.name == "dcr_share")
    assert not dcr.passed and dcr.value == 0.2 and "below 0.3" in dcr.message
    # Each site against its own limit: the worst one over its limit is the one named.
    two = combine({"big": _with_disclosure(ind, mia_auc=0.59), "small": small}, {"big": 1000, "small": 100})
    assert decide(ReleasePolicy(), two, {"big": 1.0, "small": 1.0}).released
    two = combine({"big": _with_disclosure(ind, mia_auc=0.62), "small": small}, {"big": 1000, "small": 100})
    mia = next(c for c in decide(ReleasePolicy(), two, {"big": 1.0, "small": 1.0}).checks if c.name == "mia_auc")
    assert not mia.passed and "'big'" in mia.message


def test_missing_figure_fails_closed():
    ind = independent_evaluation()
    blind = replace(ind, disclosure=replace(ind.disclosure, linkability=None))
    v = decide(ReleasePolicy(), _one_site(blind), {"cleveland": 1.0})
    link = next(c for c in v.checks if c.name == "linkability_risk")
    assert not link.passed and link.value is None and "not measured" in link.message


def test_policy_validation_names_key_value_and_expectation(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[fidelity]\nmin_quality = "high"\n[disclosure]\nmax_mia_auc = 0.2\ndcr_share_max = 2\n'
                   '[privacy]\nrequire_dp = "yes"\nmax_epsilon = 3\n[extra]\n')
    with pytest.raises(ConfigError) as e:
        ReleasePolicy.load(bad)
    text = str(e.value)
    assert "6 problem(s)" in text and "[fidelity] min_quality = 'high': expected a finite number" in text
    assert "max_mia_auc = 0.2: expected an AUC in [0.5, 1]" in text and "dcr_share_max = 2: expected a number in [0, 1]" in text
    assert "require_dp = 'yes': expected true or false" in text
    assert "unknown key 'max_epsilon'" in text and "unknown section [extra]" in text
    band = tmp_path / "band.toml"
    band.write_text("[disclosure]\ndcr_share_min = 0.7\n")
    with pytest.raises(ConfigError, match="dcr_share_min = 0.7 is above dcr_share_max = 0.6"):
        ReleasePolicy.load(band)
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "x.toml").write_text("[[[")
        ReleasePolicy.load(tmp_path / "x.toml")
    partial = tmp_path / "ok.toml"
    partial.write_text("[privacy]\nmax_epsilon_per_site = 4\n")
    assert ReleasePolicy.load(partial) == ReleasePolicy(max_epsilon_per_site=4.0)


def test_audit_record_pins_files_policy_ledger_and_versions(tmp_path):
    files = {}
    for name in ("model", "synthetic", "report"):
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(name.encode() * 100)
    ledger = {"cleveland": {"epsilon": 3.0, "entries": [{"phase": "training", "epsilon_after": 3.0}]}}
    verdict = decide(ReleasePolicy(), _one_site(copying_evaluation()), {"cleveland": 3.0})
    when = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    rec = audit_record(policy=ReleasePolicy(), verdict=verdict, ledger=ledger, model_path=files["model"],
                       synthetic_path=files["synthetic"], report_path=files["report"], now=when)
    assert rec["time_utc"] == "2026-11-29T12:00:00Z" and rec["released"] is False
    assert "exact_copies" in rec["failed_checks"]
    assert rec["sha256"]["model"] == hashlib.sha256(b"model" * 100).hexdigest()
    assert rec["sha256"]["policy_file"] is None and len(rec["sha256"]["ledger"]) == 64
    assert rec["versions"]["sdmetrics"].startswith("0.32") and rec["versions"]["python"]
    out = write_audit(rec, tmp_path / "audit" / "audit.json")
    assert json.loads(out.read_text()) == json.loads(json.dumps(rec))
    assert not list(out.parent.glob(".*.tmp"))  # atomic: no temp file left behind

"""The release gate: refuses a synthesizer that copies training rows, passes an independent sample,
fails closed on missing figures, and writes an audit record that pins the exact files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest

from evaluation import combine
from fedtab.errors import ConfigError, ReleaseRefusedError
from fedtab.release import ReleasePolicy, audit_record, decide, enforce, write_audit
from tests.test_evaluation_data import copying_evaluation, independent_evaluation

PRIVACY_CHECKS = {"dcr_share", "dcr_share_low", "exact_copies", "near_copies", "mia_auc", "singling_out_risk",
                  "linkability_risk", "inference_risk", "memorisation_power"}


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
    assert {"exact_copies", "dcr_share", "near_copies", "mia_auc"} <= failed
    copies = next(c for c in verdict.checks if c.name == "exact_copies")
    assert copies.value == pytest.approx(1 - 2 / 690) and "cleveland" in copies.message
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


def _mia(ev, auc, **more):
    """``ev`` with its membership AUC set to ``auc`` and the p-value its sizes give that AUC."""
    from evaluation.disclosure import upper_p_value

    d = ev.disclosure
    return _with_disclosure(ev, mia_auc=auc, mia_auc_p=upper_p_value(auc, 0.5, d.mia_auc_null_sd), **more)


def test_thresholds_are_never_raised_by_the_data():
    """A figure over its band is refused when its p-value under the size-only null is significant (Holm),
    whatever chance level the site measured; the policy key that raised thresholds is refused."""
    from evaluation.chance import ChanceLevel

    ind = independent_evaluation()  # 460 training vs 230 holdout rows: MIA null sd 0.0233
    high = ChanceLevel(mean=0.5, sd=0.2, level=0.9, resplits=400)
    v = decide(ReleasePolicy(), _one_site(_mia(ind, 0.62, mia_auc_chance=high)), {"cleveland": 1.0})
    mia = next(c for c in v.checks if c.name == "mia_auc")
    assert not mia.passed and not v.released and mia.value == 0.62 and "refused" in mia.message
    assert mia.threshold == "<= 0.6, or not significant (Holm, family-wise 0.1, 6 tests)"
    # The same figure and p-value with no chance level at all: the same decision.
    v2 = decide(ReleasePolicy(), _one_site(_mia(ind, 0.62, mia_auc_chance=None)), {"cleveland": 1.0})
    assert [c.passed for c in v2.checks] == [c.passed for c in v.checks]
    # Within the band: passes, however significant (the band is the tolerated effect).
    assert decide(ReleasePolicy(), _one_site(_mia(ind, 0.59)), {"cleveland": 1.0}).released
    # Over the band but not significant at this site's size: passes, and says why.
    weak = _with_disclosure(ind, mia_auc=0.63, mia_auc_p=0.2)
    mia = next(c for c in decide(ReleasePolicy(), _one_site(weak), {"cleveland": 1.0}).checks if c.name == "mia_auc")
    assert mia.passed and "within chance at this site's size" in mia.message
    with pytest.raises(ConfigError, match="chance_levels: removed: a threshold is never raised by the data"):
        ReleasePolicy.from_dict({"disclosure": {"chance_levels": True}})


def test_p_values_read_the_site_s_sizes_only():
    """The nulls behind every p-value: Mann-Whitney's for the MIA AUC, a size-only sd for the DCR share,
    1/4 for p(1 - p) over the rows attacked per side for anonymeter's risks."""
    from evaluation.disclosure import _risk_p_value, dcr_share_null_sd, upper_p_value

    d = independent_evaluation().disclosure
    n1, n0 = d.n_mia_members, d.n_mia_non_members
    assert d.mia_auc_p == pytest.approx(upper_p_value(d.mia_auc, 0.5, math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))))
    assert d.dcr_share_null_sd == pytest.approx(0.5 * math.sqrt(1 / d.n_query_rows + 1.5 / 230), rel=0.02)
    assert d.dcr_share_p == pytest.approx(upper_p_value(d.dcr_share, 0.5, d.dcr_share_null_sd))
    # Equal success on both sides: p = 1/2; 0.3 more on training rows with 98 vs 25 rows: z = 0.3 / 0.1124.
    assert _risk_p_value(0.4, 0.4, 98, 25) == pytest.approx(0.5)
    assert _risk_p_value(0.7, 0.4, 98, 25) == pytest.approx(0.0038, abs=2e-4)
    for risk in (d.singling_out, d.linkability, d.inference):
        assert 0.0 <= risk.p_value <= 1.0


def test_holm_step_down_arithmetic_and_its_release_decision_is_bonferroni_s():
    from fedtab.release import holm

    out = holm({"a": 0.001, "b": 0.01, "c": 0.03, "d": 0.2}, 0.1)
    assert out == {"a": (True, 0.025), "b": (True, pytest.approx(0.1 / 3)), "c": (True, 0.05), "d": (False, 0.1)}
    # It stops at the first p-value over its level: 0.04 <= 0.05 but 0.03 > 0.025 came first.
    assert holm({"a": 0.03, "b": 0.04}, 0.05) == {"a": (False, 0.025), "b": (False, 0.05)}
    # A missing p-value is rejected (fails closed).
    assert holm({"a": None, "b": 0.5}, 0.1)["a"] == (True, 0.05)
    # Something is rejected exactly when the smallest p-value is <= alpha / m (Bonferroni).
    rng = np.random.default_rng(0)
    for _ in range(2000):
        p = dict(enumerate(rng.random(24) ** 3))
        assert any(r for r, _ in holm(p, 0.1).values()) == (min(p.values()) <= 0.1 / 24)


def test_the_family_counts_every_site_and_tested_figure():
    """p = 0.01 over the band: refused with one site (6 tests, level 0.1/6), not among four (24 tests:
    0.01 > 0.1/24)."""
    ind = independent_evaluation()
    over = _with_disclosure(ind, mia_auc=0.65, mia_auc_p=0.01)
    mia = lambda v: next(c for c in v.checks if c.name == "mia_auc")  # noqa: E731
    assert not mia(decide(ReleasePolicy(), _one_site(over), {"cleveland": 1.0})).passed
    four = combine({"a": over, "b": ind, "c": ind, "d": ind}, {"a": 100, "b": 100, "c": 100, "d": 100})
    v = decide(ReleasePolicy(), four, dict.fromkeys("abcd", 1.0))
    assert mia(v).passed and v.tests["n_tests"] == 24 and v.tests["first_level"] == pytest.approx(0.1 / 24)
    assert {(t["check"], t["site"]) for t in v.tests["tests"]} == {
        (c, s) for c in ("dcr_share", "near_copies", "mia_auc", "singling_out_risk", "linkability_risk",
                         "inference_risk") for s in "abcd"}
    # A stricter family-wise alpha is a policy key.
    assert ReleasePolicy.from_dict({"disclosure": {"family_alpha": 0.05}}).family_alpha == 0.05


def _underpowered(ev):
    """``ev`` whose near-copy check catches no planted share (as at a site of a handful of rows)."""
    from evaluation.disclosure import PowerPoint

    near = ev.disclosure.near_copies
    weak = tuple(PowerPoint(share=pt.share, p_value=0.5, excess=0.0) for pt in near.power)
    return _with_disclosure(ev, near_copies=replace(near, power=weak))


def test_an_underpowered_site_passes_only_under_dp_within_the_policy_s_epsilon():
    ind = independent_evaluation()
    power = lambda v: next(c for c in v.checks if c.name == "memorisation_power")  # noqa: E731
    no_dp = ReleasePolicy(require_dp=False)
    # Powered: the site's own figures decide, DP or not.
    v = decide(no_dp, _one_site(ind), {"cleveland": math.inf})
    assert v.released and power(v).passed and v.tests["power"]["cleveland"]["powered"]
    assert v.tests["power"]["cleveland"]["share"] <= 0.1
    weak = _one_site(_underpowered(ind))
    # Underpowered without DP: refused, and the message says why.
    v = decide(no_dp, weak, {"cleveland": math.inf})
    assert not v.released and {c.name for c in v.failed} == {"memorisation_power"}
    assert "UNDERPOWERED" in power(v).message and "not trained under DP" in power(v).message
    # Under DP within the policy's epsilon: passes; beyond it: refused.
    v = decide(no_dp, weak, {"cleveland": 1.0})
    assert v.released and "passes under DP (epsilon 1 <= 10)" in power(v).message
    assert not power(decide(no_dp, weak, {"cleveland": 12.0})).passed
    # The policy decides: "refuse" refuses it even under DP.
    assert not power(decide(replace(no_dp, underpowered="refuse"), weak, {"cleveland": 1.0})).passed
    # A stricter requirement than the site reaches makes it underpowered too.
    strict = replace(no_dp, required_memorised_share=0.01)
    assert not power(decide(strict, _one_site(ind), {"cleveland": math.inf})).passed
    # No power curve at all: fails closed.
    blind = _with_disclosure(ind, near_copies=replace(ind.disclosure.near_copies, power=()))
    assert not power(decide(ReleasePolicy(), _one_site(blind), {"cleveland": 1.0})).passed
    with pytest.raises(ConfigError, match=r"underpowered = 'allow': expected one of \['dp_only', 'refuse'\]"):
        ReleasePolicy.from_dict({"disclosure": {"underpowered": "allow"}})


def test_the_lower_dcr_bound_and_the_exact_copy_check_are_plain_thresholds():
    ind = independent_evaluation()
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, dcr_share=0.2, dcr_share_p=1.0)), {"cleveland": 1.0})
    low = next(c for c in v.checks if c.name == "dcr_share_low")
    assert not low.passed and low.value == 0.2 and low.threshold == ">= 0.3"
    assert next(c for c in v.checks if c.name == "dcr_share").passed
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, exact_copy_rate=0.02)), {"cleveland": 1.0})
    assert {c.name for c in v.failed} == {"exact_copies"}


def test_missing_figure_fails_closed():
    ind = independent_evaluation()
    blind = replace(ind, disclosure=replace(ind.disclosure, linkability=None))
    v = decide(ReleasePolicy(), _one_site(blind), {"cleveland": 1.0})
    link = next(c for c in v.checks if c.name == "linkability_risk")
    assert not link.passed and link.value is None and "not measured" in link.message
    # A figure without its p-value fails too.
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, mia_auc_p=None)), {"cleveland": 1.0})
    assert {c.name for c in v.failed} == {"mia_auc"}
    v = decide(ReleasePolicy(), _one_site(_with_disclosure(ind, near_copies=None)), {"cleveland": 1.0})
    assert {c.name for c in v.failed} == {"near_copies", "memorisation_power"}


def test_policy_validation_names_key_value_and_expectation(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[fidelity]\nmin_quality = "high"\n[disclosure]\nmax_mia_auc = 0.2\ndcr_share_max = 2\n'
                   'family_alpha = 0\n[privacy]\nrequire_dp = "yes"\nmax_epsilon = 3\n[extra]\n')
    with pytest.raises(ConfigError) as e:
        ReleasePolicy.load(bad)
    text = str(e.value)
    assert "family_alpha = 0: expected a number strictly between 0 and 1" in text
    assert "7 problem(s)" in text and "[fidelity] min_quality = 'high': expected a finite number" in text
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

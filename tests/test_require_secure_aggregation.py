"""A site can require secure aggregation (``SitePolicy.require_secure_aggregation``, issue 22).

Claim: a site with the rule sends its counts and model updates only masked, whatever the coordinator's job
says. The attacks: a coordinator that runs the job without secure aggregation (refused at admission,
nothing released), one whose job sends some counts or updates in the clear (the trimmed mean, a site
column, undeclared categories: refused at admission where the coordinator says so, at the first clear
request, before anything is computed for it, where it does not), and a job that may ask a site to show
its update after a failed sum (refused at admission). The broken control: a site without the rule serves
each of these jobs, and its releases leave in the clear.
"""

from __future__ import annotations

import pytest

import fedtab
from fedtab.errors import PrivacyBudgetError
from fedtab.federation.site import ENCODE, MEASURE, SCHEMA as SCHEMA_KIND, TRAIN
from fedtab.federation.transport import InProcessTransport
from fedtab.schema import ColumnSpec, TableSchema
from tests.test_hostile_sites import _four_sites
from tests.test_marginal_model import SCHEMA

STRICT = "west"
SCHEMA_UNDECLARED = TableSchema((ColumnSpec("kind", "categorical"),) + tuple(SCHEMA.columns[1:]))


class _Recording(InProcessTransport):
    """Every reply the strict site sent with counts or an update in it, and what the coordinator said,
    with the schema request, would leave in the clear."""

    replies: list = []
    said: list = []

    def outcomes(self, kind, bodies):
        if kind == SCHEMA_KIND and STRICT in bodies:
            self.said.append(list(bodies[STRICT].get("in_the_clear") or []))
        out = super().outcomes(kind, bodies)
        if STRICT in out and kind in (ENCODE, MEASURE, TRAIN):
            self.replies.append((kind, bodies[STRICT], out[STRICT]))
        return out


def _fit(monkeypatch, model="mst", *, strict=True, **kw):
    _Recording.replies, _Recording.said = [], []
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", _Recording)
    policy = {STRICT: fedtab.SitePolicy(require_secure_aggregation=strict)}
    extra = {"rounds": 2, "batch_size": 100,
             "model_options": {"compress_dims": [32], "decompress_dims": [32], "embedding_dim": 16}} \
        if model == "tvae" else {}
    kw.setdefault("schema", SCHEMA)
    return fedtab.FederatedSynthesizer(model, epsilon=2.0, seed=0, site_policy=policy, **extra,
                                       **kw).fit(_four_sites())


def _clear(replies) -> list:
    """The strict site's replies that held counts or an update in the clear (not masked, not a screen)."""
    return [(kind, body.get("phase")) for kind, body, reply in replies
            if isinstance(reply, dict) and "masked" not in reply and not body.get("secagg")
            and body.get("phase") not in ("keys", "shares", "unmask", "screen")
            and any(k in reply for k in ("weights", "counts")) | any("/counts" in k for k in reply)]


def test_a_strict_site_takes_part_in_a_secure_job_and_sends_only_masked_releases(monkeypatch):
    synth = _fit(monkeypatch)
    assert STRICT in synth.result_.ledgers and synth.privacy_ledger[STRICT].entries
    assert _Recording.replies and not _clear(_Recording.replies)
    assert any("masked" in reply for _, _, reply in _Recording.replies)


def test_a_strict_site_refuses_a_job_without_secure_aggregation_before_anything(monkeypatch):
    with pytest.raises(PrivacyBudgetError, match="site 'west' refuses the job \\(rule require_secure_aggregation"):
        _fit(monkeypatch, secure_aggregation=False)
    assert not _Recording.replies  # not one encoding request reached a site
    # The broken control: without the rule the site serves the job, its histograms in the clear.
    _fit(monkeypatch, strict=False, secure_aggregation=False)
    assert ("encode", "histogram") in _clear(_Recording.replies)


@pytest.mark.parametrize("model, kw, said", [
    ("tvae", {"aggregation": "trimmed_mean"}, "each site's model update and encoding histograms"),
    ("mst", {"site_column": "hospital"}, "each site's encoding histograms \\(a site column"),
    ("mst", {"schema": SCHEMA_UNDECLARED},
     "the values each site holds of the columns declared without categories or bounds \\('kind'\\)")])
def test_a_strict_site_refuses_a_secure_job_that_sends_some_releases_in_the_clear_at_admission(monkeypatch, model,
                                                                                                kw, said):
    """The trimmed mean needs each update (so such a job sums neither the updates nor the encoding's
    histograms), a site column each site's own histograms, undeclared categories each site's values: the
    coordinator says so with the schema request, and the strict site refuses the job there, before any of
    its budget is spent. Without the rule the same job's releases leave in the clear."""
    with pytest.raises(PrivacyBudgetError, match="site 'west' refuses the job \\(rule require_secure_aggregation: "
                                                 f"it sends counts and updates only masked, and this job sends in "
                                                 f"the clear {said}"):
        _fit(monkeypatch, model, **kw)
    assert not _Recording.replies  # not one encoding request reached a site
    _fit(monkeypatch, model, strict=False, **kw)
    assert _clear(_Recording.replies)


def test_a_coordinator_that_does_not_say_what_leaves_in_the_clear_meets_the_refusal_at_its_first_clear_request(
        monkeypatch):
    """The attack: a coordinator that keeps quiet about the trimmed mean's clear releases gets the job
    admitted, then the strict site refuses the first request for counts in the clear, before anything is
    computed for it."""
    monkeypatch.setattr("fedtab.federation.coordinator.JobSpec.releases_in_the_clear", lambda self: [])
    with pytest.raises(PrivacyBudgetError, match="refuses to send its encoding statistics in the clear"):
        _fit(monkeypatch, "tvae", aggregation="trimmed_mean")
    assert not _clear(_Recording.replies)
    _fit(monkeypatch, "tvae", strict=False, aggregation="trimmed_mean")
    assert {("encode", "histogram"), ("train", None)} <= set(_clear(_Recording.replies))


@pytest.mark.parametrize("model, kw", [
    ("mst", {}), ("mst", {"site_column": "hospital"}), ("mst", {"schema": SCHEMA_UNDECLARED}),
    ("tvae", {"on_failed_sum": "stop"}), ("tvae", {"aggregation": "trimmed_mean"}),
    ("tvae", {"site_column": "hospital", "on_failed_sum": "stop"}),
    ("tvae", {"schema": SCHEMA_UNDECLARED, "on_failed_sum": "stop"})])
def test_what_a_job_says_leaves_in_the_clear_is_what_leaves(monkeypatch, model, kw):
    """``JobSpec.releases_in_the_clear`` restates, from the job's settings, what the run decides later
    (which histograms and updates are summed): the two must not drift apart. For each kind of job the
    strict site's rule reads, run with a site that serves it and see what it sent: counts or an update in
    the clear exactly where the job said it would send some."""
    _fit(monkeypatch, model, strict=False, **kw)
    assert len(_Recording.said) == 1
    assert bool(_Recording.said[0]) == bool(_clear(_Recording.replies)), (_Recording.said, _clear(_Recording.replies))


def test_a_job_says_what_it_sends_in_the_clear_from_its_own_settings():
    from fedtab.config import PrivacySettings
    from fedtab.federation.coordinator import JobSpec

    assert JobSpec(model="mst", schema=SCHEMA).releases_in_the_clear() == []
    assert JobSpec(model="tvae", schema=SCHEMA).releases_in_the_clear() == []
    assert JobSpec(model="mst", schema=None).releases_in_the_clear() == [
        "the schema each site infers and the values it holds (no declared schema)"]
    # Without secure aggregation every release is in the clear: the job says so with its own flag.
    off = JobSpec(model="mst", schema=SCHEMA, privacy=PrivacySettings(epsilon=1.0, secure_aggregation=False),
                  site_column="hospital")
    assert off.releases_in_the_clear() == [] and off.site_job()["secure_aggregation"] is False


@pytest.mark.parametrize("kind, body", [(TRAIN, {"round": 0, "weights": {}}),
                                        (MEASURE, {"phase": "one-way"}),
                                        (ENCODE, {"phase": "histogram"})])
def test_each_request_for_counts_or_an_update_in_the_clear_is_refused_before_any_work(kind, body):
    from fedtab.federation.site import SiteWorker

    def never(*args):
        raise AssertionError("the table was read")

    worker = SiteWorker(STRICT, never, policy=fedtab.SitePolicy(require_secure_aggregation=True))
    with pytest.raises(PrivacyBudgetError, match="in the clear \\(rule require_secure_aggregation"):
        worker(kind, body, {})


def test_a_strict_site_refuses_a_job_that_may_ask_it_to_show_an_update(monkeypatch):
    with pytest.raises(PrivacyBudgetError, match="rule require_secure_aggregation: it never shows its update"):
        _fit(monkeypatch, "tvae")  # the default on_failed_sum: "screen_each"
    synth = _fit(monkeypatch, "tvae", on_failed_sum="stop")
    assert [sorted(r.epsilon) for r in synth.result_.history] == [sorted(_four_sites())] * 2
    assert not _clear(_Recording.replies)


def test_a_sites_refusal_names_the_site_once_at_the_coordinator(monkeypatch):
    with pytest.raises(PrivacyBudgetError) as e:
        _fit(monkeypatch, secure_aggregation=False)
    assert str(e.value).startswith("site 'west' refuses the job") and str(e.value).count("site 'west'") == 1

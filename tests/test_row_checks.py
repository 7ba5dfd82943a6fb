"""A site's counts must count its rows (issue 22 part 5): the marginal model's row check.

Attack: hostile code at one site of four multiplies every count it releases by 10 (masked under secure
aggregation, in the clear without it), while its encoding releases stay honest. With secure aggregation
the sum fails the check and the job stops (no site can be named); without it the site is named and left
out, and ``training.min_sites`` lets the job go on. Against declared site sizes under secure aggregation a
sum over the declarations is proven to each site and opened, and the site over its own is named. Controls: honest consortia (DP with and without secure
aggregation, and non-DP) pass; with the check off (the broken control) the inflated job completes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fedtab
from fedtab.errors import FederationError
from fedtab.federation import marginals, secagg, secure_encoding
from tests.conftest import non_dp_policy
from tests.test_garbage_site import _four_sites
from tests.test_marginal_model import SCHEMA

HOSTILE = "west"


def _inflate(monkeypatch, site: str = HOSTILE, factor: float = 10.0) -> None:
    mask, measure, release = secagg.SiteSession.mask, marginals.site_measure, secure_encoding.masked_release
    in_encoding = []  # its encoding's histograms (masked too under secure aggregation) stay honest

    def inflated_mask(session, values, *, me, **kw):
        hostile = me == site and not in_encoding
        return mask(session, [np.asarray(v) * factor for v in values] if hostile else values, me=me, **kw)

    def honest_release(*args, **kwargs):
        in_encoding.append(True)
        try:
            return release(*args, **kwargs)
        finally:
            in_encoding.pop()

    def inflated_measure(name, body, state, **kw):
        reply = measure(name, body, state, **kw)
        if name == site and "counts" in reply:
            reply = {**reply, "counts": [np.asarray(c) * factor for c in reply["counts"]]}
        return reply

    monkeypatch.setattr(secagg.SiteSession, "mask", inflated_mask)
    monkeypatch.setattr(marginals, "site_measure", inflated_measure)
    monkeypatch.setattr(secure_encoding, "masked_release", honest_release)


def _fit(*, secure: bool, dp: bool = True, events: list | None = None, min_sites: int | None = None):
    kwargs = dict(epsilon=1.0, delta=1e-5) if dp else dict(site_policy=non_dp_policy())
    synth = fedtab.FederatedSynthesizer("mst", schema=SCHEMA, secure_aggregation=secure, min_sites=min_sites,
                                        progress=(lambda e, info: events.append((e, info))) if events is not None
                                        else None, **kwargs)
    return synth.fit(_four_sites(600))


def test_an_inflating_site_stops_a_secure_sum(monkeypatch):
    _inflate(monkeypatch)
    with pytest.raises(FederationError, match="cannot say which site"):
        _fit(secure=True)


def test_without_secure_aggregation_the_inflating_site_is_named_and_left_out(monkeypatch):
    _inflate(monkeypatch)
    events: list = []
    synth = _fit(secure=False, events=events, min_sites=3)
    left = [info for e, info in events if e == "phase" and info.get("dropped")]
    assert left and all(info["dropped"] == [HOSTILE] for info in left), left
    assert f"site '{HOSTILE}'" in left[0]["name"]
    with pytest.raises(FederationError, match="min_sites"):  # every site needed: the job stops instead
        _fit(secure=False)
    assert synth.sample(50, seed=0).shape[0] == 50


@pytest.mark.parametrize("secure,dp", [(True, True), (False, True), (True, False)])
def test_honest_sites_pass_the_row_check(secure, dp):
    events: list = []
    _fit(secure=secure, dp=dp, events=events)
    assert not [info for e, info in events if e == "phase" and info.get("dropped")]


def test_broken_control_without_the_check_the_inflated_job_completes(monkeypatch):
    _inflate(monkeypatch)
    monkeypatch.setattr(marginals, "ROWS_Z", math.inf)
    _fit(secure=True)  # no error: the sum of a site's x10 counts went into the model unnoticed


# -- declared site sizes ---------------------------------------------------------------------------------
# Attack: hostile code inflates every count it sends x10, its encoding histograms included: its counts agree
# with each other, so the row check above passes, and it reads as a site ten times larger. Against the
# consortium's declared sizes (rows_at_most, public) it does not.
DECLARED = {s: 700 for s in ("north", "south", "east", "west")}  # each site holds 600 rows


def _inflate_all(monkeypatch, *, secure: bool, site: str = HOSTILE, factor: float = 10.0) -> None:
    from fedtab.federation import encoding

    if secure:  # everything it masks, its histograms included
        mask = secagg.SiteSession.mask

        def inflated_mask(session, values, *, me, **kw):
            return mask(session, [np.asarray(v) * factor for v in values] if me == site else values, me=me, **kw)

        monkeypatch.setattr(secagg.SiteSession, "mask", inflated_mask)
        return
    statistics, measure = encoding.site_statistics, marginals.site_measure

    def inflated_statistics(df, plan, phase, request, *, ledger, **kw):
        reply = statistics(df, plan, phase, request, ledger=ledger, **kw)
        if ledger.site != site or phase != encoding.PHASE_HISTOGRAM:
            return reply
        return {k: (np.asarray(v) * factor if k.endswith(("/counts", "/rounding")) else
                    float(v) * factor if k.endswith("/missing") else v) for k, v in reply.items()}

    def inflated_measure(name, body, state, **kw):
        reply = measure(name, body, state, **kw)
        if name == site and "counts" in reply:
            reply = {**reply, "counts": [np.asarray(c) * factor for c in reply["counts"]]}
        return reply

    monkeypatch.setattr(encoding, "site_statistics", inflated_statistics)
    monkeypatch.setattr(marginals, "site_measure", inflated_measure)


def _fit_declared(*, secure: bool, declared: dict | None, events: list | None = None, min_sites: int | None = None,
                  **kw):
    synth = fedtab.FederatedSynthesizer("mst", schema=SCHEMA, secure_aggregation=secure, min_sites=min_sites,
                                        epsilon=1.0, delta=1e-5, site_rows_at_most=declared,
                                        progress=(lambda e, info: events.append((e, info))) if events is not None
                                        else None, **kw)
    return synth.fit(_four_sites(600))


def test_broken_control_a_site_inflating_everything_passes_every_consistency_check(monkeypatch):
    """Nothing declared: the job completes, poisoned. (The row check is off here: it compares the site's
    counts with each other, which agree, and trips only now and then on the site's x10 noise, as in
    bench_hostile's inflated runs: 1 of 3 per table stopped there.)"""
    _inflate_all(monkeypatch, secure=True)
    monkeypatch.setattr(marginals, "ROWS_Z", math.inf)
    synth = _fit_declared(secure=True, declared=None)
    assert synth.sample(50, seed=0).shape[0] == 50


def test_against_declared_sizes_an_inflating_site_stops_a_secure_sum_under_stop(monkeypatch):
    _inflate_all(monkeypatch, secure=True)
    with pytest.raises(FederationError, match="declares for these 4 sites.*cannot say which site"):
        _fit_declared(secure=True, declared=DECLARED, on_failed_sum="stop")


def test_against_declared_sizes_an_inflating_site_under_secure_aggregation_is_named_once_the_sum_is_opened(
        monkeypatch):
    """The default (``on_failed_sum = "screen_each"``, the declarations public in the job): the secure sum
    of the histograms counts more than the declarations; each site checks that from the coordinator's
    proof and reveals its mask key; the coordinator opens each site's histograms (a DP release each, at
    full noise) and names the site over its own declaration. With ``min_sites`` 3 the job goes on without
    it; with every site required it stops, naming it."""
    _inflate_all(monkeypatch, secure=True)
    events: list = []
    synth = _fit_declared(secure=True, declared=DECLARED, events=events, min_sites=3)
    left = [info for e, info in events if e == "phase" and info.get("dropped")]
    assert [info["dropped"] for info in left] == [[HOSTILE]], left
    assert left[0]["name"].startswith("the declared site sizes: left out 1 site ('west')")
    assert "more than the 700 the consortium declares for it" in left[0]["name"]
    assert sorted(synth.result_.ledgers) == ["east", "north", "south"]  # its histograms taken off the sum
    assert synth.sample(50, seed=0).shape[0] == 50
    with pytest.raises(FederationError, match="the declared site sizes: 1 site \\('west'\\) cannot go on"):
        _fit_declared(secure=True, declared=DECLARED)


def test_a_site_reveals_its_histograms_key_only_for_a_sum_it_finds_over_the_declarations():
    """The attack: a coordinator that says the sum is over the declared sizes to open every site's
    histograms. The site computes the sum from the proof and checks it against the declarations in the job
    it accepted: within them it refuses; where the job does not allow opening it refuses. The control:
    declarations the sum exceeds, the key is revealed."""
    from tests.test_garbage_site import _masked_histograms, _screen_proof

    sessions, states, replies, b_shares, _, size = _masked_histograms()
    proof = {"phase": secure_encoding.OPEN, "proof": _screen_proof(replies, b_shares, size, "north")}
    state = states["north"]
    with pytest.raises(FederationError, match="does not open a sum over the declared site sizes"):
        secure_encoding.open_reply("north", proof, state, sessions["north"])
    state["job"] = {"show_histograms_over_declared_sizes": True, "rows_at_most": {s: 400 for s in sessions}}
    with pytest.raises(FederationError, match="within the declared site sizes"):
        secure_encoding.open_reply("north", proof, state, sessions["north"])
    state["job"]["rows_at_most"] = {s: 100 for s in sessions}  # 300 rows a site
    assert secure_encoding.open_reply("north", proof, state, sessions["north"])["mask_key"]


def test_a_site_that_never_shows_its_histograms_refuses_a_job_that_may_open_them():
    from fedtab.errors import PrivacyBudgetError

    strict = {"west": fedtab.SitePolicy(show_updates=False)}
    with pytest.raises(PrivacyBudgetError, match="site 'west' refuses the job \\(rule show_updates: it never shows "
                                                 "its histograms"):
        _fit_declared(secure=True, declared=DECLARED, site_policy=strict)
    _fit_declared(secure=True, declared=DECLARED, site_policy=strict, on_failed_sum="stop")


def test_the_model_file_keeps_the_declarations_so_the_job_is_the_one_the_sites_accepted(tmp_path):
    synth = _fit_declared(secure=True, declared=DECLARED)
    loaded = fedtab.load(synth.save(tmp_path / "m.fedtab"))
    assert loaded.job_.site_job() == synth.job_.site_job()
    assert synth.job_.site_job()["rows_at_most"] == DECLARED


def test_against_declared_sizes_an_inflating_site_is_named_without_secure_aggregation(monkeypatch):
    _inflate_all(monkeypatch, secure=False)
    events: list = []
    synth = _fit_declared(secure=False, declared=DECLARED, events=events, min_sites=3)
    left = [info for e, info in events if e == "phase" and info.get("dropped")]
    assert [info["dropped"] for info in left] == [[HOSTILE]], left
    assert "the declared site sizes" in left[0]["name"] and "more than the 700" in left[0]["name"]
    assert synth.sample(50, seed=0).shape[0] == 50


@pytest.mark.parametrize("secure,dp", [(True, True), (False, True), (False, False)])
def test_honest_sites_within_their_declared_sizes_pass(secure, dp):
    events: list = []
    kwargs = dict(epsilon=1.0, delta=1e-5) if dp else dict(site_policy=non_dp_policy())
    fedtab.FederatedSynthesizer("mst", schema=SCHEMA, secure_aggregation=secure, site_rows_at_most=DECLARED,
                                progress=lambda e, info: events.append((e, info)), **kwargs).fit(_four_sites(600))
    assert not [info for e, info in events if e == "phase" and info.get("dropped")]


def test_a_declaration_must_name_sites_and_be_a_count():
    from fedtab.errors import ConfigError

    with pytest.raises(ConfigError, match="site_rows_at_most"):
        fedtab.FederatedSynthesizer("mst", schema=SCHEMA, epsilon=1.0, site_rows_at_most={"north": 0})
    with pytest.raises(ConfigError, match="not among the sites"):
        fedtab.FederatedSynthesizer("mst", schema=SCHEMA, epsilon=1.0, site_rows_at_most={"nowhere": 10}).fit(
            _four_sites(50))

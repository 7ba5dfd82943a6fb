"""A site whose table conforms to the schema but is random values is named and left out (issue 22 part 5).

The screen (``fedtab.federation.screening``) reads only the one-way histograms each site releases in the
encoding (DP under DP: no new release). Controls: honest non-IID consortia (the four heart hospitals, DP and
not; sites with a genuinely uniform column) are never named; with the screen off the garbage site stays in
(the broken control); a table with its columns shuffled has the real one-way histograms and is not seen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedtab
from fedtab.errors import FederationError
from fedtab.federation import screening
from tests.conftest import non_dp_policy
from tests.test_marginal_model import SCHEMA, _sites


def _four_sites(n: int) -> dict[str, pd.DataFrame]:
    """'kind' shares differ by site (non-IID), 'value' follows 'kind', 'noise' is uniform in every site."""
    return _sites(n, names=("north", "south", "east", "west"))


def _uniform(schema, n: int, seed: int = 5) -> pd.DataFrame:
    """A table that conforms to ``schema``: every value drawn uniformly in the declared bounds / categories."""
    rng = np.random.default_rng(seed)
    cols = {}
    for c in schema.columns:
        if c.type == "numerical":
            cols[c.name] = (rng.integers(int(c.lower), int(c.upper) + 1, n) if c.is_integer
                            else np.round(rng.uniform(c.lower, c.upper, n), c.precision or 6))
        elif c.type == "boolean":
            cols[c.name] = rng.integers(0, 2, n).astype(bool)
        else:
            cols[c.name] = rng.choice(np.array(c.categories, dtype=object), n)
    return pd.DataFrame(cols)


def _fit(sites, *, epsilon=1.0, min_sites=3, schema=SCHEMA, events=None, **kw):
    policy = {} if epsilon is not None else {"site_policy": non_dp_policy()}
    return fedtab.FederatedSynthesizer("mst", epsilon=epsilon, schema=schema, seed=0, min_sites=min_sites,
                                       progress=lambda e, info: events.append(info) if events is not None else None,
                                       **policy, **kw).fit(sites)


def _dropped(events):
    return [info for info in events if info.get("dropped")]


@pytest.mark.parametrize("epsilon, secure", [(1.0, True), (None, True), (1.0, False)])
def test_a_garbage_site_is_named_and_left_out(epsilon, secure):
    """Under DP and without. Under secure aggregation (the default) the coordinator sees the histograms'
    sum only: the site screens itself against it and sends its release (``secure_encoding``); the
    left-out site is out of the masked sums that follow. Without it the coordinator screens each release. 4,000 rows a site: on this table two of four columns tell
    garbage from the others ('kind' pooled over the sites is near uniform, 'noise' is uniform everywhere),
    and at epsilon 1 the screen named the site in 47 of 50 fits of 2,000 rows a site (the screen's
    statistic against the other sites 51-144 for a limit of 57) and in 40 of 40 of 4,000 (214-343)."""
    sites = _four_sites(4000)
    sites["west"] = _uniform(SCHEMA, 4000)
    events = []
    synth = _fit(sites, epsilon=epsilon, events=events, target="flag", secure_aggregation=secure)
    dropped = _dropped(events)
    assert len(dropped) == 1 and dropped[0]["dropped"] == ["west"]
    assert "site 'west'" in dropped[0]["name"] and "uniformly" in dropped[0]["name"]
    assert set(synth.result_.site_weights) == {"north", "south", "east"}
    assert list(synth.sample(100, seed=1).columns) == list(SCHEMA.names)


def test_min_sites_stops_the_run_when_a_garbage_site_is_named():
    sites = _four_sites(500)
    sites["west"] = _uniform(SCHEMA, 500)
    with pytest.raises(FederationError, match="'west'.*not real rows.*min_sites"):
        _fit(sites, epsilon=None, min_sites=None)


def test_broken_control_without_the_screen_the_garbage_site_stays_in(monkeypatch):
    """The verdict (the coordinator's under plain replies, each site's own under secure aggregation, the
    default) made to name nothing: the garbage site stays in."""
    monkeypatch.setattr(screening, "verdict", lambda *args, **kwargs: None)
    sites = _four_sites(500)
    sites["west"] = _uniform(SCHEMA, 500)
    events = []
    synth = _fit(sites, epsilon=None, events=events)
    assert not _dropped(events) and "west" in synth.result_.site_weights


@pytest.mark.parametrize("epsilon", [1.0, None])
def test_honest_non_iid_sites_are_never_named(epsilon):
    """The four heart hospitals (switzerland has no cholesterol values; sizes 123-303) and four synthetic
    non-IID sites with a uniform column: no site named."""
    heart = fedtab.datasets.load_heart_sites()
    for sites, schema in ((heart, fedtab.datasets.heart_schema()), (_four_sites(2000), SCHEMA)):
        events = []
        _fit(sites, epsilon=epsilon, schema=schema, events=events)
        assert not _dropped(events)


def test_the_screen_reads_the_histograms_alone():
    """On the encoding's histogram releases: honest heart hospitals (fresh DP noise, 5 draws) are never named;
    uniform garbage is, without DP; shuffled columns (real one-way histograms) are not: a stated limit."""
    from fedtab.privacy.ledger import PrivacyLedger
    from fedtab.transform.plan import EncodingDP, EncodingPlan
    from fedtab.transform.statistics import PHASE_HISTOGRAM, merge_statistics, phase_request, site_statistics

    def histograms(frames, schema, epsilon):
        dp = None if epsilon is None else EncodingDP(epsilon=epsilon, delta=1e-5)
        plan = EncodingPlan(schema, dp=dp, seed=0)
        ledgers = {s: PrivacyLedger(s, epsilon_budget=epsilon, delta=None if dp is None else 1e-5) for s in frames}
        previous = None
        for phase in plan.phases()[:plan.phases().index(PHASE_HISTOGRAM) + 1]:
            request = phase_request(plan, phase, previous)
            out = {s: site_statistics(df, plan, phase, request, ledger=ledgers[s]) for s, df in frames.items()}
            previous = merge_statistics(plan, phase, [out[s] for s in sorted(out)])
        return plan, out

    heart, schema = fedtab.datasets.load_heart_sites(), fedtab.datasets.heart_schema()
    for _ in range(5):
        assert screening.garbage_sites(*histograms(heart, schema, 0.3)) == {}
    assert screening.garbage_sites(*histograms(heart, schema, None)) == {}
    garbage = {**heart, "hungary": _uniform(schema, len(heart["hungary"])).astype(heart["hungary"].dtypes)}
    assert list(screening.garbage_sites(*histograms(garbage, schema, None))) == ["hungary"]
    rng = np.random.default_rng(0)
    shuffled = {**heart, "hungary": heart["hungary"].apply(lambda c: c.sample(frac=1.0, random_state=rng.integers(1e6))
                                                           .reset_index(drop=True))}
    assert screening.garbage_sites(*histograms(shuffled, schema, None)) == {}


def _masked_histograms(n_rows: int = 300):
    """Four sites mask their DP histogram releases in one secure request and the sum is unmasked:
    (sessions, states, masked replies, the self-mask seeds' shares, the summed counts, the vector length)."""
    from fedtab.federation import secagg, secure_encoding
    from fedtab.privacy.ledger import PrivacyLedger
    from fedtab.transform.plan import PHASE_HISTOGRAM, EncodingDP, EncodingPlan
    from fedtab.transform.statistics import phase_request, site_statistics
    from tests.test_secagg import _sessions

    plan = EncodingPlan(SCHEMA, dp=EncodingDP(epsilon=1.0, delta=1e-5), seed=0)
    frames = _four_sites(n_rows)
    names = sorted(frames)
    sessions, peers, _ = _sessions(names, requests=1)
    request = phase_request(plan, PHASE_HISTOGRAM, None)
    states, replies = {n: {} for n in names}, {}
    for n in names:
        release = site_statistics(frames[n], plan, PHASE_HISTOGRAM, request,
                                  ledger=PrivacyLedger(n, epsilon_budget=1.0, delta=1e-5))
        replies[n] = secure_encoding.masked_release(n, release, states[n], sessions[n],
                                                    {"request": 0, "sites": names, "job": "j"}, plan=plan.to_dict())
    b_boxes = {to: {frm: replies[frm]["b_shares"][to] for frm in names} for to in names}
    opened = {n: sessions[n].unmask(me=n, request=0, survivors=names, dropped=[], s_inbox={}, b_inbox=b_boxes[n],
                                    job="j") for n in names}
    b_shares = {n: [o["b"][n] for o in opened.values()] for n in names}
    shapes = [tuple(x) for x in replies[names[0]]["shapes"]]
    total = secagg.unmask_sum({n: r["masked"] for n, r in replies.items()}, shapes, peers=peers, dropped=[],
                              b_shares=b_shares, s_shares={}, request=0, job="j")
    return sessions, states, replies, b_shares, total, sum(int(np.prod(x)) for x in shapes)


def _screen_proof(replies, b_shares, size, to):
    from fedtab.federation import secagg

    return secagg.entry_proof({n: r["masked"] for n, r in replies.items()}, range(size),
                              rebuilt=secagg.rebuild(b_shares, {}),
                              commits={n: r["commits"] for n, r in replies.items()}, to=to)


def test_a_site_screens_its_release_once_against_a_sum_proven_to_it():
    """A curious coordinator can neither read a site's histogram release off repeated screens (a bit each:
    a second screen is refused, as is one before the site masked a release) nor make up the sum a site
    screens against (to make a real site's release read as random values, which it then sends): the site
    computes the sum from the proof, every part checked against what the sites committed to, and refuses a
    forged one; refusals carry no value. The broken control: a site that took the coordinator's sum as sent
    screens against whatever it is told."""
    from fedtab.federation import secure_encoding

    sessions, states, replies, b_shares, total, size = _masked_histograms()
    with pytest.raises(FederationError, match="masked no histogram release"):
        secure_encoding.screen_reply("north", {"phase": secure_encoding.SCREEN}, {}, sessions["north"])
    proof = _screen_proof(replies, b_shares, size, "north")
    forged = dict(proof["chunks"]["south"]["0"])
    forged["values"] = forged["values"] + np.uint64(50)
    with pytest.raises(FederationError, match="the coordinator's proof of the sum does not check") as refused:
        secure_encoding.screen_reply("north", {"phase": secure_encoding.SCREEN, "proof": {
            **proof, "chunks": {**proof["chunks"], "south": {**proof["chunks"]["south"], "0": forged}}}},
            states["north"], sessions["north"])
    assert refused.value.public and not any(ch.isdigit() for ch in str(refused.value).replace("north", ""))
    seen = {}
    verdict = screening.verdict

    def spy(plan, own, pooled, *, n_others):
        seen.update(pooled=pooled, n_others=n_others)
        return verdict(plan, own, pooled, n_others=n_others)

    import unittest.mock as mock

    with mock.patch.object(screening, "verdict", spy):
        assert secure_encoding.screen_reply("north", {"phase": secure_encoding.SCREEN, "proof": proof},
                                            states["north"], sessions["north"]) == {"garbage": False}
    own = states["north"]["histogram_release"]["release"]
    keys = secure_encoding.count_keys(own)
    want = dict(zip(keys, total))
    for name, pooled in seen["pooled"].items():  # the others' counts: the true sum less its own release
        key = next(k for k in keys if k.startswith(name + "/") and k.endswith("/counts"))
        assert np.allclose(pooled, np.asarray(want[key], dtype=float) - np.asarray(own[key], dtype=float))
    assert seen["n_others"] == 3
    with pytest.raises(FederationError, match="refused"):
        secure_encoding.screen_reply("north", {"phase": secure_encoding.SCREEN, "proof": proof}, states["north"],
                                     sessions["north"])
    # The broken control: a site whose check passes whatever it is sent screens against a made-up sum.
    made_up = {i: 10 ** 6 for i in range(size)}
    with mock.patch.object(sessions["south"], "proven_entries", lambda *a, **k: made_up), \
            mock.patch.object(screening, "verdict", spy):
        secure_encoding.screen_reply("south", {"phase": secure_encoding.SCREEN, "proof": {}}, states["south"],
                                     sessions["south"])
    assert all(np.all(p > 10 ** 5) for p in seen["pooled"].values())


def test_where_the_noise_hides_garbage_the_coordinator_says_the_screen_cannot_tell():
    """At heart's hospitals (98-242 training rows) at epsilon 1 a table of random values cannot be told
    from real rows (``screening.can_tell``, the gate on naming a site): the coordinator says so once; at
    4,000 rows a site it says nothing (0 of 40 runs; at 2,000 the gate is near its limit under this
    table's noise and said so in 1 of 15, which failed this test now and then)."""
    from fedtab.datasets import heart_schema, load_heart_sites

    def notes(schema, sites, secure):
        seen = []
        fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=schema, seed=0, secure_aggregation=secure,
                                    model_options={"iters": 10},
                                    progress=lambda e, i: seen.append(i.get("name", ""))).fit(sites)
        return [n for n in seen if n.startswith("garbage screen:")]

    assert len(notes(heart_schema(), load_heart_sites(), True)) == 1
    assert notes(SCHEMA, _four_sites(4000), False) == []

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


def test_a_site_screens_its_release_once_and_only_its_own():
    """A curious coordinator cannot read a site's histogram release off repeated screens (a bit each): a
    second screen is refused, as is one before the site masked a release or against a sum of other shape;
    refusals carry no value."""
    from fedtab.federation import secure_encoding
    from fedtab.transform.plan import PHASE_HISTOGRAM, EncodingDP, EncodingPlan
    from fedtab.transform.statistics import phase_request, site_statistics
    from fedtab.privacy.ledger import PrivacyLedger

    plan = EncodingPlan(SCHEMA, dp=EncodingDP(epsilon=1.0, delta=1e-5), seed=0)
    frame = _four_sites(300)["north"]
    request = phase_request(plan, PHASE_HISTOGRAM, None)
    release = site_statistics(frame, plan, PHASE_HISTOGRAM, request,
                              ledger=PrivacyLedger("north", epsilon_budget=1.0, delta=1e-5))
    keys = secure_encoding.count_keys(release)
    body = {"phase": secure_encoding.SCREEN, "n_sites": 4, "sum": {k: np.asarray(release[k], dtype=float) * 4
                                                                   for k in keys}}
    with pytest.raises(FederationError, match="masked no histogram release"):
        secure_encoding.screen_reply("north", body, {})
    state = {"histogram_release": {"release": release, "plan": plan.to_dict()}}
    with pytest.raises(FederationError, match="not the sum of its release's counts"):
        secure_encoding.screen_reply("north", {**body, "sum": {k: body["sum"][k] for k in keys[1:]}}, state)
    assert secure_encoding.screen_reply("north", body, state) == {"garbage": False}
    with pytest.raises(FederationError, match="refused") as refused:
        secure_encoding.screen_reply("north", body, state)
    assert refused.value.public and not any(ch.isdigit() for ch in str(refused.value).replace("north", ""))


def test_where_the_noise_hides_garbage_the_coordinator_says_the_screen_cannot_tell():
    """At heart's hospitals (98-242 training rows) at epsilon 1 a table of random values cannot be told
    from real rows (``screening.can_tell``, the gate on naming a site): the coordinator says so once; at
    2,000 rows a site it says nothing."""
    from fedtab.datasets import heart_schema, load_heart_sites

    def notes(schema, sites, secure):
        seen = []
        fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=schema, seed=0, secure_aggregation=secure,
                                    model_options={"iters": 10},
                                    progress=lambda e, i: seen.append(i.get("name", ""))).fit(sites)
        return [n for n in seen if n.startswith("garbage screen:")]

    assert len(notes(heart_schema(), load_heart_sites(), True)) == 1
    assert notes(SCHEMA, _four_sites(2000), False) == []

"""Secure aggregation with distributed noise (fedtab.federation.secagg, the "mst" measurements).

Claims, each with an attack and a broken control:
- the coordinator receives only masked vectors under DP: read on its own, a site's reply is no closer to
  that site's counts than chance (attack), while with secure aggregation off the same reading recovers
  them to within the noise (control);
- the masked replies add up exactly to the sum of the sites' noisy counts;
- each of n sites draws sigma / sqrt(n), so the sum carries sigma (what the ledger records), where
  without secure aggregation it carries sqrt(n) sigma;
- a site refuses a key set that lacks its key, repeats a key or is too small.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np
import pytest

import fedtab
from fedtab.errors import ConfigError, FederationError
from fedtab.federation import secagg
from fedtab.federation.marginals import MEASURE
from fedtab.federation.transport import InProcessTransport
from fedtab.privacy.secret import SecretSource, _replace_source_for_tests
from fedtab.schema import TableSchema
from tests.test_marginal_model import SCHEMA, _sites


# -- the protocol on its own ---------------------------------------------------------------------------
def _sessions(names, threshold=None, requests=3):
    """Sessions that went through the keys and shares rounds; the relayed share boxes by recipient."""
    sessions = {n: secagg.SiteSession(requests) for n in names}
    peers = {n: s.public() for n, s in sessions.items()}
    t = threshold or len(names)
    shared = {n: s.share_keys(n, peers, t, job="j") for n, s in sessions.items()}
    boxes = {to: {frm: shared[frm][to] for frm in names} for to in names}
    return sessions, peers, boxes


def _round(sessions, peers, boxes, inputs, *, request=0, drop=(), real=False):
    """One masked request and its unmasking; the sites in ``drop`` mask but their input never arrives."""
    names = sorted(inputs)
    out = {n: sessions[n].mask(inputs[n], me=n, request=request, sites=names, job="j", real=real) for n in names}
    survivors = [n for n in names if n not in drop]
    b_boxes = {to: {frm: out[frm][1][to] for frm in survivors} for to in survivors}
    s_boxes = {to: {frm: boxes[to][frm] for frm in drop} for to in survivors}
    opened = {n: sessions[n].unmask(me=n, request=request, survivors=survivors, dropped=list(drop),
                                    s_inbox=s_boxes[n], b_inbox=b_boxes[n], job="j") for n in survivors}
    shapes = [np.shape(v) for v in inputs[names[0]]]
    total = secagg.unmask_sum({n: out[n][0] for n in survivors}, shapes, peers=peers, dropped=list(drop),
                              b_shares={n: [o["b"][n] for o in opened.values()] for n in survivors},
                              s_shares={d: [o["s"][d] for o in opened.values()] for d in drop},
                              request=request, job="j", real=real)
    return total, out


def test_masks_cancel_in_the_sum_and_hide_each_input():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "e"]
    sessions, peers, boxes = _sessions(names)
    inputs = {n: [rng.integers(-50, 500, size=7).astype(float), rng.integers(0, 9, size=(2, 3)).astype(float)]
              for n in names}
    total, out = _round(sessions, peers, boxes, inputs)
    for i, got in enumerate(total):
        assert np.array_equal(got, sum(inputs[n][i] for n in names))
    for n in names:  # each masked reply on its own: uniform 64-bit words, nowhere near the counts it carries
        plain = secagg.encode(inputs[n], real=False)
        assert np.all(np.abs(out[n][0].view(np.int64).astype(float) - plain.view(np.int64)) > 1e6)


def test_a_dropped_site_is_removed_and_the_others_sum_is_read():
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "e"]
    sessions, peers, boxes = _sessions(names, threshold=3)
    inputs = {n: [rng.integers(0, 100, size=11).astype(float)] for n in names}
    total, _ = _round(sessions, peers, boxes, inputs, drop=("b", "d"))
    assert np.array_equal(total[0], sum(inputs[n][0] for n in ("a", "c", "e")))
    # the dropped sites take part in no later request: the others refuse a key set that holds them
    with pytest.raises(FederationError, match="refused"):
        sessions["a"].mask(inputs["a"], me="a", request=1, sites=names, job="j")
    total, _ = _round(sessions, peers, boxes, {n: inputs[n] for n in ("a", "c", "e")}, request=1)
    assert np.array_equal(total[0], sum(inputs[n][0] for n in ("a", "c", "e")))


def test_real_values_round_trip_in_fixed_point():
    sessions, peers, boxes = _sessions(["x", "y"])
    vals = {"x": [np.array([1.25, -3.5, 1e6])], "y": [np.array([0.001, 2.0, -1e6])]}
    total, _ = _round(sessions, peers, boxes, vals, real=True)
    assert np.allclose(total[0], vals["x"][0] + vals["y"][0], atol=2 ** -15)


def test_the_split_view_attack_is_refused():
    """A coordinator that tells some sites 'b survived' (for b's self-mask share) and others 'b dropped'
    (for b's mask key share) would unmask b's input; a site answers one split per request, and the
    threshold is a majority, so the two views cannot both gather enough shares."""
    names = ["a", "b", "c"]
    sessions, peers, boxes = _sessions(names, threshold=2)
    inputs = {n: [np.arange(4.0)] for n in names}
    out = {n: sessions[n].mask(inputs[n], me=n, request=0, sites=names, job="j") for n in names}
    b_box = {frm: out[frm][1]["a"] for frm in names}
    sessions["a"].unmask(me="a", request=0, survivors=names, dropped=[], s_inbox={}, b_inbox=b_box, job="j")
    with pytest.raises(FederationError, match="already unmasked"):
        sessions["a"].unmask(me="a", request=0, survivors=["a", "c"], dropped=["b"],
                             s_inbox={"b": boxes["a"]["b"]}, b_inbox=b_box, job="j")
    with pytest.raises(FederationError, match="not a split"):
        sessions["c"].unmask(me="c", request=0, survivors=["a", "c"], dropped=[], s_inbox={}, b_inbox=b_box, job="j")
    with pytest.raises(FederationError, match="must be a majority"):
        _sessions(["p", "q", "r", "s"], threshold=2)


def test_too_few_survivors_unmask_nothing():
    names = ["a", "b", "c", "d"]
    sessions, peers, boxes = _sessions(names, threshold=3)
    out = {n: sessions[n].mask([np.ones(3)], me=n, request=0, sites=names, job="j") for n in names}
    with pytest.raises(FederationError, match="fewer than the 3"):
        sessions["a"].unmask(me="a", request=0, survivors=["a", "b"], dropped=["c", "d"],
                             s_inbox={d: boxes["a"][d] for d in ("c", "d")},
                             b_inbox={f: out[f][1]["a"] for f in ("a", "b")}, job="j")


@pytest.mark.parametrize("case", ["missing own key", "replaced own key", "key twice", "not a key", "wrong count"])
def test_a_site_refuses_a_key_set_it_cannot_trust(case):
    sessions = {n: secagg.SiteSession(3) for n in ("a", "b", "c")}
    peers = {n: s.public() for n, s in sessions.items()}
    if case == "missing own key":
        peers.pop("a")
    elif case == "replaced own key":
        peers["a"] = secagg.SiteSession(3).public()
    elif case == "key twice":
        peers["c"] = peers["b"]
    elif case == "not a key":
        peers["b"] = {**peers["b"], "c": "bm90IGEga2V5"}
    else:
        peers["b"] = {**peers["b"], "s": peers["b"]["s"][:2]}
    with pytest.raises(FederationError, match="site 'a'|site 'b'"):
        sessions["a"].share_keys("a", peers, 3, job="j")


def test_a_tampered_share_is_refused():
    names = ["a", "b", "c"]
    sessions, peers, boxes = _sessions(names)
    out = {n: sessions[n].mask([np.ones(2)], me=n, request=0, sites=names, job="j") for n in names}
    b_box = {frm: out[frm][1]["a"] for frm in names}
    b_box["b"] = out["b"][1]["c"]  # a share meant for site c, relayed to site a
    with pytest.raises(FederationError, match="does not decrypt"):
        sessions["a"].unmask(me="a", request=0, survivors=names, dropped=[], s_inbox={}, b_inbox=b_box, job="j")


def test_shares_are_flowers_and_recombine_as_flowers_own_functions_do():
    """secagg's Shamir sharing (Horner at small indices; Lagrange coefficients once per set of holders: for
    100-site jobs) interoperates with Flower's create_shares / combine_shares both ways, from any subset of
    at least the threshold; fewer shares do not give the secret."""
    import os
    import random

    from flwr.common.secure_aggregation.crypto.shamir import combine_shares as flower_combine
    from flwr.common.secure_aggregation.crypto.shamir import create_shares as flower_create

    rnd = random.Random(0)
    cache: dict = {}
    for t, n in [(1, 2), (2, 3), (3, 5), (6, 9), (12, 12)]:
        for create in (flower_create, secagg.create_shares):
            secret = os.urandom(secagg.KEY_BYTES)
            shares = create(secret, t, n)
            assert [x[:4] for x in shares] == [i.to_bytes(4, "little") for i in range(1, n + 1)]
            subset = rnd.sample(shares, rnd.randint(t, n))
            assert secagg.combine_shares(subset, cache) == flower_combine(subset) == secret
            if t > 1:
                short = rnd.sample(shares, t - 1)
                try:
                    assert secagg.combine_shares(short) != secret
                except ValueError:  # the padding does not survive a wrong interpolation
                    pass
    with pytest.raises(ValueError, match="duplicate"):
        secagg.combine_shares([shares[0], shares[0]])
    assert secagg._gf_mul(secagg._gf_inverse(0x1234), 0x1234) == 1
    a, b = (int.from_bytes(os.urandom(16), "big") for _ in range(2))
    from Crypto.Protocol.SecretSharing import _Element  # the field of pycryptodome (Flower's Shamir) itself
    assert secagg._gf_mul(a, b) == int(_Element(a) * _Element(b))


def test_keys_are_never_serialised():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(secagg.SiteSession(3))


# -- the coordinator's view of a real job -------------------------------------------------------------
class _Recording(SecretSource):
    """The real secret source, recording each discrete Gaussian draw (scale, input, output) by label."""

    draws: dict = defaultdict(list)

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def discrete_gaussian(self, counts, sigma):
        out = super().discrete_gaussian(counts, sigma)
        self.draws[self.label].append((float(sigma), np.asarray(counts, dtype=float), np.asarray(out, dtype=float)))
        return out


def _run(monkeypatch, secure: bool, every: list | None = None, schema: TableSchema = SCHEMA, rows: int = 300):
    """A DP mst job on 3 sites; every measurement request and reply the coordinator handled (and, in
    ``every``, each message of every kind: (kind, a request body, the replies))."""
    seen = []
    original = InProcessTransport.outcomes

    def recording(self, kind, bodies):
        replies = original(self, kind, bodies)
        if kind == MEASURE:
            seen.append((next(iter(bodies.values())), replies))
        if every is not None:
            every.append((kind, next(iter(bodies.values())), replies))
        return replies

    monkeypatch.setattr(InProcessTransport, "outcomes", recording)
    _Recording.draws = defaultdict(list)
    with _replace_source_for_tests(_Recording):
        synth = fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=schema, seed=1, secure_aggregation=secure,
                                            model_options={"iters": 50}).fit(_sites(rows))
    return synth, seen, dict(_Recording.draws)


def _site_draws(draws, site, phase):
    [(sigma, exact, noisy)] = [(s, np.concatenate([e.ravel() for _, e, _ in v]),
                                np.concatenate([n.ravel() for _, _, n in v]))
                               for label, v in draws.items() if label == f"{site}/marginals/{phase}"
                               for s in {x for x, _, _ in v}]
    return sigma, exact, noisy


def _unmasked(seen, index, masked=None):
    """What the coordinator reads from the masked request ``seen[index]`` (or ``masked``: (body, replies))
    and its unmasking (``seen[index + 1]``)."""
    peers = seen[1][0]["secagg"]["peers"]
    (body, replies), (ubody, opened) = masked or seen[index], seen[index + 1]
    dropped = ubody["secagg"]["dropped"]
    survivors = sorted(replies)
    total = secagg.unmask_sum({n: replies[n]["masked"] for n in survivors},
                              [tuple(x) for x in replies[survivors[0]]["shapes"]], peers=peers, dropped=dropped,
                              b_shares={n: [o["b"][n] for o in opened.values()] for n in survivors},
                              s_shares={d: [o["s"][d] for o in opened.values()] for d in dropped},
                              request=body["secagg"]["request"], job=body["secagg"]["job"])
    return np.concatenate([t.ravel() for t in total])


def _only_sums(kind, body, reply) -> None:
    """What one reply may hold under secure aggregation: public keys, encrypted shares, masked vectors,
    mask shares, copies of the public request, a site's DP accounting, its one-bit screen verdict."""
    from fedtab.federation import secure_encoding
    from fedtab.federation.site import ENCODE, LEDGER, SCHEMA as SCHEMA_KIND

    ledger = {"format", "site", "epsilon_budget", "delta", "epsilon", "entries"}
    reply = dict(reply)
    if "job_ledger" in reply:  # the site's DP accounting so far (the model file's, if it dies): no count
        assert set(reply.pop("job_ledger")) == ledger
    phase = body.get("phase")
    if kind == SCHEMA_KIND:  # under DP: the columns that do not conform, by name (none here)
        assert reply == {"columns": []}
    elif kind == LEDGER:
        assert set(reply) == {"ledger"} and set(reply["ledger"]) == ledger
    elif kind == ENCODE and phase == secure_encoding.SCREEN:
        assert reply == {"garbage": False}  # an honest site: one bit
    elif kind == ENCODE:  # the histograms (or a domain's magnitude counts): masked counts, the layout a copy
        layout = {k: v for k, v in reply.items() if k not in secure_encoding.WIRE and k != "phase"}
        assert layout or phase == "domain"  # the domain's grid is public: no layout
        assert all(np.array_equal(np.asarray(v), np.asarray(body["request"][k])) for k, v in layout.items())
        # the histograms carry the site's commitments too (encrypted to each site: the screen's proof)
        wire = {"phase", *secure_encoding.WIRE} - (set() if phase == "histogram" else {"commits"})
        assert set(reply) - set(layout) == wire, "a count left a site outside the sum"
    else:
        want = {"keys": {"c", "s"}, "shares": {"shares"}, "unmask": {"b", "s"}}.get(
            phase, {"masked", "b_shares", "shapes", "sigma"})
        assert set(reply) == want, "a count left a site outside the masked sum"
    if "masked" in reply:
        assert reply["masked"].dtype == np.uint64
        assert all(isinstance(x, str) for x in reply["b_shares"].values())


def test_the_coordinator_sees_only_masked_sums_and_distributed_noise(monkeypatch):
    every = []
    synth, seen, draws = _run(monkeypatch, secure=True, every=every)
    sites = sorted(_sites(10))
    phases = [body["phase"] for body, _ in seen]
    assert phases == ["keys", "shares", "unmask", "one-way", "unmask", "select", "unmask", "measure", "unmask"]
    # Every message the coordinator received, of every kind.
    kinds = [(kind, body.get("phase")) for kind, body, _ in every]
    assert ("encode", "histogram") in kinds and ("ledger", None) in kinds and ("schema", None) in kinds
    for kind, body, replies in every:
        assert sorted(replies) == sites
        for reply in replies.values():
            _only_sums(kind, body, reply)
    # The histograms: each site's reply is far from its counts; the sum read is the sum of its noisy ones.
    [histogram] = [(body, replies) for kind, body, replies in every if body.get("phase") == "histogram"]
    noisy = {}
    for site in sites:
        [(exact, noisy[site])] = [(np.concatenate([e.ravel() for _, e, _ in v]), np.concatenate([n.ravel() for _, _, n in v]))
                                  for label, v in draws.items() if label == f"{site}/encode/histogram"]
        read = histogram[1][site]["masked"].view(np.int64).astype(float)
        assert read.size == exact.size and np.median(np.abs(read - exact)) > 1e12
    assert np.array_equal(np.sort(_unmasked(seen, 1, masked=histogram)), np.sort(sum(noisy.values())))
    # The attack: read one site's one-way counts off its own reply. Uniform 64-bit words: far from them.
    body, replies = seen[3]
    for site in sites:
        sigma, exact, noisy = _site_draws(draws, site, "one-way")
        read = replies[site]["masked"].view(np.int64).astype(float)
        assert np.median(np.abs(read - exact)) > 1e12
    # The sum the coordinator reads is exactly the sum of the sites' noisy counts ...
    assert np.array_equal(_unmasked(seen, 3), sum(_site_draws(draws, s, "one-way")[2] for s in sites))
    # ... each site drew sigma / sqrt(3), and the ledger records the sum's sigma (noise multiplier x 1).
    ledger_sigma = {s: next(e for e in synth.result_.ledgers[s]["entries"] if e["phase"] == "marginals/one-way")
                    for s in sites}
    for s in sites:
        sigma = _site_draws(draws, s, "one-way")[0]
        assert sigma == pytest.approx(ledger_sigma[s]["noise_multiplier"] / math.sqrt(3), rel=1e-9)
        assert "secure aggregation over at least 3 sites" in ledger_sigma[s]["target"]
    # The noise in the sum: sd close to the ledger's sigma (not sqrt(3) times it), over a few hundred cells.
    residual = sum(_site_draws(draws, s, "one-way")[2] - _site_draws(draws, s, "one-way")[1] for s in sites)
    want = ledger_sigma[sites[0]]["noise_multiplier"]
    assert residual.size > 100
    assert 0.8 * want < residual.std() < 1.2 * want


def test_broken_control_without_secure_aggregation_the_same_reading_recovers_each_site(monkeypatch):
    synth, seen, draws = _run(monkeypatch, secure=False)
    sites = sorted(_sites(10))
    assert [body["phase"] for body, _ in seen] == ["one-way", "select", "measure"]
    body, replies = seen[0]
    for site in sites:
        sigma, exact, noisy = _site_draws(draws, site, "one-way")
        read = np.concatenate([np.asarray(c, dtype=float).ravel() for c in replies[site]["counts"]])
        assert np.array_equal(read, noisy)  # the site's own counts, under its own noise only
        assert np.median(np.abs(read - exact)) < 3 * sigma
    # Each site adds the full sigma: the sum carries sqrt(3) sigma.
    residual = sum(_site_draws(draws, s, "one-way")[2] - _site_draws(draws, s, "one-way")[1] for s in sites)
    want = math.sqrt(3) * _site_draws(draws, sites[0], "one-way")[0]
    assert 0.8 * want < residual.std() < 1.2 * want


# For the tests that sample after a site was lost: a nullable column keeps its missing code where its
# noisy missing count reads 3 sds or more, which on these 60-row sites is half the rows in one fit of a
# few hundred (the test failed 1 of 20 runs here); the loss is what these tests are about.
NOT_NULLABLE = TableSchema(tuple(dataclasses.replace(c, nullable=False) for c in SCHEMA.columns))


class _Dropping(InProcessTransport):
    """A transport on which one site's reply to one phase never arrives (what Flower's request_available
    returns when a site dies mid-request)."""

    lose: tuple[str, str] = ("", "")

    def request_available(self, kind, bodies):
        site, phase = self.lose
        if kind == MEASURE and next(iter(bodies.values())).get("phase") == phase:
            replies = self.request(kind, bodies)  # the site computed (and spent) it; the reply is lost
            return {s: r for s, r in replies.items() if s != site}
        return self.request(kind, bodies)


@pytest.mark.parametrize("min_sites, survives", [(2, True), (None, False)])
def test_a_site_lost_mid_job_is_dropped_when_min_sites_allows(monkeypatch, min_sites, survives):
    """Three sites, 'south' lost at the 'select' request. With min_sites = 2 each site adds sigma / sqrt(2)
    and the two others' sum is read; by default (every site) nothing is unmasked and the run stops."""
    from fedtab.api import FederatedSynthesizer

    monkeypatch.setattr(_Dropping, "lose", ("south", "select"))
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", _Dropping)
    events = []
    synth = FederatedSynthesizer("mst", epsilon=1.0, schema=NOT_NULLABLE, seed=1, min_sites=min_sites,
                                 model_options={"iters": 50}, progress=lambda e, i: events.append(i.get("name", "")))
    if not survives:
        with pytest.raises(FederationError, match="fewer than the 3"):
            synth.fit(_sites(300))
        return
    synth.fit(_sites(300))
    assert any("'south'" in e and "dropped out of 'select'" in e for e in events)
    shares = {e["target"] for e in synth.result_.ledgers["north"]["entries"] if e["phase"].startswith("marginals/")}
    assert all("at least 2 sites" in t for t in shares)
    assert synth.sample(100, seed=1).notna().all().all()


def test_a_site_lost_between_the_one_way_measurements_leaves_the_second_alone(monkeypatch):
    """Under the star on the target the one-way tables are measured twice and averaged; a site lost at the
    second request leaves a sum over fewer sites, which is not averaged with the first (their totals
    differ): the second alone is kept. Broken control: the average taken anyway is caught by the spy."""
    from fedtab.api import FederatedSynthesizer
    from fedtab.federation import marginals

    calls = []
    monkeypatch.setattr(marginals, "averaged", lambda *a: calls.append(a) or (a[0], a[1]))

    def fit(lose):
        monkeypatch.setattr(_Dropping, "lose", lose)
        monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", _Dropping)
        events = []
        synth = FederatedSynthesizer("mst", epsilon=1.0, schema=NOT_NULLABLE, seed=1, min_sites=2, target="kind",
                                     model_options={"iters": 50}, progress=lambda e, i: events.append(i.get("name", "")))
        synth.fit(_sites(60))
        assert any("the star on the target" in e for e in events)
        return synth, events

    fit(("", ""))
    assert len(calls) == 1  # the control: with every site in both, the two are averaged
    synth, events = fit(("south", marginals.AGAIN))
    assert any("'south'" in e and f"dropped out of '{marginals.AGAIN}'" in e for e in events)
    assert len(calls) == 1
    assert synth.sample(100, seed=1).notna().all().all()


def _without_bounds(*names: str) -> TableSchema:
    """SCHEMA with the numerical columns ``names`` declared without bounds (the domain phase finds them)."""
    return dataclasses.replace(SCHEMA, columns=tuple(
        dataclasses.replace(c, lower=None, upper=None) if c.name in names else c for c in SCHEMA.columns))


def test_a_domain_phase_of_numerical_columns_is_summed_securely(monkeypatch):
    """Columns declared without bounds: each site's DP magnitude counts reach the coordinator masked; it
    reads their sum (each site's noisy counts summed) and finds the bounds from it; every message of the
    job holds only sums. Broken control: without secure aggregation each site's counts are in the clear."""
    from fedtab.transform.plan import F_COUNTS, wire_key

    every = []
    synth, _, draws = _run(monkeypatch, secure=True, every=every, schema=_without_bounds("value", "noise"), rows=6000)
    [(body, replies)] = [(b, r) for kind, b, r in every if kind == "encode" and b.get("phase") == "domain"]
    for kind, b, r in every:
        for reply in r.values():
            _only_sums(kind, b, reply)
    sites = sorted(replies)
    assert len(sites) == 3 and all(set(r["keys"]) == {"value/counts", "noise/counts"} for r in replies.values())
    # The sum read is the sum of the sites' noisy magnitude counts (drawn at each one's full noise).
    [unmask] = [(b, r) for kind, b, r in every if b.get("phase") == "unmask"
                and b["secagg"]["request"] == body["secagg"]["request"]]
    peers = next(b for _, b, _ in every if b.get("phase") == "shares")["secagg"]["peers"]
    total = secagg.unmask_sum({n: replies[n]["masked"] for n in sites}, [tuple(x) for x in replies[sites[0]]["shapes"]],
                              peers=peers, dropped=[], b_shares={n: [o["b"][n] for o in unmask[1].values()] for n in sites},
                              s_shares={}, request=body["secagg"]["request"], job=body["secagg"]["job"])
    order = ["value", "noise"]  # the columns' draws in the schema's order; the masked vector in its keys'
    keys = replies[sites[0]]["keys"]
    noisy = {s: np.concatenate([v[order.index(k.split("/")[0])][2].ravel() for k in keys]) for s in sites
             for label, v in draws.items() if label == f"{s}/encode/domain"}
    assert np.array_equal(np.concatenate([t.ravel() for t in total]), sum(noisy.values()))
    for s in sites:  # each reply read as counts: uniform words, far from its own
        assert np.median(np.abs(replies[s]["masked"].view(np.int64).astype(float) - noisy[s])) > 1e12
    # The bounds found from the sum: magnitude cells about the rows (value in 0-100, noise in 0-10).
    sample = synth.sample(2000, seed=0)
    assert 8 <= sample["value"].min() and 80 <= sample["value"].max() <= 128
    assert 0 <= sample["noise"].min() and 8 <= sample["noise"].max() <= 16
    # Broken control: the same job without secure aggregation sends each site's counts in the clear.
    plain = []
    _run(monkeypatch, secure=False, every=plain, schema=_without_bounds("value", "noise"), rows=6000)
    [(_, clear)] = [(b, r) for kind, b, r in plain if kind == "encode" and b.get("phase") == "domain"]
    assert all("masked" not in r and np.size(r[wire_key("value", F_COUNTS)]) > 1 for r in clear.values())


def test_a_categorical_domain_stays_per_site_and_the_coordinator_says_so(monkeypatch):
    """A categorical column declared without categories: its DP set union is per site (the masked sum
    cannot carry values), said once in the progress notes; the histograms are still summed."""
    schema = dataclasses.replace(SCHEMA, columns=tuple(
        dataclasses.replace(c, categories=None) if c.name == "kind" else c for c in SCHEMA.columns))
    notes, every = [], []
    original = InProcessTransport.outcomes

    def recording(self, kind, bodies):
        replies = original(self, kind, bodies)
        every.append((kind, next(iter(bodies.values())), replies))
        return replies

    monkeypatch.setattr(InProcessTransport, "outcomes", recording)
    fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=schema, seed=1, model_options={"iters": 20},
                                progress=lambda e, i: notes.append(i.get("name", ""))).fit(_sites(2000))
    assert sum("domain phase stays per site" in n and "'kind'" in n for n in notes) == 1
    [domain] = [r for kind, b, r in every if kind == "encode" and b.get("phase") == "domain"]
    assert all("masked" not in r and "kind/keys" in r for r in domain.values())  # per site, in the clear
    [histogram] = [r for kind, b, r in every if kind == "encode" and b.get("phase") == "histogram"]
    assert all("masked" in r for r in histogram.values())


@pytest.mark.parametrize("secure", [True, False])
def test_a_range_the_noise_hides_is_refused_not_guessed(secure):
    """3 sites of 300 rows at epsilon 1: 'value''s three real magnitude cells hold ~300 rows each against a
    threshold of 4.8 sds (774): each passes now and then, so the noise is replayed from a test seed
    under which none does. The run stops naming the column and the fix (the fullest noisy cell gave
    bounds of -1e6 for values in 0-100)."""
    from fedtab.privacy.secret import seeded_sources_for_tests

    with _replace_source_for_tests(seeded_sources_for_tests(3)), pytest.raises(
            ConfigError, match="Column 'value' is declared without bounds.*Declare the column's public"):
        fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=_without_bounds("value"), seed=1,
                                    secure_aggregation=secure, model_options={"iters": 20}).fit(_sites(300))


def test_the_fullest_cell_is_not_read_as_a_range():
    """The merge itself: magnitude counts none of which passes the threshold give no bounds, and the
    column is refused (before: the fullest cell, here a noise cell at 2**19, became the range)."""
    from fedtab.transform import EncodingDP, EncodingPlan
    from fedtab.transform.plan import F_COUNTS, PHASE_DOMAIN, wire_key
    from fedtab.transform.statistics import MAGNITUDE_EDGES, merge_statistics

    plan = EncodingPlan(_without_bounds("value"), dp=EncodingDP(epsilon=0.1, delta=1e-5))
    counts = np.zeros(len(MAGNITUDE_EDGES) + 1)
    counts[np.searchsorted(MAGNITUDE_EDGES, 5e5)] = 3.0 * plan.noise_multiplier  # below 4.8 sds of one site
    with pytest.raises(ConfigError, match="Column 'value' is declared without bounds"):
        merge_statistics(plan, PHASE_DOMAIN, [{"phase": PHASE_DOMAIN, wire_key("value", F_COUNTS): counts}])


def test_the_targets_two_way_tables_of_the_encoding_are_summed_securely(monkeypatch):
    """With a declared target, the encoding's two-way tables reach the coordinator masked too (and their
    noise is one release's: more of them stand above it), for every model."""
    from fedtab.federation.site import ENCODE

    seen = []
    original = InProcessTransport.request

    def recording(self, kind, bodies):
        replies = original(self, kind, bodies)
        if kind == ENCODE:
            seen.append((next(iter(bodies.values()))["phase"], replies))
        return replies

    monkeypatch.setattr(InProcessTransport, "request", recording)
    measured = {}
    for secure in (True, False):
        seen.clear()
        synth = fedtab.FederatedSynthesizer("mst", epsilon=3.0, schema=SCHEMA, seed=1, target="kind",
                                            secure_aggregation=secure, model_options={"iters": 50}).fit(_sites(600))
        [(_, pairs)] = [(p, r) for p, r in seen if p == "pairs"]
        for reply in pairs.values():
            counts = [k for k in reply if k.startswith("@pair")]
            assert (set(reply) >= {"masked", "b_shares"} and not counts) if secure else (counts and "masked" not in reply)
        measured[secure] = len(synth.transformer_.pair_tables_)
        entries = [e for e in synth.result_.ledgers["north"]["entries"] if e["phase"].endswith("pairs")]
        assert entries and all(("secure aggregation" in e["target"]) == secure for e in entries)
    assert measured[True] >= measured[False] > 0


@pytest.mark.parametrize("drop", [(), ("d",)])
def test_a_site_computes_proven_entries_of_the_sum_as_the_coordinator_reads_them(drop):
    """``entry_proof`` / ``proven_entries``: any entry of an unmasked sum, a lost site's masks removed,
    equals the coordinator's sum; a forged Merkle path, a chunk from another index or a forged dropped
    site's key is refused."""
    names = ["a", "b", "c", "d"]
    sessions, peers, boxes = _sessions(names, threshold=3)
    rng = np.random.default_rng(0)
    inputs = {n: [rng.integers(-1000, 1000, size=700)] for n in names}
    out = {n: sessions[n].mask(inputs[n], me=n, request=0, sites=names, job="j", commit=True) for n in names}
    survivors = [n for n in names if n not in drop]
    b_boxes = {to: {frm: out[frm][1][to] for frm in survivors} for to in survivors}
    s_boxes = {to: {frm: boxes[to][frm] for frm in drop} for to in survivors}
    opened = {n: sessions[n].unmask(me=n, request=0, survivors=survivors, dropped=list(drop), s_inbox=s_boxes[n],
                                    b_inbox=b_boxes[n], job="j") for n in survivors}
    b_shares = {n: [o["b"][n] for o in opened.values()] for n in survivors}
    s_shares = {d: [o["s"][d] for o in opened.values()] for d in drop}
    masked = {n: out[n][0] for n in survivors}
    [total] = secagg.unmask_sum(masked, [(700,)], peers=peers, dropped=list(drop), b_shares=b_shares,
                                s_shares=s_shares, request=0, job="j")
    commits = {n: sessions[n].commit_boxes[0] for n in names}
    entries = [0, 255, 256, 699]
    proof = secagg.entry_proof(masked, entries, rebuilt=secagg.rebuild(b_shares, s_shares), commits=commits,
                               to="a")
    got = sessions["a"].proven_entries("a", 0, entries, proof)
    assert got == {k: int(total[k]) for k in entries}
    assert total[699] == sum(inputs[n][0][699] for n in survivors)
    forged = {**proof, "chunks": {**proof["chunks"], "b": {**proof["chunks"]["b"], "0": {
        **proof["chunks"]["b"]["0"], "path": ["00" * 32] * len(proof["chunks"]["b"]["0"]["path"])}}}}
    with pytest.raises(FederationError, match="site 'b''s masked entries"):
        sessions["a"].proven_entries("a", 0, entries, forged)
    moved = {**proof, "chunks": {**proof["chunks"], "b": {**proof["chunks"]["b"], "0": proof["chunks"]["b"]["1"]}}}
    with pytest.raises(FederationError, match="site 'b''s masked entries"):
        sessions["a"].proven_entries("a", 0, entries, moved)
    if drop:
        with pytest.raises(FederationError, match="dropped site 'd''s mask key"):
            sessions["a"].proven_entries("a", 0, entries, {**proof, "dropped": {"d": proof["seeds"]["a"]}})

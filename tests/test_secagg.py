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

import math
from collections import defaultdict

import numpy as np
import pytest

import fedtab
from fedtab.errors import FederationError
from fedtab.federation import secagg
from fedtab.federation.marginals import MEASURE, secure_sum
from fedtab.federation.transport import InProcessTransport
from fedtab.privacy.secret import SecretSource, _replace_source_for_tests
from tests.test_marginal_model import SCHEMA, _sites


# -- the protocol on its own ---------------------------------------------------------------------------
def _key_set(names):
    keys = {n: secagg.SiteKeys() for n in names}
    return keys, {n: k.public for n, k in keys.items()}


def test_masks_cancel_in_the_sum_and_hide_each_input():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "e"]
    keys, peers = _key_set(names)
    inputs = {n: [rng.integers(-50, 500, size=7).astype(float), rng.integers(0, 9, size=(2, 3)).astype(float)]
              for n in names}
    masked = [secagg.mask(inputs[n], me=n, keys=keys[n], peers=peers, job="j", threshold=5) for n in names]
    total = secagg.unmask_sum(masked, [(7,), (2, 3)])
    for got, i in zip(total, range(2)):
        assert np.array_equal(got, sum(inputs[n][i] for n in names))
    # Each masked reply on its own: uniform 64-bit words, nowhere near the counts it carries.
    for n, m in zip(names, masked):
        plain = secagg.encode(inputs[n], real=False)
        assert np.all(np.abs(m.view(np.int64).astype(float) - plain.view(np.int64)) > 1e6)
    # A second request with the same keys uses new masks (the request number is in every seed).
    again = secagg.mask(inputs["a"], me="a", keys=keys["a"], peers=peers, job="j", threshold=5)
    assert not np.array_equal(again, masked[0])


def test_real_values_round_trip_in_fixed_point():
    keys, peers = _key_set(["x", "y"])
    vals = {"x": [np.array([1.25, -3.5, 1e6])], "y": [np.array([0.001, 2.0, -1e6])]}
    total = secagg.unmask_sum([secagg.mask(vals[n], me=n, keys=keys[n], peers=peers, job="j", threshold=2, real=True)
                               for n in ("x", "y")], [(3,)], real=True)[0]
    assert np.allclose(total, vals["x"][0] + vals["y"][0], atol=2 ** -15)


@pytest.mark.parametrize("case", ["missing own key", "replaced own key", "key twice", "too few", "not a key"])
def test_a_site_refuses_a_key_set_it_cannot_trust(case):
    keys, peers = _key_set(["a", "b", "c"])
    other = secagg.SiteKeys()
    threshold = 3
    if case == "missing own key":
        peers.pop("a")
    elif case == "replaced own key":
        peers["a"] = other.public
    elif case == "key twice":
        peers["c"] = peers["b"]
    elif case == "too few":
        threshold = 4
    else:
        peers["b"] = "bm90IGEga2V5"
    with pytest.raises(FederationError, match="site 'a'|key of site 'b'"):
        secagg.mask([np.ones(3)], me="a", keys=keys["a"], peers=peers, job="j", threshold=threshold)


def test_keys_are_never_serialised():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(secagg.SiteKeys())


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


def _run(monkeypatch, secure: bool):
    """A DP mst job on 3 sites; every measurement request and reply the coordinator handled."""
    seen = []
    original = InProcessTransport.request

    def recording(self, kind, bodies):
        replies = original(self, kind, bodies)
        if kind == MEASURE:
            seen.append((next(iter(bodies.values())), replies))
        return replies

    monkeypatch.setattr(InProcessTransport, "request", recording)
    _Recording.draws = defaultdict(list)
    with _replace_source_for_tests(_Recording):
        synth = fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=SCHEMA, seed=1, secure_aggregation=secure,
                                            model_options={"iters": 50}).fit(_sites(300))
    return synth, seen, dict(_Recording.draws)


def _site_draws(draws, site, phase):
    [(sigma, exact, noisy)] = [(s, np.concatenate([e.ravel() for _, e, _ in v]),
                                np.concatenate([n.ravel() for _, _, n in v]))
                               for label, v in draws.items() if label == f"{site}/marginals/{phase}"
                               for s in {x for x, _, _ in v}]
    return sigma, exact, noisy


def test_the_coordinator_sees_only_masked_sums_and_distributed_noise(monkeypatch):
    synth, seen, draws = _run(monkeypatch, secure=True)
    sites = sorted(_sites(10))
    phases = [body["phase"] for body, _ in seen]
    assert phases == ["keys", "one-way", "select", "measure"]
    for body, replies in seen[1:]:
        for site, reply in replies.items():
            assert set(reply) == {"masked", "shapes", "sigma"}, "a count left a site outside the masked sum"
            assert reply["masked"].dtype == np.uint64
    # The attack: read one site's one-way counts off its own reply. Uniform 64-bit words: far from them.
    body, replies = seen[1]
    for site in sites:
        sigma, exact, noisy = _site_draws(draws, site, "one-way")
        read = replies[site]["masked"].view(np.int64).astype(float)
        assert np.median(np.abs(read - exact)) > 1e12
    # The sum the coordinator reads is exactly the sum of the sites' noisy counts ...
    total = np.concatenate([t.ravel() for t in secure_sum(replies, body["secagg"]["peers"], real=False)])
    assert np.array_equal(total, sum(_site_draws(draws, s, "one-way")[2] for s in sites))
    # ... each site drew sigma / sqrt(3), and the ledger records the sum's sigma (noise multiplier x 1).
    ledger_sigma = {s: next(e for e in synth.result_.ledgers[s]["entries"] if e["phase"] == "marginals/one-way")
                    for s in sites}
    for s in sites:
        sigma = _site_draws(draws, s, "one-way")[0]
        assert sigma == pytest.approx(ledger_sigma[s]["noise_multiplier"] / math.sqrt(3), rel=1e-9)
        assert "secure aggregation over 3 sites" in ledger_sigma[s]["target"]
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


def test_a_site_missing_from_the_sum_leaves_nothing_readable():
    keys, peers = _key_set(["a", "b", "c"])
    replies = {n: {"masked": secagg.mask([np.arange(4.0)], me=n, keys=keys[n], peers=peers, job="j", threshold=3),
                   "shapes": [[4]], "sigma": 1.0} for n in ("a", "b")}
    with pytest.raises(FederationError, match="no masked reply from 1 site .*'c'"):
        secure_sum(replies, peers, real=False)

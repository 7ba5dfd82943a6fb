"""A poisoned site is contained (issue 22 part 5): DP-SGD rounds screen each update and can trim.

These runs turn secure aggregation off: the screen and the trimmed mean need each site's update, which
the coordinator sees only then (with the trimmed mean, or secure aggregation off).

Attacks: one site of four returns NaN weights, weights scaled far beyond a round's reach, or its update
sign-flipped (inside the bound). Controls: the screen's bound is derived from Adam alone, so an honest
run (DP or not) is never screened out (false alarm), and a plain mean lets the flipped update through
where the trimmed mean keeps every value inside the honest sites' range.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedtab
from fedtab.federation.aggregation import adam_step_bound, screen_update, trimmed_average, weighted_average
from fedtab.federation.transport import InProcessTransport
from tests.conftest import non_dp_policy
from tests.test_marginal_model import SCHEMA


def _four_sites(n: int = 200):
    from tests.test_marginal_model import _sites

    three = _sites(n)
    return {**three, "west": three["east"].sample(frac=1.0, random_state=1).reset_index(drop=True)}


@pytest.mark.parametrize("betas", [(0.5, 0.9), (0.9, 0.999)])
def test_the_adam_bound_holds_for_any_gradients(betas):
    """Adversarial gradient sequences (constant, alternating, growing, spiky): no parameter moves further
    than lr x adam_step_bound over the steps."""
    steps, lr = 25, 1e-2
    rng = np.random.default_rng(0)
    for kind in ("constant", "alternating", "growing", "spiky", "random"):
        p = torch.zeros(64, requires_grad=True)
        opt = torch.optim.Adam([p], lr=lr, betas=betas, weight_decay=1e-6)
        for t in range(steps):
            g = {"constant": np.ones(64), "alternating": np.full(64, (-1.0) ** t), "growing": np.full(64, 10.0 ** (t % 5)),
                 "spiky": np.where(np.arange(64) == t % 64, 1e6, 1e-6), "random": rng.standard_cauchy(64)}[kind]
            p.grad = torch.tensor(g, dtype=torch.float32)
            opt.step()
        assert float(p.detach().abs().max()) <= lr * adam_step_bound(betas, steps) * 1.0001, kind


def test_screen_names_what_is_wrong():
    cur = {"a": np.zeros(3, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    ok = {"a": np.full(3, 0.01, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
    assert screen_update(ok, cur, bounds={"a": 0.02}) is None  # 'b' has no bound: a running statistic
    assert "not finite" in screen_update({**ok, "a": np.array([0, np.nan, 0], np.float32)}, cur, bounds={"a": 0.02})
    assert "moved parameter 'a'" in screen_update({**ok, "a": np.full(3, 1.0, np.float32)}, cur, bounds={"a": 0.02})
    assert "shape" in screen_update({**ok, "a": np.zeros(4, np.float32)}, cur, bounds={})
    assert "other parameters" in screen_update({"a": ok["a"]}, cur, bounds={})


def test_trimmed_mean_keeps_every_value_inside_the_honest_range_and_a_mean_does_not():
    rng = np.random.default_rng(0)
    honest = [{"w": rng.normal(0, 1, 50)} for _ in range(3)]
    hostile = {"w": -10 * honest[0]["w"]}
    lo = np.min([h["w"] for h in honest], axis=0)
    hi = np.max([h["w"] for h in honest], axis=0)
    trimmed = trimmed_average(honest + [hostile], [1, 1, 1, 1], trim=1)["w"]
    plain = weighted_average(honest + [hostile], [1, 1, 1, 1])["w"]
    assert np.all((trimmed >= lo - 1e-12) & (trimmed <= hi + 1e-12))
    assert not np.all((plain >= lo) & (plain <= hi))  # the broken control: a mean follows the hostile site


class _Hostile:
    """Wraps the in-process transport: one site's training replies are altered after the site computed
    them (what hostile code at that site could send)."""

    def __init__(self, monkeypatch, site: str, how: str):
        original = InProcessTransport.request
        self.rounds = 0

        def request(transport, kind, bodies):
            replies = original(transport, kind, bodies)
            if kind == "train" and site in replies:
                self.rounds += 1
                glob = bodies[site]["weights"]
                w = replies[site]["weights"]
                if how == "nan":
                    w = {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in w.items()}
                elif how == "scaled":
                    w = {k: glob[k] + 100.0 * (v - glob[k]) for k, v in w.items()}
                elif how == "flipped":
                    w = {k: glob[k] - (v - glob[k]) for k, v in w.items()}
                replies[site] = {**replies[site], "weights": w}
            return replies

        monkeypatch.setattr(InProcessTransport, "request", request)


def _fit(aggregation="mean", epsilon=None, events=None, min_sites=3, **kw):
    """Secure aggregation off: screening and trimming need each site's update (under secure aggregation
    of the updates the coordinator screens only their sum: tests/test_secagg_updates.py)."""
    kw.setdefault("secure_aggregation", False)

    def progress(event, info):
        if events is not None:
            events.append((event, info))

    policy = {} if epsilon is not None else {"site_policy": non_dp_policy()}
    return fedtab.FederatedSynthesizer("tvae", epsilon=epsilon, schema=SCHEMA, seed=0, rounds=3, batch_size=100,
                                       aggregation=aggregation, progress=progress, min_sites=min_sites, **policy,
                                       **kw).fit(_four_sites())


@pytest.mark.parametrize("how", ["nan", "scaled"])
def test_a_site_sending_nan_or_scaled_weights_is_named_and_left_out(monkeypatch, how):
    hostile = _Hostile(monkeypatch, "west", how)
    events = []
    synth = _fit(events=events)
    dropped = [info for event, info in events if info.get("dropped")]
    assert dropped and dropped[0]["dropped"] == ["west"] and "site 'west'" in dropped[0]["name"]
    assert hostile.rounds == 1  # left out of every later round
    assert set(synth.result_.ledgers) == set(_four_sites(5))  # the model records every site that contributed
    assert all(np.all(np.isfinite(v)) for v in synth.weights_.values())
    assert synth.sample(50, seed=1).notna().all().all()


def test_min_sites_stops_the_run_when_too_many_updates_fail(monkeypatch):
    from fedtab.errors import FederationError

    _Hostile(monkeypatch, "west", "nan")
    with pytest.raises(FederationError, match="'west'.*not finite.*min_sites"):
        _fit(min_sites=None)


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_honest_sites_are_never_screened_out(epsilon):
    """The false-alarm control: every honest round passes the screen (DP and non-DP)."""
    events = []
    _fit(epsilon=epsilon, events=events)
    assert not [info for _, info in events if info.get("dropped")]
    assert sum(1 for e, _ in events if e == "round") == 3


def test_trimmed_mean_contains_a_sign_flipping_site(monkeypatch):
    """The flipped update passes the screen (same size as an honest one). With the trimmed mean the model
    stays closer to the all-honest model than with a plain mean (the broken control)."""
    honest = _fit(aggregation="trimmed_mean").weights_

    def gap(w):
        return float(np.sqrt(sum(float(((w[k] - honest[k]) ** 2).sum()) for k in honest)))

    _Hostile(monkeypatch, "west", "flipped")
    with_trim = _fit(aggregation="trimmed_mean").weights_
    with_mean = _fit(aggregation="mean").weights_
    assert gap(with_trim) < gap(with_mean)

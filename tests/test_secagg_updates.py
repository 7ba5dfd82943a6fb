"""Secure aggregation of the DP-SGD models' updates (fedtab.federation.secure_updates, issue 22 part 4).

Claims, each with an attack or a broken control:
- no training reply the coordinator receives holds a site's update: only a masked vector (read as an
  update it is uncorrelated with the real one) and encrypted shares; with secure aggregation off the same
  reading finds each site's update exactly (the control);
- the secure mean equals the plain row-weighted mean of the same updates, to the fixed point's rounding;
- a site lost mid-round leaves the survivors' mean;
- the trimmed mean turns the secure sum of updates off, and the coordinator says so.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import fedtab
from fedtab.errors import FederationError
from fedtab.federation import secagg, secure_updates, training
from fedtab.federation.aggregation import weighted_average
from fedtab.federation.site import TRAIN
from fedtab.federation.transport import InProcessTransport
from tests.conftest import non_dp_policy
from tests.test_hostile_sites import _four_sites
from tests.test_marginal_model import SCHEMA
from tests.test_secagg import _sessions

# The fixed point rounds each site's rows x change to 2**-UPDATE_BITS: at most half a unit per site and
# value. The mean divides the sum of n sites by their summed rows (each >= 1, so >= n): its error is at most
# 2**-(UPDATE_BITS + 1), ~1.2e-10, far below float32's spacing of any weight above 1e-3 in size.
TOL = 2.0 ** -(secagg.UPDATE_BITS + 1)


# -- at the aggregation level ---------------------------------------------------------------------------
def _secure_mean(glob, new, rows, *, drop=()):
    """Each site masks its reply (``masked_reply``), the coordinator unmasks the survivors' sum and takes
    the mean (``mean_of_sum``), as a training round does; the sites in ``drop`` mask but never arrive."""
    names = sorted(new)
    sessions, peers, boxes = _sessions(names, threshold=len(names) - len(drop))
    body = {"weights": glob, "secagg": {"request": 0, "sites": names, "job": "j"}}
    replies = {n: secure_updates.masked_reply(n, body, {"weights": new[n], "losses": {}}, {"rows_estimate": rows[n]},
                                              sessions[n]) for n in names}
    survivors = [n for n in names if n not in drop]
    b_boxes = {to: {frm: replies[frm]["b_shares"][to] for frm in survivors} for to in survivors}
    s_boxes = {to: {frm: boxes[to][frm] for frm in drop} for to in survivors}
    opened = {n: sessions[n].unmask(me=n, request=0, survivors=survivors, dropped=list(drop), s_inbox=s_boxes[n],
                                    b_inbox=b_boxes[n], job="j") for n in survivors}
    keys = sorted(glob)
    total = secagg.unmask_sum({n: replies[n]["masked"] for n in survivors}, [np.shape(glob[k]) for k in keys],
                              peers=peers, dropped=list(drop),
                              b_shares={n: [o["b"][n] for o in opened.values()] for n in survivors},
                              s_shares={d: [o["s"][d] for o in opened.values()] for d in drop},
                              request=0, job="j", real=True, bits=secagg.UPDATE_BITS)
    weight = sum(rows[n] for n in survivors)
    means = {k: t / weight for k, t in zip(keys, total)}
    return secure_updates.mean_of_sum(total, keys, glob, weight), means, replies


def _updates(names, rng):
    """Global float32 weights and each site's new weights: changes from 1e-6 to 1 in size, both signs."""
    glob = {"w": rng.normal(0, 1, (40, 30)).astype(np.float32), "b": rng.normal(0, 1, 30).astype(np.float32),
            "count": np.array(7, dtype=np.int64)}
    scale = 10.0 ** rng.uniform(-6, 0, size=(len(names), 40 * 30 + 30))
    new = {}
    for i, n in enumerate(names):
        step = scale[i] * rng.choice([-1.0, 1.0], size=scale[i].size)
        new[n] = {"w": (glob["w"] + step[:1200].reshape(40, 30)).astype(np.float32),
                  "b": (glob["b"] + step[1200:]).astype(np.float32), "count": np.array(7 + 12, dtype=np.int64)}
    return glob, new


@pytest.mark.parametrize("drop", [(), ("c",)])
def test_the_secure_mean_is_the_plain_weighted_mean(drop):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    glob, new = _updates(names, rng)
    rows = {"a": 812.0, "b": 95.5, "c": 3021.0, "d": 1.0}
    got, means, replies = _secure_mean(glob, new, rows, drop=drop)
    kept = [n for n in names if n not in drop]  # a site lost mid-round: the survivors' mean
    plain = weighted_average([new[n] for n in kept], [rows[n] for n in kept])
    w = np.array([rows[n] for n in kept]) / sum(rows[n] for n in kept)
    for k in ("w", "b"):  # the mean change in float64, then the float32 weights both ways (1 spacing at most)
        exact = sum(wi * (new[n][k].astype(np.float64) - glob[k]) for wi, n in zip(w, kept))
        assert np.max(np.abs(means[k] - exact)) <= TOL
        assert got[k].dtype == np.float32
        assert np.all(np.abs(got[k].astype(np.float64) - plain[k]) <= np.spacing(np.abs(plain[k])))
    assert got["count"] == 19  # an integer buffer: the rounded mean change
    for n in names:  # what left each site: a uint64 vector and encrypted shares, no weights
        assert set(replies[n]) == {"masked", "b_shares", "shapes", "losses"}
        assert replies[n]["masked"].dtype == np.uint64


def test_the_sum_is_screened():
    glob = {"w": np.zeros(3, np.float32)}
    bounds = {"a": {"w": 0.01}, "b": {"w": 0.01}}
    ok = [np.array([0.5, -1.9, 0.0])]  # rows 100 + 100, bound 0.01: at most 2 in rows x change
    args = dict(weights={"a": 100.0, "b": 100.0}, bounds=bounds, n_sites=2)
    assert secure_updates.screen_sum(ok, ["w"], glob, **args) is None
    assert "not finite" in secure_updates.screen_sum([np.array([0.0, np.nan, 0.0])], ["w"], glob, **args)
    assert "moved parameter 'w'" in secure_updates.screen_sum([np.array([0.0, 2.5, 0.0])], ["w"], glob, **args)
    assert "shapes" in secure_updates.screen_sum([np.zeros(4)], ["w"], glob, **args)


# -- a real job -------------------------------------------------------------------------------------------
class _Recording(InProcessTransport):
    """Every training request and reply the coordinator handled (after the wire's pack and unpack)."""

    messages: list = []

    def outcomes(self, kind, bodies):
        replies = super().outcomes(kind, bodies)
        if kind == TRAIN:
            self.messages.extend((site, bodies[site], replies[site]) for site in bodies if site in replies)
        return replies


def _real_updates(monkeypatch):
    """Each site's true new weights per round, recorded where the site computes them."""
    seen = defaultdict(dict)
    original = training.train_one_round

    def recording(setup, data, weights, *, round_index, site=None, **kw):
        out = original(setup, data, weights, round_index=round_index, site=site, **kw)
        seen[site][round_index] = {k: np.array(v) for k, v in out["weights"].items()}
        return out

    monkeypatch.setattr(training, "train_one_round", recording)
    return seen


_ROWS: dict = {}  # each site's own row estimate, read where it weights its update


def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _arrays(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _arrays(v)


def _fit(monkeypatch, *, secure=True, epsilon=None, transport=_Recording, min_sites=None, aggregation="mean",
         events=None):
    transport.messages = []
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", transport)
    policy = {} if epsilon is not None else {"site_policy": non_dp_policy()}
    return fedtab.FederatedSynthesizer(
        "tvae", epsilon=epsilon, schema=SCHEMA, seed=0, rounds=2, batch_size=100, secure_aggregation=secure,
        min_sites=min_sites, aggregation=aggregation, model_options={"compress_dims": [32], "decompress_dims": [32],
                                                                      "embedding_dim": 16},
        progress=None if events is None else (lambda e, i: events.append(i.get("name", ""))), **policy,
    ).fit(_four_sites())


@pytest.mark.parametrize("epsilon", [None, 2.0])
def test_no_training_reply_holds_a_sites_update(monkeypatch, epsilon):
    real = _real_updates(monkeypatch)
    masked_reply = secure_updates.masked_reply

    def recording(site, body, reply, state, session):
        _ROWS[site] = float(state["rows_estimate"])
        return masked_reply(site, body, reply, state, session)

    monkeypatch.setattr(secure_updates, "masked_reply", recording)
    synth = _fit(monkeypatch, epsilon=epsilon)
    messages = _Recording.messages
    assert len(messages) == 8  # 4 sites x 2 rounds
    for site, body, reply in messages:
        glob = body["weights"]
        new = real[site][int(body["round"])]
        names = sorted(glob)
        delta = np.concatenate([(new[n].astype(np.float64) - glob[n]).ravel() for n in names])
        assert "weights" not in reply and set(reply) >= {"masked", "b_shares", "shapes"}
        assert all(isinstance(v, str) for v in reply["b_shares"].values())
        for a in _arrays(reply):  # no array holds a parameter's new weights or its change
            for n in names:
                if a.shape == new[n].shape and a.size > 1:
                    assert not np.allclose(a, new[n]) and not np.allclose(a, new[n] - glob[n])
        # The attack: read the masked vector as the site's (rows x) update: noise, uncorrelated with it.
        read = reply["masked"].view(np.int64).astype(np.float64)
        assert read.size == delta.size > 1000
        assert abs(np.corrcoef(read, delta)[0, 1]) < 0.1
    # The model still trained: its weights are the mean of the last round's updates, each weighted by its
    # site's own row estimate (the encoding's histograms were summed securely too: the coordinator divides
    # by the consortium's row estimate, its equal shares summing to the sites' own estimates).
    assert not synth.result_.site_rows_known
    shares = synth.result_.site_weights
    rows = {site: _ROWS[site] for site in shares}
    assert sum(shares.values()) == pytest.approx(sum(rows.values()), rel=1e-9)
    plain = weighted_average([real[s][1] for s in sorted(rows)], [rows[s] for s in sorted(rows)])
    for k, v in synth.weights_.items():
        if np.issubdtype(v.dtype, np.floating):
            assert np.allclose(v, plain[k], rtol=0, atol=1e-6), k


def test_broken_control_without_secure_aggregation_the_reading_finds_each_update(monkeypatch):
    real = _real_updates(monkeypatch)
    _fit(monkeypatch, secure=False)
    assert len(_Recording.messages) == 8
    for site, body, reply in _Recording.messages:
        new = real[site][int(body["round"])]
        assert "masked" not in reply
        assert all(np.array_equal(reply["weights"][n], new[n]) for n in new)  # each site's update, in the clear


class _Dropping(_Recording):
    """One site's reply to the second training round never arrives (it trained and spent it)."""

    def request_available(self, kind, bodies):
        replies = self.request(kind, bodies)
        if kind == TRAIN and int(next(iter(bodies.values()))["round"]) == 1:
            return {s: r for s, r in replies.items() if s != "west"}
        return replies


def test_a_site_lost_mid_round_leaves_the_survivors_mean(monkeypatch):
    real = _real_updates(monkeypatch)
    events = []
    synth = _fit(monkeypatch, transport=_Dropping, min_sites=3, events=events)
    assert any("'west'" in e and "dropped out of 'training round 2'" in e for e in events)
    rows = synth.result_.site_weights
    kept = ["east", "north", "south"]
    plain = weighted_average([real[s][1] for s in kept], [rows[s] for s in kept])
    for k, v in synth.weights_.items():
        if np.issubdtype(v.dtype, np.floating):
            assert np.allclose(v, plain[k], rtol=0, atol=1e-6), k
    assert synth.result_.history[-1].epsilon.keys() == set(kept)


def test_by_default_a_lost_site_stops_the_run(monkeypatch):
    with pytest.raises(FederationError, match="round 2: only 3 site\\(s\\) answered.*'west'.*min_sites' is 4"):
        _fit(monkeypatch, transport=_Dropping)


def test_the_trimmed_mean_sees_each_update_and_says_so(monkeypatch):
    events = []
    _fit(monkeypatch, aggregation="trimmed_mean", events=events)
    assert sum(1 for e in events if "not summed securely" in e) == 1
    assert all("weights" in reply and "masked" not in reply for _, _, reply in _Recording.messages)


def test_more_requests_than_planned_fail_clearly():
    from types import SimpleNamespace

    from fedtab.federation.marginals import SecureRounds
    from fedtab.federation.site import SiteWorker

    class Job:
        job_id = "j"
        privacy = SimpleNamespace(secure_aggregation=True)
        training = SimpleNamespace(min_sites=None)

    workers = {n: SiteWorker(n, lambda *a: None) for n in ("a", "b")}
    states = {n: {"job_key": "k"} for n in workers}

    def ask(body, only=None, available=False):
        return {n: workers[n]("measure", body, states[n]) for n in (only or sorted(workers))}

    rounds = SecureRounds(ask, 2, Job(), requests=1)
    total, _ = rounds.secure_sum(lambda b, only: {n: _masked(workers[n], b, states[n]) for n in only}, {"phase": "x"},
                                 real=True)
    assert np.allclose(total[0], [2.0, 4.0])
    with pytest.raises(FederationError, match="planned 1"):
        rounds.secure_sum(lambda b, only: {}, {"phase": "x"}, real=True)


def _masked(worker, body, state):
    from fedtab.federation.marginals import site_session

    secure = body["secagg"]
    masked, shares = site_session(worker.name, state, worker._cache).mask(
        [np.array([1.0, 2.0])], me=worker.name, request=secure["request"], sites=secure["sites"], job=secure["job"],
        real=True)
    return {"masked": masked, "b_shares": shares, "shapes": [[2]]}


def test_a_hostile_update_inside_the_secure_sum_stops_the_run(monkeypatch):
    """The coordinator screens what it sees, the sum: an update scaled far beyond a round's reach makes
    the sum fail its bound, and the run stops (the site cannot be named)."""
    original = training.train_one_round

    def hostile(setup, data, weights, *, round_index, site=None, **kw):
        out = original(setup, data, weights, round_index=round_index, site=site, **kw)
        if site == "west":
            out["weights"] = {k: weights[k] + 100.0 * (v - weights[k]) if np.issubdtype(v.dtype, np.floating) else v
                              for k, v in out["weights"].items()}
        return out

    monkeypatch.setattr(training, "train_one_round", hostile)
    with pytest.raises(FederationError, match="round 1: the summed update moved parameter.*cannot be named"):
        _fit(monkeypatch)


def test_a_recorded_update_is_masked_again_only_until_a_sum_holding_it_was_read():
    """A resumed coordinator re-sends the round it was in under fresh keys: the site masks its recorded
    update again (no second training, no second spend), but never once a sum holding it was unmasked (a
    second sum over other sites would single it out by difference)."""
    glob = {"w": np.zeros(3, np.float32)}
    state = {}
    secure_updates.keep({"round": 2, "weights": glob, "secagg": {"request": 2}}, {"weights": glob}, state)
    again = {"round": 2, "weights": glob, "secagg": {"request": 0}}
    assert secure_updates.recorded(again, state) is not None
    assert secure_updates.recorded({**again, "weights": {"w": np.ones(3, np.float32)}}, state) is None  # other model
    assert secure_updates.recorded({**again, "round": 1}, state) is None
    secure_updates.unmasked(0, state)
    assert secure_updates.recorded(again, state) is None

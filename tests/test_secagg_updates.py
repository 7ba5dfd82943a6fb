"""Secure aggregation of the DP-SGD models' updates (fedtab.federation.secure_updates, issue 22 part 4).

Claims, each with an attack or a broken control:
- no training reply the coordinator receives holds a site's update: only a masked vector (read as an
  update it is uncorrelated with the real one) and encrypted shares; with secure aggregation off the same
  reading finds each site's update exactly (the control);
- the secure mean equals the plain row-weighted mean of the same updates, to the fixed point's rounding;
- a site lost mid-round leaves the survivors' mean;
- the trimmed mean turns the secure sum of updates off, and the coordinator says so;
- a round whose sum fails is opened site by site (``training.on_failed_sum = "screen_each"``) only once
  its failure is proven to each site: the attacks of forged entries, chunks, seeds and commitments, and of
  an honest sum claimed failed, are refused, no key leaving; a site that masks another update than it
  keeps is named all the same.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import fedtab
from fedtab.errors import ConfigError, FederationError
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
def _secure_mean(glob, new, rows, *, drop=(), losses=None):
    """Each site masks its reply (``masked_reply``), the coordinator unmasks the survivors' sum and takes
    the mean (``mean_of_sum``), as a training round does; the sites in ``drop`` mask but never arrive.
    Returns (the new weights, the mean changes, the replies, the losses' row-weighted means)."""
    names = sorted(new)
    losses = losses or {}
    sessions, peers, boxes = _sessions(names, threshold=len(names) - len(drop))
    body = {"weights": glob, "secagg": {"request": 0, "sites": names, "job": "j"}}
    replies = {n: secure_updates.masked_reply(n, body, {"weights": new[n], "losses": losses.get(n, {}), "epsilon": 1.5,
                                                        "steps": 12},
                                              {"rows_estimate": rows[n]}, sessions[n])
               for n in names}
    survivors = [n for n in names if n not in drop]
    b_boxes = {to: {frm: replies[frm]["b_shares"][to] for frm in survivors} for to in survivors}
    s_boxes = {to: {frm: boxes[to][frm] for frm in drop} for to in survivors}
    opened = {n: sessions[n].unmask(me=n, request=0, survivors=survivors, dropped=list(drop), s_inbox=s_boxes[n],
                                    b_inbox=b_boxes[n], job="j") for n in survivors}
    keys = sorted(glob)
    shapes = [tuple(x) for x in replies[survivors[0]]["shapes"]]
    assert shapes[:-1] == [np.shape(glob[k]) for k in keys]  # the weights' changes, then the losses' entries
    total = secagg.unmask_sum({n: replies[n]["masked"] for n in survivors}, shapes,
                              peers=peers, dropped=list(drop),
                              b_shares={n: [o["b"][n] for o in opened.values()] for n in survivors},
                              s_shares={d: [o["s"][d] for o in opened.values()] for d in drop},
                              request=0, job="j", real=True, bits=secagg.UPDATE_BITS)
    weight = sum(rows[n] for n in survivors)
    means = {k: t / weight for k, t in zip(keys, total)}
    read, mean_losses = secure_updates.read_extra(total[-1])
    assert read == pytest.approx(weight, abs=1e-8)  # the weight the coordinator divides by: the survivors' own
    return secure_updates.mean_of_sum(total[:-1], keys, glob, read), means, replies, mean_losses


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
    losses = {"a": {"public": 2.0}, "b": {"public": -1.0, "private": 0.5}, "c": {"public": float("nan")}, "d": {}}
    got, means, replies, mean_losses = _secure_mean(glob, new, rows, drop=drop, losses=losses)
    kept = [n for n in names if n not in drop]  # a site lost mid-round: the survivors' mean
    plain = weighted_average([new[n] for n in kept], [rows[n] for n in kept])
    w = np.array([rows[n] for n in kept]) / sum(rows[n] for n in kept)
    for k in ("w", "b"):  # the mean change in float64, then the float32 weights both ways (1 spacing at most)
        exact = sum(wi * (new[n][k].astype(np.float64) - glob[k]) for wi, n in zip(w, kept))
        assert np.max(np.abs(means[k] - exact)) <= TOL
        assert got[k].dtype == np.float32
        assert np.all(np.abs(got[k].astype(np.float64) - plain[k]) <= np.spacing(np.abs(plain[k])))
    assert got["count"] == 19  # an integer buffer: the rounded mean change
    # The losses are read summed: each the row-weighted mean over the survivors that report it (a site's
    # non-finite loss counts as not reported).
    public = {n: v["public"] for n, v in losses.items() if n in kept and np.isfinite(v.get("public", np.nan))}
    assert mean_losses["public"] == pytest.approx(sum(rows[n] * v for n, v in public.items())
                                                  / sum(rows[n] for n in public), abs=1e-8)
    assert mean_losses["private"] == pytest.approx(0.5, abs=1e-8) and set(mean_losses) == {"public", "private"}
    for n in names:  # what left each site: a uint64 vector, encrypted shares and commitments, the public plan's
        # epsilon and steps
        assert set(replies[n]) == {"masked", "b_shares", "shapes", "commits", "epsilon", "steps"}
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


def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _arrays(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _arrays(v)


def _unequal_sites():
    """Four sites of 150, 300, 600 and 1,200 rows: a reply that follows a site's size tells them apart."""
    from tests.test_marginal_model import _sites

    rows = {"north": 150, "south": 300, "east": 600, "west": 1200}
    return {name: frame for name, frame in
            ((n, _sites(rows[n], names=(n,))[n]) for n in rows)}


def _fit(monkeypatch, *, secure=True, epsilon=None, transport=_Recording, min_sites=None, aggregation="mean",
         events=None, sites=None, **kw):
    transport.messages = []
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", transport)
    policy = {} if epsilon is not None else {"site_policy": non_dp_policy()}
    return fedtab.FederatedSynthesizer(
        "tvae", epsilon=epsilon, schema=SCHEMA, seed=0, rounds=2, batch_size=100, secure_aggregation=secure,
        min_sites=min_sites, aggregation=aggregation, model_options={"compress_dims": [32], "decompress_dims": [32],
                                                                      "embedding_dim": 16},
        progress=None if events is None else (lambda e, i: events.append(i.get("name", ""))), **policy, **kw,
    ).fit(sites or _four_sites())


def _record_rows(monkeypatch) -> dict[str, float]:
    """Each site's own row estimate, read where it weights its masked update."""
    rows = {}
    masked_reply = secure_updates.masked_reply

    def recording(site, body, reply, state, session):
        rows[site] = float(state["rows_estimate"])
        return masked_reply(site, body, reply, state, session)

    monkeypatch.setattr(secure_updates, "masked_reply", recording)
    return rows


@pytest.mark.parametrize("epsilon", [None, 2.0])
def test_no_training_reply_holds_a_sites_update(monkeypatch, epsilon):
    real = _real_updates(monkeypatch)
    own_rows = _record_rows(monkeypatch)
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
        read = reply["masked"].view(np.int64).astype(np.float64)[:delta.size]  # then its weight and losses
        assert reply["masked"].size == delta.size + 5 and delta.size > 1000
        assert abs(np.corrcoef(read, delta)[0, 1]) < 0.1
    # The model still trained: its weights are the mean of the last round's updates, each weighted by its
    # site's own row estimate (the encoding's histograms were summed securely too: the coordinator knows
    # none of them, and divides by their sum, read from the masked vectors; a site's estimate is floored
    # at its noise sd, so their sum need not be the consortium's estimate its equal shares add up to).
    assert not synth.result_.site_rows_known
    rows = {site: own_rows[site] for site in synth.result_.site_weights}
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


def test_the_plain_rounds_losses_are_row_weighted(monkeypatch):
    """One meaning for the history's losses whatever the aggregation: each site's loss weighted by its
    rows, as a secure round reads it from its sum (non-DP: under DP a TVAE site sends no loss)."""
    synth = _fit(monkeypatch, secure=False, sites=_unequal_sites())
    weights = synth.result_.site_weights
    for r, record in enumerate(synth.result_.history):
        sent = {site: reply["losses"] for site, body, reply in _Recording.messages if int(body["round"]) == r}
        assert sorted(sent) == sorted(weights)
        for k, v in record.losses.items():
            want = sum(weights[s] * sent[s][k] for s in sent) / sum(weights.values())
            assert v == pytest.approx(want, rel=1e-9)
        assert len({round(sent[s][k], 9) for s in sent for k in sent[s]}) > 1  # the sites' losses differ


class _Dropping(_Recording):
    """One site's reply to the second training round never arrives (it trained and spent it)."""

    def outcomes(self, kind, bodies):
        replies = super().outcomes(kind, bodies)
        if kind == TRAIN and int(next(iter(bodies.values()))["round"]) == 1:
            return {s: r for s, r in replies.items() if s != "west"}
        return replies


@pytest.mark.parametrize("epsilon", [None, 2.0])
def test_a_site_lost_mid_round_leaves_the_survivors_mean(monkeypatch, epsilon):
    """The survivors' mean weighted by their own row estimates, on sites of 150 to 1,200 rows (the
    largest lost): the weight divided by is theirs, read from the sum, not the coordinator's shares."""
    real = _real_updates(monkeypatch)
    rows = _record_rows(monkeypatch)
    events = []
    synth = _fit(monkeypatch, transport=_Dropping, min_sites=3, events=events, epsilon=epsilon,
                 sites=_unequal_sites())
    assert any("'west'" in e and "dropped out of 'training round 2'" in e for e in events)
    assert not synth.result_.site_rows_known
    kept = ["east", "north", "south"]
    plain = weighted_average([real[s][1] for s in kept], [rows[s] for s in kept])
    for k, v in synth.weights_.items():
        if np.issubdtype(v.dtype, np.floating):
            assert np.allclose(v, plain[k], rtol=0, atol=1e-6), k
    assert synth.result_.history[-1].epsilon.keys() == set(kept)


def test_by_default_a_lost_site_stops_the_run(monkeypatch):
    with pytest.raises(FederationError, match="round 2: only 3 site\\(s\\) answered.*'west'.*min_sites' is 4"):
        _fit(monkeypatch, transport=_Dropping)


def _unsendable(monkeypatch, site: str = "west"):
    """``site``'s training diverged: its new weights are NaN, which its own masking refuses to encode."""
    masked_reply = secure_updates.masked_reply

    def broken(name, body, reply, state, session):
        if name == site:
            reply = {**reply, "weights": {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v
                                          for k, v in reply["weights"].items()}}
        return masked_reply(name, body, reply, state, session)

    monkeypatch.setattr(secure_updates, "masked_reply", broken)


@pytest.mark.parametrize("epsilon", [None, 2.0])
def test_a_site_whose_update_cannot_be_sent_is_named_and_left_out(monkeypatch, epsilon):
    """Under secure aggregation the coordinator cannot screen a site's update, but a site whose own
    update is not finite says so: it is named and left out (as the plain round's screen does), its masks
    leave the sum as a lost site's do, and the mean is the others' own."""
    real = _real_updates(monkeypatch)
    rows = _record_rows(monkeypatch)
    _unsendable(monkeypatch)
    events = []
    synth = _fit(monkeypatch, min_sites=3, events=events, epsilon=epsilon, sites=_unequal_sites())
    [left] = [e for e in events if e.startswith("round 1: left out 1 site ('west'); going on with 3 of 4")]
    assert "not finite" in left
    kept = ["east", "north", "south"]
    assert [sorted(r.epsilon) for r in synth.result_.history] == [kept, kept]
    asked = {int(body["round"]): set() for _, body, _ in _Recording.messages}
    for site, body, _ in _Recording.messages:
        asked[int(body["round"])].add(site)
    assert asked == {0: {*kept, "west"}, 1: set(kept)}  # never asked again
    plain = weighted_average([real[s][1] for s in kept], [rows[s] for s in kept])
    for k, v in synth.weights_.items():
        if np.issubdtype(v.dtype, np.floating):
            assert np.all(np.isfinite(v)) and np.allclose(v, plain[k], rtol=0, atol=1e-6), k
    assert "west" in synth.result_.ledgers  # its encoding releases are in the model: its ledger too


def test_by_default_a_site_whose_update_cannot_be_sent_stops_the_run(monkeypatch):
    _unsendable(monkeypatch)
    with pytest.raises(FederationError, match="round 1: 1 site \\('west'\\) cannot go on.*not finite.*min_sites' is 4"):
        _fit(monkeypatch)


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
    the sum fail its bound, and with ``on_failed_sum = "stop"`` the run stops (the site cannot be named)."""
    _scaled_at(monkeypatch)
    with pytest.raises(FederationError, match="round 1: the summed update moved parameter.*cannot be named"):
        _fit(monkeypatch, on_failed_sum="stop")


def _scaled_at(monkeypatch, hostile_site: str = "west", *, masked_only: bool = False):
    """``hostile_site`` sends its update x100: as it trained it (the update it keeps and would show) or, with
    ``masked_only``, only inside its masked reply (it keeps, and shows, its honest update)."""
    def scaled(glob, new):
        return {k: glob[k] + 100.0 * (v - glob[k]) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
                for k, v in new.items()}

    if masked_only:
        masked_reply = secure_updates.masked_reply

        def hostile_mask(name, body, reply, state, session):
            if name == hostile_site:
                reply = {**reply, "weights": scaled(body["weights"], reply["weights"])}
            return masked_reply(name, body, reply, state, session)

        monkeypatch.setattr(secure_updates, "masked_reply", hostile_mask)
        return
    original = training.train_one_round

    def hostile(setup, data, weights, *, round_index, site=None, **kw):
        out = original(setup, data, weights, round_index=round_index, site=site, **kw)
        if site == hostile_site:
            out["weights"] = scaled(weights, out["weights"])
        return out

    monkeypatch.setattr(training, "train_one_round", hostile)


def _shown(messages) -> dict[int, set]:
    """Per round, the sites asked to show their update (to reveal the mask key that opens it)."""
    out = defaultdict(set)
    for site, body, _ in messages:
        if body.get("show"):
            out[int(body["round"])].add(site)
    return dict(out)


@pytest.mark.parametrize("epsilon", [None, 2.0])
def test_on_failed_sum_screen_each_names_and_leaves_out_the_site_whose_update_fails(monkeypatch, epsilon):
    """With ``training.on_failed_sum = "screen_each"`` a failed sum is not the end: the sites show that
    round's updates, the x100 one is named and left out, and the next round is a sum again, without it."""
    _scaled_at(monkeypatch)
    events = []
    synth = _fit(monkeypatch, min_sites=3, events=events, epsilon=epsilon, on_failed_sum="screen_each")
    assert any(e.startswith("round 1: the secure sum failed its screen") for e in events)
    [left] = [e for e in events if e.startswith("round 1: left out 1 site ('west'); going on with 3 of 4")]
    assert "its update cannot be averaged" in left
    assert _shown(_Recording.messages) == {0: {"east", "north", "south", "west"}}  # round 2: a sum again
    round_2 = [(site, reply) for site, body, reply in _Recording.messages if int(body["round"]) == 1]
    assert sorted(site for site, _ in round_2) == ["east", "north", "south"]
    assert all("masked" in reply and "weights" not in reply for _, reply in round_2)
    assert [sorted(r.epsilon) for r in synth.result_.history] == [["east", "north", "south"]] * 2
    assert all(np.all(np.isfinite(v)) for v in synth.weights_.values())


def test_a_site_that_masks_another_update_than_it_keeps_is_named_once_the_keys_open_its_update(monkeypatch):
    """The attack: a hostile site masks x100 but keeps (and would show) its honest update. The sum fails,
    the sites reveal that round's mask keys, and the coordinator opens each site's update in the sum itself:
    the x100 one is named and left out, and the round's mean is the honest sites' sum over their weights.
    The next round is a sum again, without it."""
    real = _real_updates(monkeypatch)
    _scaled_at(monkeypatch, masked_only=True)
    events = []
    synth = _fit(monkeypatch, min_sites=3, events=events, on_failed_sum="screen_each")
    assert _shown(_Recording.messages) == {0: {"east", "north", "south", "west"}}
    [left] = [e for e in events if e.startswith("round 1: left out 1 site ('west'); going on with 3 of 4")]
    assert "its update cannot be averaged" in left
    assert [sorted(r.epsilon) for r in synth.result_.history] == [["east", "north", "south"]] * 2
    assert all("mask_key" in reply and "weights" not in reply for _, body, reply in _Recording.messages if body.get("show"))
    weights = synth.result_.site_weights
    honest = ["east", "north", "south"]
    plain = weighted_average([real[s][1] for s in honest], [weights[s] for s in honest])
    for k, v in synth.weights_.items():
        if np.issubdtype(v.dtype, np.floating):
            assert np.allclose(v, plain[k], rtol=0, atol=1e-6), k


def test_an_honest_job_that_allows_screen_each_still_sends_only_sums(monkeypatch):
    _fit(monkeypatch, epsilon=2.0, on_failed_sum="screen_each")
    assert len(_Recording.messages) == 8 and not _shown(_Recording.messages)
    assert all("masked" in reply and "weights" not in reply for _, _, reply in _Recording.messages)


def _failed_round(monkeypatch, *, hostile: float = 100.0):
    """Three sites masked a round (c's update ``hostile`` in its first entry, 0.01 elsewhere) and the sum
    was unmasked: (sessions, peers, states, masked replies, unmasking answers, ask body). A round moves
    each entry by at most 0.01 (``round_bounds``, patched)."""
    monkeypatch.setattr(secure_updates, "round_bounds", lambda setup, rows: {"w": 0.01})
    glob = {"w": np.zeros(3, dtype=np.float32)}
    names = ["a", "b", "c"]
    sessions, peers, _ = _sessions(names, requests=2)
    body = {"round": 0, "weights": glob, "secagg": {"request": 0, "sites": names, "job": "j"}}
    states, masked = {}, {}
    for i, n in enumerate(names):
        change = np.array([hostile if n == "c" else 0.001, 0.001, -0.001], dtype=np.float32)
        reply = {"weights": {"w": glob["w"] + change}, "losses": {}, "epsilon": 0.5, "steps": 3}
        states[n] = {"job": {"seed": 0, **({"show_update_on_failed_sum": True} if n != "c" else {})},
                     "rows_estimate": 10.0 * (i + 1), "training": {}}
        secure_updates.keep(body, reply, states[n])
        masked[n] = secure_updates.masked_reply(n, body, reply, states[n], sessions[n])
    return sessions, peers, states, masked, {"round": 0, "weights": glob, "show": True}


def _unmask_all(sessions, states, masked):
    names = sorted(sessions)
    b_boxes = {to: {frm: masked[frm]["b_shares"][to] for frm in names} for to in names}
    opened = {n: sessions[n].unmask(me=n, request=0, survivors=names, dropped=[], s_inbox={}, b_inbox=b_boxes[n],
                                    job="j") for n in names}
    for n in names:
        secure_updates.unmasked(0, states[n])
    return {n: [o["b"][n] for o in opened.values()] for n in names}


def _proof(masked, b_shares, to, entry=0, **change):
    proof = secagg.entry_proof({n: r["masked"] for n, r in masked.items()}, [entry, 3],
                               rebuilt=secagg.rebuild(b_shares, {}),
                               commits={n: r["commits"] for n, r in masked.items()}, to=to)
    return {"entry": entry, **proof, **change}


def test_a_site_reveals_its_mask_key_only_where_its_job_allows_after_the_sum_was_read_and_proven_to_fail(
        monkeypatch):
    """The attack: a coordinator asks a site for the key that opens its masked update. Refused where the
    job the site accepted does not allow it (the default), before the sum holding the update was read, for
    another round, and where the coordinator does not prove that the sum fails. The broken control (a job
    that allows it, the sum read, its failure proven): the keys open each site's input of the sum, a site
    that kept its key opened all the same where every other site revealed theirs; with fewer keys a site is
    opened only where each of its pairs has one, and a wrong key is named."""
    sessions, peers, states, masked, ask = _failed_round(monkeypatch)
    names = sorted(sessions)
    with pytest.raises(FederationError, match="refuses to show its update.*on_failed_sum"):
        secure_updates.revealed("c", ask, states["c"], sessions["c"])
    with pytest.raises(FederationError, match="only the update of the round whose secure sum"):
        secure_updates.revealed("a", ask, states["a"], sessions["a"])  # the sum holding it not read yet
    with pytest.raises(FederationError, match="refuses to reveal the mask key of request 1"):
        sessions["a"].reveal("a", 1)
    b_shares = _unmask_all(sessions, states, masked)
    with pytest.raises(FederationError, match="only the update of the round"):
        secure_updates.revealed("a", {**ask, "round": 1, "proof": _proof(masked, b_shares, "a")}, states["a"],
                                sessions["a"])
    keys = {n: secure_updates.revealed(n, {**ask, "proof": _proof(masked, b_shares, n)}, states[n],
                                       sessions[n])["mask_key"] for n in ("a", "b")}

    def open_with(keys):
        return secagg.open_inputs({n: masked[n]["masked"] for n in names}, [tuple(x) for x in masked["a"]["shapes"]],
                                  rebuilt=secagg.rebuild(b_shares, {}), peers=peers, keys=keys, request=0, job="j",
                                  real=True, bits=secagg.UPDATE_BITS)

    inputs, why = open_with(keys)
    assert not why and sorted(inputs) == names
    for i, n in enumerate(names):  # rows x change, then the weight: what the site masked
        rows = 10.0 * (i + 1)
        first = 100.0 if n == "c" else 0.001
        assert np.allclose(inputs[n][0], rows * np.array([first, 0.001, -0.001], dtype=np.float32), atol=1e-6)
        assert inputs[n][1][0] == pytest.approx(rows)
    inputs, why = open_with({"a": keys["a"]})
    assert sorted(inputs) == ["a"] and set(why) == {"b", "c"} and "cannot be opened" in why["b"]
    inputs, why = open_with({"a": keys["b"], "b": keys["b"]})
    assert "a" not in inputs and "not the one it masked" in why["a"]


@pytest.mark.parametrize("forged, match", [
    ("entry", "the sum it proves passes its screen"),  # an entry of the sum that passes
    ("chunk", "site 'b''s masked entries"),  # a masked value altered to fake a failure
    ("seed", "site 'b''s self-mask seed"),
    ("commit", "a relayed share is missing or does not decrypt"),  # b's commitment replaced by a's
    ("honest", "the sum it proves passes its screen"),  # an honest sum, its entry proven
    ("weight", "the sum's weight it proves is a row count")])  # its weight named as the failing entry
def test_a_coordinator_cannot_make_a_site_reveal_its_key_for_a_sum_that_passes(monkeypatch, forged, match):
    """The attack: a coordinator that claims a failed sum to open every update. Each part of its proof is
    checked against what the sites committed to (encrypted to this site: the coordinator can neither read
    nor forge it), and the site screens the proven entry itself: an entry that passes, a forged masked
    value, a forged self-mask seed, a forged commitment, or an honest sum are each refused, and no key
    leaves. The control (the true failing entry, proven) is in the test above."""
    sessions, _, states, masked, ask = _failed_round(monkeypatch, hostile=0.001 if forged == "honest" else 100.0)
    b_shares = _unmask_all(sessions, states, masked)
    proof = _proof(masked, b_shares, "a", entry={"entry": 1, "weight": 3}.get(forged, 0))
    if forged == "chunk":
        values = proof["chunks"]["b"]["0"]["values"].copy()
        values[0] = values[0] + np.uint64(1 << 40)
        proof["chunks"]["b"]["0"] = {**proof["chunks"]["b"]["0"], "values": values}
    elif forged == "seed":
        proof["seeds"]["b"] = secagg._b64(bytes(32))
    elif forged == "commit":
        proof["commits"]["b"] = proof["commits"]["c"]
    with pytest.raises(FederationError, match=match):
        secure_updates.revealed("a", {**ask, "proof": proof}, states["a"], sessions["a"])


def test_a_hostile_site_that_keeps_its_key_is_opened_with_the_others_and_named(monkeypatch):
    """A site that masks x100 and then refuses to reveal its mask key: the three other sites' keys open its
    update all the same; it is named and left out, and the job goes on."""
    _scaled_at(monkeypatch, masked_only=True)
    revealed = secure_updates.revealed

    def hostile(site, body, state, session):
        if site == "west":
            raise FederationError("site 'west' keeps its key", public=True)
        return revealed(site, body, state, session)

    monkeypatch.setattr(secure_updates, "revealed", hostile)
    events = []
    synth = _fit(monkeypatch, min_sites=3, events=events, on_failed_sum="screen_each")
    [left] = [e for e in events if e.startswith("round 1: left out 1 site ('west'); going on with 3 of 4")]
    assert "its update cannot be averaged" in left
    assert [sorted(r.epsilon) for r in synth.result_.history] == [["east", "north", "south"]] * 2


def test_a_site_whose_weight_breaks_the_sum_is_named_once_the_weight_is_proven(monkeypatch):
    """A hostile site that weights its update by -10,000 rows: the sum's weight is no row count, which the
    coordinator proves with the weight's entry alone; the sites reveal their keys and the site is named."""
    mask = secagg.SiteSession.mask

    def hostile(session, values, *, me, **kw):
        if me == "west" and kw.get("commit"):
            values = [*values[:-1], np.concatenate([[-1e4], np.asarray(values[-1])[1:]])]
        return mask(session, values, me=me, **kw)

    monkeypatch.setattr(secagg.SiteSession, "mask", hostile)
    events = []
    synth = _fit(monkeypatch, min_sites=3, events=events, epsilon=2.0, on_failed_sum="screen_each")
    [left] = [e for e in events if e.startswith("round 1: left out 1 site ('west')")]
    assert "weight is not a row count" in left
    assert [sorted(r.epsilon) for r in synth.result_.history] == [["east", "north", "south"]] * 2


def test_a_coordinator_that_claims_an_honest_sum_failed_gets_no_key(monkeypatch):
    """The attack, end to end: a coordinator that says an honest round's sum failed (its screen patched
    to say so) and names an entry of it to open every update. Each site computes the proven entry, finds it
    within the bound and refuses; no key leaves and the run stops. Where the coordinator's own entry search
    finds nothing to prove, it stops without asking. The broken control: sites that skip the check reveal
    their keys and the coordinator opens every update of an honest round."""
    real_screen = secure_updates.screen_sum
    monkeypatch.setattr(secure_updates, "screen_sum", lambda *a, **k: real_screen(*a, **k) or "made up")
    with pytest.raises(FederationError, match="round 1: made up; no entry of the sum is beyond the bound each site"):
        _fit(monkeypatch, epsilon=2.0, on_failed_sum="screen_each")
    assert not _shown(_Recording.messages)  # nothing to prove: not one key asked for
    monkeypatch.setattr(secure_updates, "failing_entry", lambda *a, **k: 0)
    with pytest.raises(FederationError, match="refuses to reveal its mask key: the sum it proves passes its screen"):
        _fit(monkeypatch, epsilon=2.0, on_failed_sum="screen_each")
    assert not any("mask_key" in reply for _, _, reply in _Recording.messages)
    monkeypatch.setattr(secure_updates, "proven_failure", lambda *a, **k: None)
    _fit(monkeypatch, epsilon=2.0, on_failed_sum="screen_each")
    assert {site for site, body, reply in _Recording.messages if "mask_key" in reply} == set(_four_sites())


def test_a_site_whose_policy_never_shows_updates_refuses_such_a_job(monkeypatch):
    """``SitePolicy(show_updates=False)``: the default DP-SGD job (which may ask for an update after a failed
    sum) is refused before anything is released; the same job with ``on_failed_sum = "stop"`` runs."""
    from fedtab.errors import PrivacyBudgetError

    strict = {"west": fedtab.SitePolicy(show_updates=False)}
    with pytest.raises(PrivacyBudgetError, match="site 'west' refuses the job \\(rule show_updates"):
        _fit(monkeypatch, epsilon=2.0, site_policy=strict)
    assert not _Recording.messages  # no training request reached any site
    synth = _fit(monkeypatch, epsilon=2.0, site_policy=strict, on_failed_sum="stop")
    assert "west" in synth.result_.ledgers


def test_on_failed_sum_takes_stop_or_screen_each():
    with pytest.raises(ConfigError, match="on_failed_sum' must be one of"):
        fedtab.FederatedSynthesizer("tvae", on_failed_sum="name")


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


# -- every message of a DP-SGD job: nothing that follows from one site's size ------------------------------
class _Every(InProcessTransport):
    """Every message of every kind the coordinator received: (kind, one request body, the replies)."""

    messages: list = []

    def outcomes(self, kind, bodies):
        replies = super().outcomes(kind, bodies)
        self.messages.append((kind, next(iter(bodies.values())), replies))
        return replies


def _dp_job(monkeypatch, secure: bool):
    _Every.messages = []
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", _Every)
    return fedtab.FederatedSynthesizer(
        "tvae", epsilon=2.0, schema=SCHEMA, seed=0, rounds=2, batch_size=100, secure_aggregation=secure,
        model_options={"compress_dims": [32], "decompress_dims": [32], "embedding_dim": 16},
    ).fit(_unequal_sites())


def _without_site(ledger: dict) -> dict:
    return {k: v for k, v in ledger.items() if k != "site"}


def test_every_reply_of_a_dp_sgd_job_is_the_same_at_every_site_but_its_masked_vectors(monkeypatch):
    """Under secure aggregation the coordinator plans every site's training for one public size (the summed
    histograms' rows, an equal share a site): the setup replies (noise multiplier, steps), the round replies
    (epsilon, steps), every ledger it receives (the model file's) are identical at the four sites of 150 to
    1,200 rows; what differs is masked (uniform 64-bit words), shares and keys."""
    from tests.test_secagg import _only_sums

    synth = _dp_job(monkeypatch, secure=True)
    kinds = {(kind, body.get("phase")) for kind, body, _ in _Every.messages}
    assert {("setup", None), ("train", "training round 1"), ("train", "training round 2"), ("ledger", None),
            ("encode", "histogram")} <= kinds
    for kind, body, replies in _Every.messages:
        assert sorted(replies) == ["east", "north", "south", "west"]
        public = {}
        for site, reply in replies.items():
            reply = dict(reply)
            ledger = reply.pop("job_ledger", None)
            if ledger is not None:
                public.setdefault("job_ledger", set()).add(repr(_without_site(ledger)))
            if kind == "setup":
                assert set(reply) == {"noise_multiplier", "steps_per_round"}
                public.setdefault("setup", set()).add(repr(reply))
            elif kind == "train":
                assert set(reply) == {"masked", "b_shares", "shapes", "commits", "epsilon", "steps"}
                assert all(isinstance(x, str) for x in reply["commits"].values())  # encrypted to each site
                public.setdefault("train", set()).add(repr((reply["epsilon"], reply["steps"], reply["shapes"])))
            elif kind == "ledger":
                public.setdefault("ledger", set()).add(repr(_without_site(reply["ledger"])))
            else:  # the encoding and the secure-aggregation rounds, as for the marginal model
                _only_sums(kind, body, reply)
        assert all(len(v) == 1 for v in public.values()), (kind, body.get("phase"), public)
    assert not synth.result_.site_rows_known
    assert len(set(synth.result_.noise_multipliers.values())) == 1
    # The model trained: its rounds' epsilon is what every site spent, within the job's budget.
    assert 0 < synth.result_.history[-1].epsilon["north"] <= 2.0 + 1e-9


def test_broken_control_without_secure_aggregation_the_setup_replies_tell_the_sites_sizes_apart(monkeypatch):
    _dp_job(monkeypatch, secure=False)
    [setup] = [replies for kind, _, replies in _Every.messages if kind == "setup"]
    steps = {s: r["steps_per_round"] for s, r in setup.items()}
    # Each site's steps follow its own DP row estimate (noisy by a step or so at these sizes): the replies
    # differ, and the 1,200-row site reads far larger than the 150-row one.
    assert len(set(steps.values())) > 1 and steps["west"] >= steps["north"] + 5, steps

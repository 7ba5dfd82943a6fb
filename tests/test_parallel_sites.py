"""The in-process transport hands training rounds to several sites at once, with identical results."""

import threading

import numpy as np
import pytest

import fedtab
from fedtab.privacy.secret import _replace_source_for_tests, seeded_sources_for_tests
from fedtab.datasets import heart_schema, load_heart_sites
from fedtab.federation.transport import InProcessTransport, broadcast


def _worker(barrier, seen):
    def worker(kind, body, state):
        seen.append((kind, body["round"]))
        if kind == "train" and body["round"] == 1:
            barrier.wait()  # only passes when two sites are inside at the same time
        state["rounds"] = state.get("rounds", 0) + 1
        return {"rounds": state["rounds"], "thread": threading.get_ident()}
    return worker


def test_training_requests_run_side_by_side_and_one_at_a_time_when_asked():
    seen = []
    worker = _worker(threading.Barrier(2, timeout=10), seen)
    t = InProcessTransport({"a": worker, "b": worker}, max_parallel=2)
    first = broadcast(t, "train", {"round": 0})
    assert list(first) == ["a", "b"] and seen[0] == ("train", 0)
    second = broadcast(t, "train", {"round": 1})
    assert all(r["rounds"] == 2 for r in second.values())
    assert len({r["thread"] for r in second.values()}) >= 2
    # One site at a time (max_parallel=1): the barrier is never met.
    alone = _worker(threading.Barrier(2, timeout=0.5), [])
    sequential = InProcessTransport({"a": alone, "b": alone}, max_parallel=1)
    broadcast(sequential, "train", {"round": 0})
    with pytest.raises(threading.BrokenBarrierError):
        broadcast(sequential, "train", {"round": 1})


def test_parallel_sites_give_the_same_model_as_one_site_after_another():
    sites = load_heart_sites()
    kw = dict(epsilon=3.0, rounds=2, local_epochs=1.0, batch_size=64, seed=5, schema=heart_schema())
    with _replace_source_for_tests(seeded_sources_for_tests(1)):  # the same (test-only) DP randomness
        one = fedtab.FederatedSynthesizer("ctgan", parallel_sites=1, **kw).fit(sites)
        two = fedtab.FederatedSynthesizer("ctgan", parallel_sites=2, **kw).fit(sites)
    assert one.weights_.keys() == two.weights_.keys()
    assert all(np.array_equal(one.weights_[k], two.weights_[k]) for k in one.weights_)
    with pytest.raises(fedtab.errors.ConfigError, match="parallel_sites"):
        fedtab.FederatedSynthesizer("ctgan", parallel_sites=0).fit(sites)

"""A stale task token must not stop the site (tests/test_deploy_faults.py found it with real processes).

Flower's HTTP retry invoker answers a 401 by sending SIGINT to its own process: right for a flwr-clientapp
process, but fedtab's executor runs inside `fedtab site`, which it stopped when the SuperNode restarted
(after the SuperLink restarted) and the executor still held the old task's token.
"""

from __future__ import annotations

import httpx

from fedtab.deploy.executor import _runtime_client


def _unauthorized() -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/runtime/pull-object")
    return httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))


def test_a_stale_token_gives_up_the_task_without_signalling_the_site(monkeypatch):
    import os

    signals = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    client = _runtime_client("127.0.0.1:1")
    try:
        assert client._retry_invoker.should_giveup(_unauthorized()) is True
    finally:
        client.close()
    assert signals == []


def test_broken_control_flowers_own_invoker_signals_the_process(monkeypatch):
    import os
    import time

    from flwr.supercore.retry import make_simple_http_retry_invoker

    signals = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    make_simple_http_retry_invoker().should_giveup(_unauthorized())
    assert signals and signals[0][0] == os.getpid()

"""Faults in a real deployment (loopback, separate processes, no TLS to keep it short): a site is
killed with SIGKILL mid-training and the other two finish the round (``min_sites = 2``); then the whole
coordinator (its process group: command, SuperLink, ``flwr run``) is killed with SIGKILL, and
``fedtab coordinator --resume`` continues from the last checkpoint. Every site's ledger (read from its
own state file) must hold each training round at most once, and the model's ledgers must be those (the
killed site's: the last one its replies carried, a prefix of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtab.datasets import heart_site_path
from fedtab.deploy import processes

SITES = ("cleveland", "hungary", "switzerland")
ROUNDS = 4


def fedtab(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedtab", *args]


def rounds_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "status.json").read_text()).get("rounds", []))
    except (OSError, ValueError):
        return 0


def wait_until(cond, proc: subprocess.Popen, what: str, limit: float = 400.0) -> None:
    deadline = time.monotonic() + limit  # a guard against hanging, not a timing assertion
    while not cond():
        assert proc.poll() is None, f"the coordinator exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def book_ledger(state_dir: Path, site: str) -> dict:
    """The one job in a site's lasting ledger (``state_dir/ledger.jsonl``), as a ledger dict."""
    from fedtab.privacy.book import LedgerBook

    book = LedgerBook(site, state_dir)
    (key,) = {r["job"] for r in book._records if r["type"] == "job"}
    return book.ledger(key).to_dict()


def trained_rounds(ledger: dict) -> list[str]:
    return [e["phase"] for e in ledger["entries"] if e["phase"].startswith("training/")]


@pytest.mark.slow
def test_site_killed_then_coordinator_killed_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    port = processes.free_port()
    schema = Path(heart_site_path("cleveland")).parent / "heart_schema.json"
    (tmp_path / "consortium.toml").write_text(
        f'seed = 0\nschema = "{schema}"\n[model]\nname = "ctgan"\n[privacy]\nepsilon = 1.0\n[training]\nrounds = {ROUNDS}\nmin_sites = 2\n'
        + "".join(f"[sites.{s}]\n" for s in SITES))
    for s in SITES:
        (tmp_path / f"{s}.toml").write_text(
            f'name = "{s}"\nsource = "{heart_site_path(s)}"\nsuperlink = "127.0.0.1:{port}"\n'
            f'state_dir = "state-{s}"\n[tls]\ninsecure = true\n')
    coordinator = fedtab("coordinator", "consortium.toml", "-o", "model.fedtab", "--port", str(port), "--insecure",
                         "--round-timeout", "40")
    run_dir = tmp_path / ".model.fedtab.run"
    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(coordinator, tmp_path / "coordinator-1.log", cwd=tmp_path)
        started.append(coord)
        sites = {s: processes.start(fedtab("site", "--config", f"{s}.toml"), tmp_path / f"site-{s}.log",
                                    cwd=tmp_path) for s in SITES}
        started += sites.values()
        wait_until(lambda: rounds_done(run_dir) >= 1, coord, "round 1")
        os.killpg(sites["switzerland"].pid, signal.SIGKILL)  # the site's service and its SuperNode
        sites["switzerland"].wait()
        wait_until(lambda: rounds_done(run_dir) >= 2, coord, "round 2 without switzerland")
        os.killpg(coord.pid, signal.SIGKILL)  # the coordinator, its SuperLink and `flwr run`
        coord.wait()
        time.sleep(2)  # let the SuperLink's port be released
        coord = processes.start(coordinator + ["--resume"], tmp_path / "coordinator-2.log", cwd=tmp_path)
        started.append(coord)
        rc = coord.wait(timeout=500)
        assert rc == 0, (tmp_path / "coordinator-2.log").read_text()[-3000:]
    finally:
        processes.stop_all(started)

    from fedtab.api import load

    model = load(tmp_path / "model.fedtab")
    assert [h.round for h in model.history_] == list(range(1, ROUNDS + 1))
    assert sorted(model.history_[0].epsilon) == list(SITES)
    assert all(sorted(h.epsilon) == ["cleveland", "hungary"] for h in model.history_[2:])
    # Every site whose releases are in the model has its ledger there: switzerland's is the last one its
    # replies carried (kept in the checkpoint across the coordinator's kill), marked as such.
    assert sorted(model.ledgers_) == list(SITES)
    assert model.ledgers_last_seen_ == ("switzerland",)
    for s in ("cleveland", "hungary"):
        on_disk = book_ledger(tmp_path / f"state-{s}", s)
        assert trained_rounds(on_disk) == [f"training/round {r}" for r in range(1, ROUNDS + 1)]
        assert [e.phase for e in model.ledgers_[s].entries] == [e["phase"] for e in on_disk["entries"]]
    swiss = book_ledger(tmp_path / "state-switzerland", "switzerland")
    assert trained_rounds(swiss) in (["training/round 1"], ["training/round 1", "training/round 2"])
    seen = [e.phase for e in model.ledgers_["switzerland"].entries]
    assert "training/round 1" in seen and seen == [e["phase"] for e in swiss["entries"]][:len(seen)]

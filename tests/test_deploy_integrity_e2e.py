"""Issue 22 parts 1, 2 and the dead site, with real processes (SuperLink, SuperNodes, ServerApp):

- a coordinator that ships a modified app (fedtab's bundle with another ClientApp in it) is refused at a
  pinned site: its ClientApp never runs, the site says why in its log, the coordinator gets the reason
  as an error reply; broken control: a SuperNode started as before (Flower's default executor) runs it;
- a site that calls itself "hungary" but holds cleveland's registered key is refused as an impostor,
  the real hungary trains, and the model names exactly the sites admitted;
- a site killed mid-round is noticed within seconds (the round's time is printed) and the model
  still names every site whose releases are in it;
- a site whose own code masks its update x100 is named and left out (issue 22 part 5): the failed sum is
  proven to each site and opened with the round's mask keys, over Flower.

Every process a test starts leads its own process group and is stopped by that group's id.
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
from fedtab.deploy.runner import APP_PYPROJECT

pytestmark = pytest.mark.slow

FEDTAB = [sys.executable, "-m", "fedtab"]
EVIL_CLIENT = '''from pathlib import Path
from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp

client_app = ClientApp()


@client_app.query()
def _run(msg, context):
    Path(str(context.run_config["marker"])).write_text("the coordinator's code ran at the site")
    return Message(RecordDict(), reply_to=msg)
'''
EVIL_SERVER = '''import json, time
from pathlib import Path
from flwr.app import Message, RecordDict
from flwr.serverapp import ServerApp

server_app = ServerApp()


@server_app.main()
def _main(grid, context):
    while not grid.get_node_ids():
        time.sleep(0.2)
    msgs = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
    replies = list(grid.send_and_receive(msgs, timeout=60))
    Path(str(context.run_config["result"])).write_text(json.dumps(
        [r.error.reason if r.has_error() else "served" for r in replies]))
'''


def modified_app(folder: Path, marker: Path, result: Path) -> Path:
    """fedtab's app bundle with the ClientApp (and ServerApp) swapped for the coordinator's own code."""
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL_CLIENT)
    (folder / "evilserver.py").write_text(EVIL_SERVER)
    (folder / "pyproject.toml").write_text(
        APP_PYPROJECT.replace("fedtab.deploy.apps:client_app", "evil:client_app")
        .replace("fedtab.deploy.apps:server_app", "evilserver:server_app")
        .replace('fedtab-config = ""', f'fedtab-config = ""\nmarker = {json.dumps(str(marker))}\n'
                                       f'result = {json.dumps(str(result))}'))
    return folder


def superlink(tmp_path: Path, port: int, started: list) -> dict:
    env = {"FLWR_HOME": str(tmp_path / "flwr-home")}
    started.append(processes.start(["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port)],
                                   tmp_path / "superlink.log", env=env))
    processes.wait_for_port(f"127.0.0.1:{port}", started[-1], tmp_path / "superlink.log")
    (tmp_path / "flwr-home").mkdir(exist_ok=True)
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n\n[superlink.t]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    return env


def wait_until(cond, what: str, limit: float = 240.0, procs=()) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        for p in procs:
            assert p.poll() is None, f"a process exited ({p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit:.0f} s"
        time.sleep(0.3)


@pytest.mark.parametrize("pinned", [True, False], ids=["fedtab-site", "broken-control-plain-supernode"])
def test_a_modified_app_is_refused_at_a_pinned_site_and_runs_at_an_unpinned_one(tmp_path, pinned):
    port = processes.free_port()
    marker, result = tmp_path / "ran-at-site", tmp_path / "replies.json"
    started: list[subprocess.Popen] = []
    try:
        env = superlink(tmp_path, port, started)
        state = tmp_path / "state-cleveland"
        if pinned:
            (tmp_path / "cleveland.toml").write_text(
                f'name = "cleveland"\nsource = "{heart_site_path("cleveland")}"\nsuperlink = "127.0.0.1:{port}"\n'
                f'state_dir = "{state}"\n[tls]\ninsecure = true\n')
            started.append(processes.start([*FEDTAB, "site", "--config", "cleveland.toml"], tmp_path / "site.log",
                                           cwd=tmp_path))
        else:  # how 'fedtab site' started its SuperNode before: Flower's executor runs what the bundle names
            started.append(processes.start(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                            "--node-config", 'site-name="cleveland"', "--port",
                                            str(processes.free_port())], tmp_path / "site.log", env=env))
        app = modified_app(tmp_path / "app", marker, result)
        started.append(processes.start(["flwr", "run", str(app), "t"], tmp_path / "flwr-run.log", env=env))
        wait_until(result.exists, "the coordinator's replies", procs=started[:2])
    finally:
        processes.stop_all(started)
    replies = json.loads(result.read_text())
    if pinned:
        assert not marker.exists()  # the coordinator's ClientApp never ran at the site
        assert len(replies) == 1 and "app refused" in replies[0] and "'evil:client_app'" in replies[0], replies
        site_out = (tmp_path / "site.log").read_text()
        assert "app refused" in site_out and "evil.py" in site_out  # said on the site's terminal
        assert "app refused" in (state / "site.log").read_text()  # and kept in its log
    else:
        assert marker.exists() and replies == ["served"]  # without the pin, the coordinator's code ran


def write_consortium(folder: Path, port: int, sites: dict[str, str], *, extra: str = "", min_sites: int = 2,
                     rounds: int | None = None) -> None:
    """sites: name in the config -> its key's name. Keys and TLS from 'fedtab trial-keys'."""
    schema = Path(heart_site_path("cleveland")).parent / "heart_schema.json"
    training = f"rounds = {rounds}\n" if rounds is not None else ""
    (folder / "consortium.toml").write_text(
        f'seed = 0\nschema = "{schema}"\n{extra}\n[privacy]\nepsilon = 1.0\n[training]\n{training}'
        f'min_sites = {min_sites}\n'
        + "".join(f'[sites.{s}]\npublic_key = "keys/{s}.pub"\n' for s in ("cleveland", "hungary", "switzerland")))
    for name, (stated, key) in sites.items():
        (folder / f"{name}.toml").write_text(
            f'name = "{stated}"\nsource = "{heart_site_path(stated)}"\nsuperlink = "127.0.0.1:{port}"\n'
            f'state_dir = "state-{name}"\n[tls]\nroot_certificates = "keys/ca.pem"\n[auth]\nprivate_key = "keys/{key}"\n')


def coordinator(port: int, *extra) -> list[str]:
    return [*FEDTAB, "coordinator", "consortium.toml", "-o", "model.fedtab", "--port", str(port),
            "--ssl-certfile", "keys/server.pem", "--ssl-keyfile", "keys/server.key", "--ssl-ca-certfile",
            "keys/ca.pem", *extra]


@pytest.fixture
def keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    r = subprocess.run([*FEDTAB, "trial-keys", "keys", "--site", "cleveland", "--site", "hungary", "--site",
                        "switzerland"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_an_impostor_with_clevelands_key_calling_itself_hungary_is_refused_and_hungary_trains(keyed):
    port = processes.free_port()
    # The scenario: 'impostor' states "hungary" but holds cleveland's key; the real hungary and
    # switzerland hold their own. The impostor's table is hungary's (what it has does not matter).
    write_consortium(keyed, port, {"impostor": ("hungary", "cleveland"), "hungary": ("hungary", "hungary"),
                                   "switzerland": ("switzerland", "switzerland")})
    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(coordinator(port, "--wait-for-sites", "60"), keyed / "coordinator.log", cwd=keyed)
        started.append(coord)
        wait_until(lambda: (keyed / ".model.fedtab.run" / "flwr-run.log").exists(), "the job", procs=[coord])
        for name in ("impostor", "hungary", "switzerland"):
            started.append(processes.start([*FEDTAB, "site", "--config", f"{name}.toml"], keyed / f"site-{name}.log",
                                           cwd=keyed))
        rc = coord.wait(timeout=400)
    finally:
        processes.stop_all(started)
    log = (keyed / "coordinator.log").read_text()
    assert rc == 0, log[-3000:]
    assert "the SuperNode holding cleveland's registered key calls itself 'hungary': refused" in log, log
    from fedtab.api import load

    model = load(keyed / "model.fedtab")
    assert sorted(model.ledgers_) == ["hungary", "switzerland"]  # the real hungary is not locked out
    assert "connected to the coordinator" in (keyed / "site-hungary.log").read_text()


def test_a_site_killed_mid_round_is_noticed_within_seconds(keyed):
    port = processes.free_port()
    sites = {s: (s, s) for s in ("cleveland", "hungary", "switzerland")}
    write_consortium(keyed, port, sites, extra='[model]\nname = "ctgan"', min_sites=2, rounds=3)
    run_dir = keyed / ".model.fedtab.run"

    def rounds() -> list[float]:
        try:
            return [r["seconds"] for r in json.loads((run_dir / "status.json").read_text()).get("rounds", [])]
        except (OSError, ValueError):
            return []

    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(coordinator(port, "--round-timeout", "120"), keyed / "coordinator.log", cwd=keyed)
        started.append(coord)
        procs = {s: processes.start([*FEDTAB, "site", "--config", f"{s}.toml"], keyed / f"site-{s}.log", cwd=keyed)
                 for s in sites}
        started += procs.values()
        wait_until(lambda: len(rounds()) >= 1, "round 1", limit=400, procs=[coord])
        site_log = keyed / "site-switzerland.log"
        # Round 2 may start there before round 1 shows in the status file: wait for its line, not for a new
        # one (waiting for a count above the one read here let the job end first, now and then).
        wait_until(lambda: "training round 2" in site_log.read_text(), "round 2 at switzerland", procs=[coord])
        at_kill = len(rounds())
        os.killpg(procs["switzerland"].pid, signal.SIGKILL)  # its service, executor and SuperNode, mid-round
        killed = time.monotonic()
        procs["switzerland"].wait()
        done: dict[int, float] = {}  # rounds recorded -> seconds after the kill
        deadline = killed + 300
        while coord.poll() is None and time.monotonic() < deadline:
            done.setdefault(len(rounds()), time.monotonic() - killed)
            time.sleep(0.1)
        rc = coord.wait(timeout=10)
    finally:
        processes.stop_all(started)
    assert rc == 0, (keyed / "coordinator.log").read_text()[-3000:]
    seconds = rounds()
    from fedtab.api import load

    model = load(keyed / "model.fedtab")
    # The first round without switzerland is the one that waited for it (its reply may have left before
    # the kill: then that is round 3). Before: about 50 s (Flower's default heartbeat: held alive 30 s,
    # offline after two intervals). Now the SuperLink answers for the dead site at most 10 s after its
    # last heartbeat (fedtab's 5 s interval, twice); the rest of the round is the live sites' work.
    first = next(i for i, h in enumerate(model.history_) if "switzerland" not in h.epsilon)
    # The round recorded first after the kill is the one that waited for the dead site (if that is round
    # 2): the time from the kill to its end is how long the coordinator took to notice, plus the wait for
    # the live sites' replies when those came later.
    noticed = done.get(first + 1) if first == at_kill else None
    print(f"\nrounds {seconds} s; the first round without switzerland (round {first + 1}) took {seconds[first]:.1f} s"
          + (f", ended {noticed:.1f} s after the kill" if noticed is not None else ""))
    assert seconds[first] < 10.0, seconds
    # The model names every site whose releases are in it: switzerland's encoding and first round.
    assert sorted(model.result_.site_weights) == ["cleveland", "hungary", "switzerland"]
    assert sorted(model.history_[0].epsilon) == ["cleveland", "hungary", "switzerland"]
    assert all(sorted(h.epsilon) == ["cleveland", "hungary"] for h in model.history_[2:])
    # A ledger for every site whose releases are in it: the dead one's is the last its replies carried
    # (marked as such); its own, on its disk, may hold one release more (a reply that never arrived).
    assert sorted(model.ledgers_) == ["cleveland", "hungary", "switzerland"]
    assert model.ledgers_last_seen_ == ("switzerland",)
    assert "training/round 1" in [e.phase for e in model.ledgers_["switzerland"].entries]
    assert (keyed / "state-switzerland" / "ledger.jsonl").is_file()


def test_the_coordinator_joins_an_already_running_superlink_and_leaves_it_running(tmp_path, monkeypatch):
    """``fedtab coordinator --superlink ADDR``: the consortium's SuperLink is someone else's process; the
    coordinator registers nothing it need not, runs the job over it, and does not stop it."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    port = processes.free_port()
    schema = Path(heart_site_path("cleveland")).parent / "heart_schema.json"
    (tmp_path / "consortium.toml").write_text(
        f'seed = 0\nschema = "{schema}"\n[privacy]\nepsilon = 1.0\n[sites.cleveland]\n[sites.hungary]\n')
    for s in ("cleveland", "hungary"):
        (tmp_path / f"{s}.toml").write_text(
            f'name = "{s}"\nsource = "{heart_site_path(s)}"\nsuperlink = "127.0.0.1:{port}"\n'
            f'state_dir = "state-{s}"\n[tls]\ninsecure = true\n')
    started: list[subprocess.Popen] = []
    try:
        link = processes.start(["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port)],
                               tmp_path / "superlink.log", env={"FLWR_HOME": str(tmp_path / "link-home")})
        started.append(link)
        processes.wait_for_port(f"127.0.0.1:{port}", link, tmp_path / "superlink.log")
        sites = [processes.start([*FEDTAB, "site", "--config", f"{s}.toml"], tmp_path / f"site-{s}.log",
                                 cwd=tmp_path) for s in ("cleveland", "hungary")]
        started += sites
        coord = processes.start([*FEDTAB, "coordinator", "consortium.toml", "-o", "model.fedtab", "--superlink",
                                 f"127.0.0.1:{port}", "--insecure"], tmp_path / "coordinator.log", cwd=tmp_path)
        started.append(coord)
        rc = coord.wait(timeout=400)
        assert rc == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        assert all(s.wait(timeout=60) == 0 for s in sites)  # told the job is over
        assert link.poll() is None  # the SuperLink it joined is still up: not the coordinator's to stop
    finally:
        processes.stop_all(started)
    from fedtab.api import load

    assert sorted(load(tmp_path / "model.fedtab").ledgers_) == ["cleveland", "hungary"]
    assert "starting the SuperLink" not in (tmp_path / "coordinator.log").read_text()
    # A stock SuperLink refuses fedtab's 5 s heartbeat: each site falls back to Flower's 10 s floor, once.
    assert (tmp_path / "site-cleveland.log").read_text().count("takes heartbeats no shorter than 10 s") == 1


# The hostile site's own code (loaded at its interpreter's start through PYTHONPATH: its site service masks
# every training round's update x100, and keeps its honest one).
HOSTILE_SITE = '''import numpy as np

from fedtab.federation import secure_updates

_masked_reply = secure_updates.masked_reply


def _hostile(site, body, reply, state, session):
    glob = body["weights"]
    weights = {k: (glob[k] + 100.0 * (np.asarray(v) - glob[k])).astype(np.asarray(v).dtype)
               if np.issubdtype(np.asarray(v).dtype, np.floating) else v for k, v in reply["weights"].items()}
    return _masked_reply(site, body, {**reply, "weights": weights}, state, session)


secure_updates.masked_reply = _hostile
'''


def test_a_hostile_site_that_masks_a_scaled_update_is_named_in_a_real_deployment(keyed):
    """Issue 22 part 5 with real processes: switzerland's site code masks its update x100. The round's
    secure sum fails, the coordinator proves the failure to each site, the sites reveal their mask keys of
    that round (over Flower, one proof per site), the coordinator opens each update in the sum, names
    switzerland and goes on with the two others; the later rounds are secure sums again."""
    port = processes.free_port()
    sites = {s: (s, s) for s in ("cleveland", "hungary", "switzerland")}
    write_consortium(keyed, port, sites, extra='[model]\nname = "tvae"', min_sites=2, rounds=3)
    hostile = keyed / "hostile-code"
    hostile.mkdir()
    (hostile / "sitecustomize.py").write_text(HOSTILE_SITE)
    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(coordinator(port), keyed / "coordinator.log", cwd=keyed)
        started.append(coord)
        for s in sites:
            env = {"PYTHONPATH": os.pathsep.join([str(hostile), os.environ.get("PYTHONPATH", "")])} \
                if s == "switzerland" else None
            started.append(processes.start([*FEDTAB, "site", "--config", f"{s}.toml"], keyed / f"site-{s}.log",
                                           cwd=keyed, env=env))
        rc = coord.wait(timeout=500)
    finally:
        processes.stop_all(started)
    log = (keyed / "coordinator.log").read_text()
    assert rc == 0, log[-3000:]
    assert "round 1: left out 1 site ('switzerland')" in log and "its update cannot be averaged" in log, log[-3000:]
    from fedtab.api import load

    model = load(keyed / "model.fedtab")
    assert [sorted(h.epsilon) for h in model.history_] == [["cleveland", "hungary"]] * 3
    assert sorted(model.ledgers_) == ["cleveland", "hungary", "switzerland"]  # its encoding is in the model
    # each honest site's operator is told that its update of round 1 was opened, and why
    assert "training round 1: its secure sum failed its screen" in (keyed / "site-cleveland.log").read_text()

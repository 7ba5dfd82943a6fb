"""Issue 21, the deployment walk-through with real processes (SuperLink, SuperNodes, ServerApp): what a
new user sees. The job runs on 6 of the heart columns (a smaller marginal model, the same Flower
traffic) so that each test spends its time in the deployment, not in fitting.

- the walk-through from 'fedtab trial-data' on: the coordinator prints each phase as it happens, a site
  whose table does not conform is left out and named (training.min_sites = 2), every site stops by
  itself when the job is over, no socket or process is left behind;
- a site whose key the SuperLink does not know says so once and stops (it restarted its SuperNode
  11 times printing 'exited (1)' before);
- Ctrl-C at a site and at the coordinator: one line, exit code 130, every child process stopped.

Every process a test starts leads its own process group (as in a terminal) and is stopped by its id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedtab.deploy import processes

pytestmark = pytest.mark.slow

COLUMNS = ("age", "sex", "cp", "chol", "thalach", "num")
SITES = ("cleveland", "hungary", "switzerland")
FEDTAB = [sys.executable, "-m", "fedtab"]


def fedtab(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDTAB, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def walk(tmp_path, monkeypatch):
    """The walk-through's folder after 'fedtab trial-data' and 'fedtab trial-keys', on 6 columns."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    assert fedtab("trial-data", ".", cwd=tmp_path).returncode == 0
    assert fedtab("trial-keys", "keys", *(a for s in SITES for a in ("--site", s)), cwd=tmp_path).returncode == 0
    schema = json.loads((tmp_path / "heart_schema.json").read_text())
    schema["columns"] = [c for c in schema["columns"] if c["name"] in COLUMNS]
    (tmp_path / "heart_schema.json").write_text(json.dumps(schema))
    for s in SITES:
        table = pd.read_csv(tmp_path / f"heart_{s}.csv", dtype=str, keep_default_na=False)
        table[list(COLUMNS)].to_csv(tmp_path / f"heart_{s}.csv", index=False)
    return tmp_path


def write_configs(folder: Path, port: int, *, sites=SITES, min_sites: int = 2) -> None:
    (folder / "consortium.toml").write_text(
        f'schema = "heart_schema.json"\n[privacy]\nepsilon = 1.0\n[training]\nmin_sites = {min_sites}\n'
        + "".join(f'[sites.{s}]\npublic_key = "keys/{s}.pub"\n' for s in sites))
    for s in SITES:
        (folder / f"{s}.toml").write_text(
            f'name = "{s}"\nsource = "heart_{s}.csv"\nmax_epsilon = 2.0\nsuperlink = "127.0.0.1:{port}"\n'
            f'state_dir = "state-{s}"\n[tls]\nroot_certificates = "keys/ca.pem"\n[auth]\nprivate_key = "keys/{s}"\n')


def coordinator_cmd(port: int, *extra) -> list[str]:
    return [*FEDTAB, "coordinator", "consortium.toml", "-o", "model.fedtab", "--port", str(port),
            "--ssl-certfile", "keys/server.pem", "--ssl-keyfile", "keys/server.key",
            "--ssl-ca-certfile", "keys/ca.pem", *extra]


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        assert proc.poll() is None, f"exited {proc.returncode} before '{text}':\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no '{text}' after {timeout:.0f} s:\n{path.read_text()[-3000:]}"
        time.sleep(0.3)


class Tree:
    """Every process seen below the started ones (polled), to check that none outlives the run."""

    def __init__(self):
        self.seen: set[int] = set()

    def note(self, procs) -> None:
        for p in procs:
            if p.poll() is None:
                self.seen.update(processes.descendants(p.pid))

    def alive(self) -> list[int]:
        return [p for p in self.seen if processes._alive(p)]


def test_the_walk_through_leaves_out_a_bad_site_prints_its_phases_and_every_site_stops(walk):
    port = processes.free_port()
    write_configs(walk, port)
    odd = pd.read_csv(walk / "heart_switzerland.csv", dtype=str, keep_default_na=False)
    odd.loc[:5, "age"] = "500"  # outside the declared bounds: switzerland cannot take part
    odd.to_csv(walk / "heart_switzerland.csv", index=False)
    started, tree = [], Tree()
    t0 = time.perf_counter()
    try:
        coord = processes.start(coordinator_cmd(port), walk / "coordinator.log", cwd=walk)
        started.append(coord)
        sites = {s: processes.start([*FEDTAB, "site", "--config", f"{s}.toml"], walk / f"site-{s}.log", cwd=walk)
                 for s in SITES}
        started += sites.values()
        while any(p.poll() is None for p in started):
            tree.note(started)
            assert time.perf_counter() - t0 < 480, "the walk-through did not end in 8 minutes"
            time.sleep(0.5)
    finally:
        processes.stop_all(started)
    seconds = time.perf_counter() - t0
    log = (walk / "coordinator.log").read_text()
    assert coord.returncode == 0, log[-3000:]
    phases = ["model: mst", "starting the SuperLink", "registered the public keys of 3 sites",
              "waiting for sites:", "connected: 3 sites", "schema agreement",
              "schema agreement: left out 1 site ('switzerland'); going on with 2 of 3", "federated encoding",
              "marginals:",
              "model written to", "the job is over"]
    where = [log.find(p) for p in phases]
    assert all(w >= 0 for w in where) and where == sorted(where), (list(zip(phases, where)), log)
    assert "'age'" in log and "500" not in log  # the column is named; its values stay at the site
    for s, p in sites.items():
        out = (walk / f"site-{s}.log").read_text()
        assert p.returncode == 0, out[-2000:]  # it stopped by itself: the job was over
        assert "the job is over" in out and "exited (1)" not in out
        assert not (walk / f"state-{s}" / "site.sock").exists()
    assert "schema agreement: answered" in (walk / "site-cleveland.log").read_text()
    assert "schema agreement: refused (DataValidationError" in (walk / "site-switzerland.log").read_text()
    assert tree.seen and not tree.alive()  # no flwr-serverapp, superexec or clientapp left
    print(f"\nwalk-through with a site left out: {seconds:.0f} s from start to the last site's exit")


def test_a_site_whose_key_is_not_registered_says_so_once_and_stops(walk, monkeypatch):
    """A SuperLink with authentication on, and no key registered: the site is told why, once."""
    from fedtab.deploy import runner
    from fedtab.errors import FederationError

    port = processes.free_port()
    write_configs(walk, port)
    link = processes.start(["flower-superlink", "--port", str(port), "--ssl-certfile", "keys/server.pem",
                            "--ssl-keyfile", "keys/server.key", "--ssl-ca-certfile", "keys/ca.pem",
                            "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
                           walk / "superlink.log", cwd=walk)
    monkeypatch.setattr(runner, "NOT_REGISTERED_PATIENCE", 10.0)
    said: list[str] = []
    try:
        processes.wait_for_port(f"127.0.0.1:{port}", link, walk / "superlink.log")
        t0 = time.perf_counter()
        with pytest.raises(FederationError) as e:
            runner.run_site(walk / "cleveland.toml", on_event=said.append, restart_delay=1.0)
        seconds = time.perf_counter() - t0
    finally:
        processes.stop_tree(link)
    assert "key not registered at the coordinator: register it with 'flwr supernode register" in str(e.value)
    assert str((walk / "keys" / "cleveland.pub").resolve()) in str(e.value)
    told = [m for m in said if "key not registered" in m]
    assert len(told) == 1, said  # once, not once per restart
    assert not any("exited (1)" in m for m in said)
    restarts = (walk / "state-cleveland" / "supernode.log").read_text().count("Starting Flower SuperNode")
    assert restarts > 1  # it kept trying (the coordinator registers keys just after its SuperLink starts)
    assert not (walk / "state-cleveland" / "site.sock").exists()
    print(f"\nunregistered key: {restarts} SuperNode starts, stopped after {seconds:.0f} s")


def interrupt(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """Ctrl-C as a terminal sends it: SIGINT to the foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=timeout)


def test_ctrl_c_stops_every_child_with_one_line_and_exit_130(walk):
    port = processes.free_port()
    write_configs(walk, port, min_sites=3)  # the job waits for the third site, which never comes
    started, tree = [], Tree()
    try:
        coord = processes.start(coordinator_cmd(port), walk / "coordinator.log", cwd=walk)
        started.append(coord)
        wait_for(walk / "coordinator.log", "job submitted", coord)
        site = processes.start([*FEDTAB, "site", "--config", "cleveland.toml"], walk / "site.log", cwd=walk)
        started.append(site)
        wait_for(walk / "coordinator.log", "1 of 3 connected", coord)  # the site's SuperNode is in
        tree.note(started)
        link_and_app = set(tree.seen)
        assert any("flwr-serverapp" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                   for p in link_and_app if processes._alive(p))  # the ServerApp is running: it must go too

        assert interrupt(site) == 130
        site_out = (walk / "site.log").read_text()
        assert len(re.findall(r"interrupted \(Ctrl-C\)", site_out)) == 1, site_out
        assert "Traceback" not in site_out
        assert not (walk / "state-cleveland" / "site.sock").exists()

        assert interrupt(coord) == 130
        coord_out = (walk / "coordinator.log").read_text()
        assert len(re.findall(r"interrupted \(Ctrl-C\)", coord_out)) == 1, coord_out
        assert "Traceback" not in coord_out
        deadline = time.monotonic() + 20
        while tree.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tree.alive(), [Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in tree.alive()]
    finally:
        processes.stop_all(started)
        for pid in tree.alive():
            processes._signal(pid, signal.SIGKILL)

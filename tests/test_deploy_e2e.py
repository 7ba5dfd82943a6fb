"""End to end on loopback: one SuperLink and three SuperNodes as separate processes, TLS and SuperNode
authentication on, driven by the README's commands (`fedtab trial-keys`, `fedtab coordinator`,
`fedtab site`). The model must equal, bitwise, the in-process run for the same seed.

Every process the test starts is in its own process group and is stopped by that group's id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedtab.datasets import heart_site_path
from fedtab.deploy import processes

SITES = ("cleveland", "hungary", "switzerland")
ROUNDS = 2


def write_configs(root: Path, *, port: int) -> None:
    """The files of the README's walk-through (consortium.toml and one site.toml per hospital)."""
    schema = Path(heart_site_path("cleveland")).parent / "heart_schema.json"
    sites = "".join(f'\n[sites.{s}]\npublic_key = "keys/{s}.pub"\n' for s in SITES)
    (root / "consortium.toml").write_text(
        f'seed = 0\nschema = "{schema}"\n\n[privacy]\nepsilon = 1.0\n\n'
        f"[training]\nrounds = {ROUNDS}\nmin_sites = 2\n{sites}")
    for s in SITES:
        (root / f"{s}.toml").write_text(
            f'name = "{s}"\nsource = "{heart_site_path(s)}"\nmax_epsilon = 2.0\n'
            f'superlink = "127.0.0.1:{port}"\nstate_dir = "state-{s}"\n\n'
            f'[tls]\nroot_certificates = "keys/ca.pem"\n\n[auth]\nprivate_key = "keys/{s}"\n')


def fedtab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedtab", *args]


@pytest.mark.slow
def test_three_sites_on_flower_with_tls_and_auth_give_the_in_process_model(tmp_path, monkeypatch):
    env = {"FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    port = processes.free_port()
    write_configs(tmp_path, port=port)
    subprocess.run(fedtab_cmd("trial-keys", "keys", *[f"--site={s}" for s in SITES]), cwd=tmp_path, check=True,
                   capture_output=True)
    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(fedtab_cmd(
            "coordinator", "consortium.toml", "-o", "model.fedtab", "--port", str(port),
            "--ssl-certfile", "keys/server.pem", "--ssl-keyfile", "keys/server.key",
            "--ssl-ca-certfile", "keys/ca.pem", "--round-timeout", "150"), tmp_path / "coordinator.log", cwd=tmp_path)
        started.append(coord)
        for s in SITES:
            started.append(processes.start(fedtab_cmd("site", "--config", str(tmp_path / f"{s}.toml")),
                                           tmp_path / f"site-{s}.log"))
        rc = coord.wait(timeout=240)
        assert rc == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
    finally:
        for proc in reversed(started):
            processes.stop(proc)
    for proc in started:
        assert proc.poll() is not None

    from fedtab.api import FederatedSynthesizer, load

    deployed = load(tmp_path / "model.fedtab")
    local = FederatedSynthesizer(epsilon=1.0, rounds=ROUNDS, seed=0, schema=deployed.schema_).fit(
        {s: str(heart_site_path(s)) for s in SITES})
    assert sorted(deployed.weights_) == sorted(local.weights_)
    for name, w in local.weights_.items():
        assert np.array_equal(deployed.weights_[name], w), name
    for s in SITES:  # the same releases, recorded once each, at every site
        assert [e.phase for e in deployed.ledgers_[s].entries] == [e.phase for e in local.ledgers_[s].entries]
        assert deployed.ledgers_[s].epsilon == pytest.approx(local.ledgers_[s].epsilon)
        assert (tmp_path / f"state-{s}" / "state.fedtab").is_file()  # the site's ledger is on its own disk
    link_log = (tmp_path / ".model.fedtab.run" / "superlink.log").read_text()
    assert "insecure" not in link_log.lower() and "authentication is disabled" not in link_log

    status = json.loads((tmp_path / ".model.fedtab.run" / "status.json").read_text())
    deployed_s = [r["seconds"] for r in status["rounds"]]
    local_s = [h.seconds for h in local.history_]
    print(f"\nseconds per round: deployed {deployed_s}, in-process (3 sites, sequential) {local_s}; "
          f"overhead ~{np.mean(deployed_s) - np.mean(local_s):.1f} s per round")

"""End to end on loopback, driven by the guide docs/deployment.md ("Deploying across institutions"): its TOML
files and its `fedtab` commands (trial-keys, coordinator, three sites, sample) run as written, with
the bundled hospitals' files and a free port in place of 9093. One SuperLink and three SuperNodes run
as separate processes with TLS and SuperNode authentication on; the model must have the in-process
run's shape and privacy plan for the same seed (every site's ledger holds the same releases at the
same noise), but not its weights: under DP each run's noise is secret, drawn afresh at every site.

Every process the test starts leads its own process group and is stopped by that group's id.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedtab.datasets import heart_site_path
from fedtab.deploy import processes

SITES = ("cleveland", "hungary", "switzerland")
README = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"  # the guide (was the README's section)


def readme_section() -> str:
    return README.read_text(encoding="utf-8")


def readme_files_and_commands(port: int) -> tuple[dict[str, str], list[list[str]]]:
    section = readme_section().replace("9093", str(port))
    files = {}
    for block in re.findall(r"```toml\n(.*?)```", section, re.S):
        name = block.splitlines()[0].lstrip("# ").strip()
        files[name] = block
    for s in SITES[1:]:  # "hungary.toml and switzerland.toml are the same with their own names"
        files[f"{s}.toml"] = files["cleveland.toml"].replace("cleveland", s)
    commands = [shlex.split(line) for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.startswith("fedtab ")]
    return files, [[sys.executable, "-m", "fedtab", *c[1:]] for c in commands]


def test_readme_walk_through_names_every_site_and_command():
    files, commands = readme_files_and_commands(9093)
    assert {"consortium.toml", *(f"{s}.toml" for s in SITES)} <= set(files)
    verbs = [c[3] for c in commands]
    assert verbs == ["trial-data", "trial-keys", "coordinator", "site", "site", "site", "sample"]


@pytest.mark.slow
def test_readme_deployment_three_sites_tls_auth_gives_the_in_process_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    files, commands = readme_files_and_commands(processes.free_port())
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    data, keys, coordinator, *sites, sample = commands  # the tables and schema come from 'fedtab trial-data'
    subprocess.run(data, cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(keys, cwd=tmp_path, check=True, capture_output=True)
    run_dir = tmp_path / ".model.fedtab.run"
    started: list[subprocess.Popen] = []
    try:
        coord = processes.start(coordinator, tmp_path / "coordinator.log", cwd=tmp_path)
        started.append(coord)
        # Sites start once the coordinator has registered their keys (it then submits the run); a site
        # started earlier is refused and retries, which only costs time.
        while not (run_dir / "flwr-run.log").exists() and coord.poll() is None:
            time.sleep(0.5)
        for cmd in sites:
            started.append(processes.start(cmd, tmp_path / f"site-{cmd[-1]}.log", cwd=tmp_path))
        rc = coord.wait(timeout=600)
        # 0: released; 10: the gate refused (at epsilon 1 it usually is): both are documented outcomes.
        assert rc in (0, 10), (tmp_path / "coordinator.log").read_text()[-3000:]
        for site in started[1:]:  # told the job is over, every site stops by itself
            assert site.wait(timeout=60) == 0
    finally:
        processes.stop_all(started)
    assert all(p.poll() is not None for p in started)
    subprocess.run(sample, cwd=tmp_path, check=True, capture_output=True)
    assert len((tmp_path / "synthetic.csv").read_text().splitlines()) == 1001

    from fedtab.api import FederatedSynthesizer, load

    deployed = load(tmp_path / "model.fedtab")
    # The walk-through names no model: the default is chosen from what is public, the same in process.
    local = FederatedSynthesizer(epsilon=1.0, seed=0, schema=deployed.schema_).fit(
        {s: str(heart_site_path(s)) for s in SITES})
    assert deployed.job_.model == local.job_.model
    # Secret noise: no rerun, local or deployed, reproduces the deployed parameters.
    common = sorted(set(deployed.weights_) & set(local.weights_))
    assert not all(np.array_equal(deployed.weights_[k], local.weights_[k]) for k in common)
    for s in SITES:  # the same releases, recorded once each, at every site
        assert [e.phase for e in deployed.ledgers_[s].entries] == [e.phase for e in local.ledgers_[s].entries]
        assert deployed.ledgers_[s].epsilon == pytest.approx(local.ledgers_[s].epsilon)
        assert (tmp_path / f"state-{s}" / "ledger.jsonl").is_file()  # each ledger is on its site's disk
    link_log = (run_dir / "superlink.log").read_text()
    assert "insecure" not in link_log.lower() and "authentication is disabled" not in link_log

    # Evaluation and the gate ran over the deployment: every site drew the table from the model it
    # trained and sent its verdicts (the public report), kept its figures in its own report (on its
    # disk), the verdict matches the exit code, and the table exists only if released.
    report = json.loads((tmp_path / "release" / "report.json").read_text())
    assert set(report["evaluation"]["sites"]) == set(SITES)
    assert "fidelity.quality" not in (tmp_path / "release" / "report.json").read_text()
    audit = json.loads((tmp_path / "release" / "audit.json").read_text())
    assert audit["released"] is (rc == 0)
    assert (tmp_path / "release" / "synthetic.csv").exists() is (rc == 0)
    for s in SITES:
        [own] = (tmp_path / f"state-{s}" / "reports").glob("evaluation-*.html")
        assert own.read_text().count("<svg") > 3

    status = json.loads((run_dir / "status.json").read_text())
    print(f"\n{deployed.job_.model}: federation {status['seconds']:.0f} s deployed; rounds "
          f"{[r['seconds'] for r in status['rounds']]} (a model trained in rounds has them)")

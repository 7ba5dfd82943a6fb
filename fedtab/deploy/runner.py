"""What ``fedtab coordinator`` and ``fedtab site`` do: start Flower's processes and fedtab's services.

Coordinator: (optionally) a ``flower-superlink`` (TLS, SuperNode authentication), the registration of
the sites' public keys, then ``flwr run`` of the fedtab app; it follows ``status.json`` and returns
when the ServerApp has written the model file. Site: the site service on a Unix socket plus a
``flower-supernode`` whose node config names the site and that socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedtab.deploy import processes
from fedtab.deploy.server import CHECKPOINT, STATUS
from fedtab.errors import ConfigError, FederationError

FEDERATION = "fedtab"
APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedtab-deploy"
version = "1.0.0"
description = "fedtab federated synthetic-table training (components live in the installed fedtab)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedtab"

[tool.flwr.app.components]
serverapp = "fedtab.deploy.apps:server_app"
clientapp = "fedtab.deploy.apps:client_app"

[tool.flwr.app.config]
fedtab-config = ""
output = ""
workdir = ""
resume = false
release-dir = ""
policy = ""
round-timeout = 600.0
attempt = ""
"""


@dataclass(frozen=True)
class TLSFiles:
    """The SuperLink's certificate and key, and the CA certificate that signed it (PEM files)."""

    certfile: Path
    keyfile: Path
    ca_certfile: Path


def _toml_str(v: object) -> str:
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def run_coordinator(config: Path, output: Path, *, superlink: str | None = None, resume: bool = False,
                    port: int = 9093, host: str = "127.0.0.1", tls: TLSFiles | None = None,
                    insecure: bool = False, round_timeout: float = 600.0,
                    on_round: Callable[[dict], None] | None = None, release_dir: Path | None = None,
                    policy: Path | None = None) -> dict:
    """Run the consortium's training to a model file; returns the final status (rounds, seconds)."""
    from fedtab.deploy.consortium import load_consortium

    cfg, keys = load_consortium(config)
    if tls is None and not insecure:
        raise ConfigError("give the SuperLink's TLS files (--ssl-certfile, --ssl-keyfile, --ssl-ca-certfile) "
                          "or --insecure for a loopback experiment")
    missing = [str(k) for k in keys.values() if not k.is_file()]
    if missing:
        raise ConfigError(f"public key file(s) not found: {missing}")
    output = output.resolve()
    workdir = output.parent / f".{output.name}.run"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS).unlink(missing_ok=True)
    if not resume:
        (workdir / CHECKPOINT).unlink(missing_ok=True)
    home = workdir / "flwr-home"
    env = {"FLWR_HOME": str(home)}
    # Statuses carry this attempt's id: a ServerApp orphaned by a killed coordinator may still write.
    attempt = uuid.uuid4().hex
    started: list[subprocess.Popen] = []
    try:
        address = superlink or f"{host}:{port}"
        if superlink is None:
            cmd = ["flower-superlink", "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
            cmd += ["--insecure"] if tls is None else ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile",
                                                       str(tls.keyfile), "--ssl-ca-certfile", str(tls.ca_certfile)]
            if keys:
                cmd.append("--enable-supernode-auth")
            log = workdir / "superlink.log"
            started.append(processes.start(cmd, log, env=env, own_group=False))
            processes.wait_for_port(address, started[-1], log)
        home.mkdir(parents=True, exist_ok=True)
        conn = f"address = {_toml_str(address)}\n" + (
            "insecure = true\n" if tls is None else f"root-certificates = {_toml_str(tls.ca_certfile.resolve())}\n")
        (home / "config.toml").write_text(f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n{conn}')
        for name, key in sorted(keys.items()):
            # A joined SuperLink may know the key from an earlier run: that is not an error.
            _flwr(["supernode", "register", str(key.resolve()), FEDERATION, "--name", name], env, workdir,
                  tolerate="already" if superlink is not None else None)
        app = workdir / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        run_cfg = workdir / "run-config.toml"
        run_cfg.write_text(f"fedtab-config = {_toml_str(Path(config).resolve())}\noutput = {_toml_str(output)}\n"
                           f"workdir = {_toml_str(workdir)}\nresume = {'true' if resume else 'false'}\n"
                           f"round-timeout = {float(round_timeout)}\nattempt = {_toml_str(attempt)}\n"
                           f"release-dir = {_toml_str(Path(release_dir).resolve() if release_dir else '')}\n"
                           f"policy = {_toml_str(Path(policy).resolve() if policy else '')}\n")
        log = workdir / "flwr-run.log"
        run = processes.start(["flwr", "run", str(app), FEDERATION, "--run-config", str(run_cfg), "--stream"],
                              log, env=env, own_group=False)
        started.append(run)
        return _follow(workdir, run, log, on_round, attempt)
    finally:
        for proc in reversed(started):
            processes.stop(proc)


def _flwr(args: list[str], env: dict, workdir: Path, *, tolerate: str | None = None) -> None:
    res = subprocess.run(["flwr", *args], capture_output=True, text=True, cwd=workdir,
                         env={**os.environ, **processes.DEPLOY_ENV, **env}, timeout=120)
    if res.returncode != 0 and not (tolerate and tolerate in (res.stdout + res.stderr).lower()):
        raise FederationError(f"'flwr {' '.join(args[:2])}' failed ({res.returncode}): {res.stdout[-800:]}"
                              f"{res.stderr[-800:]}")


def _follow(workdir: Path, run: subprocess.Popen, log: Path, on_round, attempt: str) -> dict:
    seen = 0
    exited_at = None
    while True:
        status = _read_status(workdir)
        if status.get("attempt") != attempt:
            status = {}
        rounds = status.get("rounds", [])
        for r in rounds[seen:]:
            if on_round is not None:
                on_round(r)
        seen = len(rounds)
        if status.get("state") == "done":
            return status
        if status.get("state") == "failed":
            raise FederationError(f"the federation failed: {status.get('error')} (logs in {workdir})")
        if run.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 10:  # the ServerApp may write its status just after
                raise FederationError(f"'flwr run' ended ({run.returncode}) without a model:\n{processes.tail(log)}")
        time.sleep(0.5)


def _read_status(workdir: Path) -> dict:
    try:
        return json.loads((workdir / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def run_site(config_path: Path, *, on_event: Callable[[str], None] | None = None,
             restart_delay: float = 5.0) -> None:
    """Serve one site until SIGTERM: the site service plus its SuperNode.

    The SuperNode is restarted whenever it exits (the SuperLink restarted, or this site's key was
    not registered yet); the site service, its table and its ledger stay up meanwhile.
    """
    from fedtab.api import _make_worker
    from fedtab.config import SiteSource
    from fedtab.deploy.site_service import SiteService, serve
    from fedtab.deploy.siteconf import load_site_config
    from fedtab.privacy.book import LedgerBook

    cfg = load_site_config(config_path)
    notify = on_event or (lambda msg: None)
    state_dir = cfg.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _log_to(state_dir / "site.log")  # the site's own log: error details (values, rows) stay here
    worker = _make_worker(cfg.name, SiteSource(source=cfg.source, table=cfg.table), policy=cfg.policy,
                          book=LedgerBook(cfg.name, state_dir), report_dir=state_dir / "reports")
    service = SiteService(worker, state_dir / "state.fedtab")
    sock = state_dir / "site.sock"
    node_config = f"site-name={_toml_str(cfg.name)} site-socket={_toml_str(sock)}"
    cmd = ["flower-supernode", "--superlink", cfg.superlink, "--node-config", node_config,
           "--port", str(cfg.port or processes.free_port())]
    cmd += ["--insecure"] if cfg.insecure else ["--root-certificates", str(cfg.root_certificates)]
    if cfg.private_key is not None:
        cmd += ["--auth-supernode-private-key", str(cfg.private_key)]
    log = state_dir / "supernode.log"
    env = {"FLWR_HOME": str(state_dir / "flwr-home")}
    lock = threading.Lock()
    node: list[subprocess.Popen] = []
    stopping = threading.Event()

    def keep_node_up() -> None:
        while not stopping.is_set():
            with lock:
                if stopping.is_set():
                    return
                node[:] = [processes.start(cmd, log, env=env, own_group=False)]
            code = node[0].wait()
            if stopping.wait(0 if stopping.is_set() else restart_delay):
                return
            notify(f"the SuperNode exited ({code}); restarting it (log: {log})")

    def ready() -> None:
        threading.Thread(target=keep_node_up, daemon=True).start()
        notify(f"site '{cfg.name}' is serving from {state_dir}; stop it with Ctrl-C")

    try:
        serve(service, sock, ready=ready)
    finally:
        stopping.set()
        with lock:
            for proc in node:
                processes.stop(proc)


def _log_to(path: Path) -> None:
    """Keep the site's log (logger ``fedtab.site``: the full text of every error it answered with) in
    ``path`` (mode 0600) at the site; ``fedtab site`` also shows it on the operator's terminal."""
    import logging

    path.touch(mode=0o600, exist_ok=True)
    log = logging.getLogger("fedtab.site")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

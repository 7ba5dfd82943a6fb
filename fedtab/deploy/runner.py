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
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedtab.deploy import processes
from fedtab.deploy.server import CHECKPOINT, NODES, STATUS
from fedtab.errors import ConfigError, FederationError
from fedtab.federation.agreement import name_sites
from fedtab.schema import atomic_write_text

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
join-timeout = 0.0
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


def check_coordinator(config: Path, *, tls: TLSFiles | None = None, insecure: bool = False,
                      policy: Path | None = None):
    """Everything the coordinator can check before it starts a process: the consortium config, its schema
    file and settings (the job, as ``fedtab train`` builds it), the public keys, the TLS files, the
    release policy. Raises the error's own class (exit code: 2 configuration, 3 schema, ...).
    Returns (config, site -> public key file, synthesizer, job)."""
    from fedtab.deploy.consortium import consortium_job, load_consortium

    cfg, keys = load_consortium(config)
    synth, job = consortium_job(cfg)
    if tls is None and not insecure:
        raise ConfigError("give the SuperLink's TLS files (--ssl-certfile, --ssl-keyfile, --ssl-ca-certfile) "
                          "or --insecure for a loopback experiment")
    problems = [f"{flag}: {path}: file not found" for flag, path in
                zip(("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"),
                    (tls.certfile, tls.keyfile, tls.ca_certfile) if tls is not None else ()) if not Path(path).is_file()]
    problems += [f"site '{name}': public_key {key}: file not found (relative paths in {Path(config).name} start "
                 f"at its folder, {Path(config).resolve().parent})" for name, key in sorted(keys.items())
                 if not key.is_file()]
    if problems:
        raise ConfigError(f"{config}: {len(problems)} problem(s):\n" + "\n".join(f"  - {x}" for x in problems))
    if policy is not None:
        from fedtab.assess import _policy

        _policy(policy)  # a malformed release policy is refused now, not after training
    return cfg, keys, synth, job


def run_coordinator(config: Path, output: Path, *, superlink: str | None = None, resume: bool = False,
                    port: int = 9093, host: str = "127.0.0.1", tls: TLSFiles | None = None,
                    insecure: bool = False, round_timeout: float = 600.0,
                    on_round: Callable[[dict], None] | None = None, release_dir: Path | None = None,
                    policy: Path | None = None, join_timeout: float | None = None,
                    on_event: Callable[[str], None] | None = None) -> dict:
    """Run the consortium's training to a model file; returns the final status (rounds, seconds).
    ``on_event(text)`` receives each phase as it happens (the SuperLink, the sites joining, schema
    agreement, encoding, rounds, evaluation, the end); ``join_timeout``: seconds to wait for every site
    to connect before going on with those connected (at least ``training.min_sites``)."""
    notify = on_event or (lambda text: None)
    cfg, keys, _, _ = check_coordinator(config, tls=tls, insecure=insecure, policy=policy)
    output = output.resolve()
    workdir = output.parent / f".{output.name}.run"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS).unlink(missing_ok=True)
    (workdir / NODES).unlink(missing_ok=True)  # written afresh from the SuperLink's registrations
    if not resume:
        (workdir / CHECKPOINT).unlink(missing_ok=True)
    home = workdir / "flwr-home"
    env = {"FLWR_HOME": str(home)}
    # Statuses carry this attempt's id: a ServerApp orphaned by a killed coordinator may still write.
    attempt = uuid.uuid4().hex
    started: list[subprocess.Popen] = []
    family = processes.Family()  # flwr-serverapp and flower-superexec, noted while they run
    try:
        address = superlink or f"{host}:{port}"
        if superlink is None:
            # Flower's SuperLink, accepting fedtab's shorter SuperNode heartbeats (superlink_main.py)
            cmd = [sys.executable, "-m", "fedtab.deploy.superlink_main", "--host", host, "--port", str(port),
                   "--disable-runtime-dependency-installation"]
            cmd += ["--insecure"] if tls is None else ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile",
                                                       str(tls.keyfile), "--ssl-ca-certfile", str(tls.ca_certfile)]
            if keys:
                cmd.append("--enable-supernode-auth")
            log = workdir / "superlink.log"
            notify(f"starting the SuperLink on {address} ({'no TLS' if tls is None else 'TLS'}"
                   f"{', SuperNode authentication' if keys else ''}; log: {log})")
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
        if keys:
            bound = bind_nodes(keys, _registered_nodes(env, workdir))
            atomic_write_text(workdir / NODES, json.dumps({str(nid): name for nid, name in sorted(bound.items())}))
            notify(f"registered the public keys of {name_sites(sorted(keys))}; each site is known by its key")
        app = workdir / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        run_cfg = workdir / "run-config.toml"
        run_cfg.write_text(f"fedtab-config = {_toml_str(Path(config).resolve())}\noutput = {_toml_str(output)}\n"
                           f"workdir = {_toml_str(workdir)}\nresume = {'true' if resume else 'false'}\n"
                           f"round-timeout = {float(round_timeout)}\nattempt = {_toml_str(attempt)}\n"
                           f"release-dir = {_toml_str(Path(release_dir).resolve() if release_dir else '')}\n"
                           f"policy = {_toml_str(Path(policy).resolve() if policy else '')}\n"
                           f"join-timeout = {float(join_timeout or round_timeout)}\n")
        log = workdir / "flwr-run.log"
        run = processes.start(["flwr", "run", str(app), FEDERATION, "--run-config", str(run_cfg), "--stream"],
                              log, env=env, own_group=False)
        started.append(run)
        notify(f"job submitted; waiting for the {len(cfg.sites)} sites to connect "
               f"(for up to {float(join_timeout or round_timeout):.0f} s)")
        return _follow(workdir, run, log, on_round, attempt, notify, lambda: family.note(started))
    finally:
        for proc in reversed(started):  # with every process they started (flwr-serverapp, flower-superexec)
            processes.stop_tree(proc)
        family.stop()  # those whose parent had already gone (a terminal's Ctrl-C reaches them all at once)


def _flwr(args: list[str], env: dict, workdir: Path, *, tolerate: str | None = None) -> None:
    res = subprocess.run(["flwr", *args], capture_output=True, text=True, cwd=workdir,
                         env={**os.environ, **processes.DEPLOY_ENV, **env}, timeout=120)
    if res.returncode != 0 and not (tolerate and tolerate in (res.stdout + res.stderr).lower()):
        raise FederationError(f"'flwr {' '.join(args[:2])}' failed ({res.returncode}): {res.stdout[-800:]}"
                              f"{res.stderr[-800:]}")


def key_id(data: bytes) -> bytes:
    """A public key (OpenSSH, PEM or DER) as DER SubjectPublicKeyInfo: one form to compare keys in."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    for load in (serialization.load_ssh_public_key, serialization.load_pem_public_key,
                 serialization.load_der_public_key):
        try:
            key = load(data.strip() if load is not serialization.load_der_public_key else data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    raise ConfigError("a public key that is neither OpenSSH, PEM nor DER")


def bind_nodes(keys: dict[str, Path], registered: dict[int, bytes]) -> dict[int, str]:
    """node id -> site name: the node the SuperLink registered with each site's public key (from the
    consortium configuration). The SuperLink authenticates every node by its key, so the node id of a
    reply says which site's key sent it. Two sites naming one key are refused (ConfigError)."""
    by_key: dict[bytes, str] = {}
    for name, path in sorted(keys.items()):
        k = key_id(Path(path).read_bytes())
        if k in by_key:
            raise ConfigError(f"sites '{by_key[k]}' and '{name}' name the same public key ({path}); each site needs "
                              "its own key pair ('fedtab site keygen' at the site)")
        by_key[k] = name
    return {nid: by_key[key_id(pk)] for nid, pk in registered.items() if key_id(pk) in by_key}


_LIST_NODES = """
import json, sys
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import ListNodesRequest
client = init_http_client_from_connection(read_superlink_connection(sys.argv[1]))
try:
    res = client.ListNodes(ListNodesRequest())
finally:
    client.close()
print(json.dumps({str(n.node_id): n.public_key.hex() for n in res.nodes_info
                  if n.status not in ("unregistered", "deleted") and n.public_key}))
"""


def _registered_nodes(env: dict, workdir: Path) -> dict[int, bytes]:
    """node id -> public key of every node registered at the SuperLink (its Control API, as ``flwr supernode
    list`` reads it; that command does not print the keys)."""
    res = subprocess.run([sys.executable, "-c", _LIST_NODES, FEDERATION], capture_output=True, text=True, cwd=workdir,
                         env={**os.environ, **processes.DEPLOY_ENV, **env}, timeout=120)
    if res.returncode != 0:
        raise FederationError(f"could not list the SuperLink's registered SuperNodes ({res.returncode}): "
                              f"{res.stderr[-800:]}")
    return {int(nid): bytes.fromhex(pk) for nid, pk in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def _follow(workdir: Path, run: subprocess.Popen, log: Path, on_round, attempt: str,
            notify: Callable[[str], None], note_family: Callable[[], None]) -> dict:
    seen = events = 0
    exited_at = None
    while True:
        note_family()
        status = _read_status(workdir)
        if status.get("attempt") != attempt:
            status = {}
        for text in status.get("events", [])[events:]:
            notify(text)
        events = max(events, len(status.get("events", [])))
        rounds = status.get("rounds", [])
        for r in rounds[seen:]:
            if on_round is not None:
                on_round(r)
        seen = len(rounds)
        if status.get("state") == "done":
            return status
        if status.get("state") == "failed":
            raise _failure(status, workdir)
        if run.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 10:  # the ServerApp may write its status just after
                raise FederationError(f"'flwr run' ended ({run.returncode}) without a model:\n{processes.tail(log)}")
        time.sleep(0.5)


def _failure(status: dict, workdir: Path) -> Exception:
    """The ServerApp's error as the coordinator raises it: same class, so the same exit code."""
    from fedtab import errors

    cls = getattr(errors, str(status.get("error_class", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.FedtabError)):
        cls = FederationError
    exc = cls.__new__(cls)  # rebuilt without __init__: some classes take structured arguments
    Exception.__init__(exc, f"{status.get('error')} (logs in {workdir})")
    exc.public, exc.columns, exc.problems, exc.failed, exc.source = True, (), [], [], ""
    return exc


def _read_status(workdir: Path) -> dict:
    try:
        return json.loads((workdir / STATUS).read_text())
    except (OSError, ValueError):
        return {}


# Flower's SuperNode reports a key the SuperLink does not know as this activation error (its log, 1.42).
NOT_REGISTERED = "[code: 2004]"
HEARTBEAT_REFUSED = "[code: 2003]"  # "Invalid heartbeat interval": a stock SuperLink's 10 s floor
NOT_REGISTERED_PATIENCE = 120.0  # seconds: the coordinator registers the keys just after its SuperLink starts
END_GRACE = 5.0  # seconds the SuperNode gets to deliver the site's last reply before it is stopped


def run_site(config_path: Path, *, on_event: Callable[[str], None] | None = None,
             restart_delay: float = 5.0) -> None:
    """Serve one site until the job is over (the coordinator says so), Ctrl-C or SIGTERM: the site
    service plus its SuperNode.

    Before anything starts, the site reads its own table (readable, parses, at least
    ``MIN_SITE_ROWS`` rows, and conforms to ``schema`` when site.toml names one) and refuses with the
    problem. The SuperNode is restarted whenever it exits (the SuperLink is not up yet or restarted);
    a key the SuperLink does not know is said so, and after ``NOT_REGISTERED_PATIENCE`` seconds the site
    stops (``FederationError``). Each request is printed as it is served.
    """
    from fedtab.api import _make_worker
    from fedtab.config import SiteSource
    from fedtab.deploy.supernode_main import HEARTBEAT_OPTION, STOCK_MIN_HEARTBEAT
    from fedtab.deploy.site_service import SiteService, serve
    from fedtab.deploy.siteconf import check_site_source, load_site_config
    from fedtab.privacy.book import LedgerBook

    cfg = load_site_config(config_path)
    notify = on_event or (lambda msg: None)
    notify(check_site_source(cfg, config_path))  # refuses a table this site cannot serve, before anything starts
    state_dir = cfg.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _log_to(state_dir / "site.log")  # the site's own log: error details (values, rows) stay here
    worker = _make_worker(cfg.name, SiteSource(source=cfg.source, table=cfg.table), policy=cfg.policy,
                          book=LedgerBook(cfg.name, state_dir), report_dir=state_dir / "reports")
    finished = threading.Event()  # the job is over, or the site cannot go on: serve() returns
    failure: list[Exception] = []
    service = SiteService(worker, state_dir / "state.fedtab",
                          on_request=lambda text: notify(text), on_end=lambda: _after(END_GRACE, finished.set))
    sock = state_dir / "site.sock"
    node_config = f"site-name={_toml_str(cfg.name)} site-socket={_toml_str(sock)}"
    runtime_port = cfg.port or processes.free_port()
    # The SuperNode runs no ClientApp of its own (--isolation process): fedtab's executor, a thread of this
    # process, runs the installed fedtab's ClientApp for each task and refuses any other app (executor.py).
    cmd = [sys.executable, "-m", "fedtab.deploy.supernode_main", "--superlink", cfg.superlink, "--node-config",
           node_config, "--isolation", "process", "--host", "127.0.0.1", "--port", str(runtime_port)]
    cmd += ["--insecure"] if cfg.insecure else ["--root-certificates", str(cfg.root_certificates)]
    if cfg.private_key is not None:
        cmd += ["--auth-supernode-private-key", str(cfg.private_key)]
    log = state_dir / "supernode.log"
    env = {"FLWR_HOME": str(state_dir / "flwr-home")}
    lock = threading.Lock()
    node: list[subprocess.Popen] = []
    stopping = threading.Event()
    family = processes.Family()  # flower-superexec and flwr-clientapp, noted while they run

    def keep_node_up() -> None:
        said = None
        refused_since = None
        while not stopping.is_set():
            with lock:
                if stopping.is_set():
                    return
                offset = log.stat().st_size if log.exists() else 0
                node[:] = [processes.start(cmd, log, env=env, own_group=False)]
            while node[0].poll() is None and not stopping.is_set():
                family.note(node)
                stopping.wait(1.0)
            code = node[0].wait()
            if stopping.wait(0 if stopping.is_set() else restart_delay):
                return
            text = _read_from(log, offset)
            if HEARTBEAT_REFUSED in text and HEARTBEAT_OPTION not in cmd:
                # A stock SuperLink (one this site joined): Flower's own floor for the heartbeat.
                cmd[3:3] = [HEARTBEAT_OPTION, str(STOCK_MIN_HEARTBEAT)]
                notify(f"the SuperLink at {cfg.superlink} takes heartbeats no shorter than {STOCK_MIN_HEARTBEAT:.0f} "
                       f"s: if this site dies, the coordinator notices within {2 * STOCK_MIN_HEARTBEAT:.0f} s")
                continue
            if NOT_REGISTERED in text:
                refused_since = refused_since or time.monotonic()
                reason = (f"key not registered at the coordinator: register it with 'flwr supernode register "
                          f"{_public_key_of(cfg)}' at the SuperLink, or name it as [sites.{cfg.name}] public_key "
                          "in the consortium configuration ('fedtab coordinator' registers those when it starts)")
                if time.monotonic() - refused_since > NOT_REGISTERED_PATIENCE:
                    failure.append(FederationError(f"site '{cfg.name}': {reason}. Stopped after "
                                                   f"{NOT_REGISTERED_PATIENCE:.0f} s of refusals."))
                    finished.set()
                    return
            else:
                refused_since = None
                reason = (f"the SuperLink at {cfg.superlink} does not answer (not started yet, or restarting)"
                          if "Failed to initialize the connection" in text or "UNAVAILABLE" in text
                          else f"the SuperNode exited ({code}); see {log}")
            if reason != said:  # each reason once, not once per restart
                notify(f"{reason}; retrying every {restart_delay:.0f} s")
                said = reason

    def refused(reason: str) -> None:
        import logging

        logging.getLogger("fedtab.site").warning(reason)
        notify(reason)

    def ready() -> None:
        from fedtab.deploy.executor import serve_tasks

        threading.Thread(target=serve_tasks, args=(f"127.0.0.1:{runtime_port}", stopping), daemon=True,
                         kwargs={"on_refused": refused, "on_error": lambda e: notify(f"a task failed: {e!r}")}).start()
        threading.Thread(target=keep_node_up, daemon=True).start()
        notify(f"site '{cfg.name}' is serving from {state_dir} and connecting to {cfg.superlink}; stop it with Ctrl-C")

    try:
        serve(service, sock, ready=ready, stop=finished)
    finally:
        stopping.set()
        with lock:
            for proc in node:  # with every process it started (flower-superexec, flwr-clientapp)
                processes.stop_tree(proc)
        family.stop()
    if failure:
        raise failure[0]
    notify(f"the job is over: site '{cfg.name}' stopped (its ledger: {state_dir / 'ledger.jsonl'})")


def _after(seconds: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _public_key_of(cfg) -> str:
    return f"{cfg.private_key.resolve()}.pub" if cfg.private_key is not None else "<the site's public key file>"


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
    log.propagate = False  # its handlers are here and on the terminal; Flower's root handler would repeat it

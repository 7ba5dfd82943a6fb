"""Per-round time of a real deployment beyond local compute, at 3 sites on loopback (issue 22 part 6).

    python benchmarks/bench_deploy_overhead.py [--rounds 4] [--out benchmarks/results/bench_deploy_overhead.json]

Two measurements, each with real processes (``flower-superlink``, one SuperNode per site, Flower's
ServerApp), no TLS (loopback):

1. ``fedtab``: ``fedtab coordinator`` and three ``fedtab site`` on the bundled hospitals, a CTGAN job of
   ``--rounds`` rounds. A round's time is the ServerApp's (``status.json``); its local compute is the
   slowest site's time to answer that round (each site prints "training round N: answered in X s");
   the overhead is the difference (the sites train at the same time, on a shared machine).
2. ``flower``: what Flower alone costs for one request/reply round to 3 nodes, with an app that does
   nothing but echo (the ServerApp sends one query per node and waits for the replies, 10 times): (a) stock
   ``flower-supernode`` (a new ``flwr-clientapp`` process per message, 3 s polls, and Flower's own
   ``send_and_receive``, which waits 3 s between pulls), (b) fedtab's SuperNode settings
   (``fedtab.deploy.supernode_main`` and ``superlink_main``: 0.2 s polls) with the same stock executor, and a 0.1 s pull loop,
   (c) those settings with fedtab's long-lived executor (``fedtab.deploy.executor``, serving the echo).
   Each query carries a 460 KB array and the reply brings it back (a CTGAN model's size).

Prints a table and writes the JSON. The machine's load is recorded with the figures: on a shared
machine every figure moves with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suite import git_commit  # noqa: E402

from fedtab.datasets import heart_site_path  # noqa: E402
from fedtab.deploy import processes  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402

SITES = ("cleveland", "hungary", "switzerland")
FEDTAB = [sys.executable, "-m", "fedtab"]

ECHO_APP = '''import json, time
from pathlib import Path
import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client_app = ClientApp()


@client_app.query()
def _echo(msg, context):
    return Message(msg.content, reply_to=msg)  # the payload back: a model update's size


server_app = ServerApp()


def _fast(grid, msgs):
    ids = set(grid.push_messages(msgs))
    while ids:
        ids -= {r.metadata.reply_to_message_id for r in grid.pull_messages(list(ids))}
        time.sleep(0.1)


@server_app.main()
def _main(grid, context):
    cfg = context.run_config
    while len(grid.get_node_ids()) < int(cfg["nodes"]):
        time.sleep(0.2)
    times = []
    for _ in range(int(cfg["rounds"])):
        t0 = time.perf_counter()
        payload = RecordDict({"w": ArrayRecord({"w": Array(np.random.rand(int(cfg["payload"])).astype("float32"))})})
        msgs = [Message(payload, dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
        if cfg["fast"]:
            _fast(grid, msgs)
        else:
            list(grid.send_and_receive(msgs, timeout=120))
        times.append(time.perf_counter() - t0)
    Path(str(cfg["result"])).write_text(json.dumps(times))
'''

ECHO_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "echo"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "echo:server_app"
clientapp = "echo:client_app"

[tool.flwr.app.config]
nodes = 3
rounds = 10
fast = false
payload = 115000
result = ""
"""

# fedtab's executor serving the echo app: the bundle check is off (the echo bundle is not fedtab's) and
# fedtab's ClientApp is replaced by the echo; everything else is the executor 'fedtab site' runs.
EXECUTOR = """import sys, threading
from flwr.app import Message
import fedtab.deploy.apps as apps
import fedtab.deploy.executor as ex
ex.check_app = lambda content: None
apps.client_app = lambda message, context: Message(message.content, reply_to=message)
ex.serve_tasks(sys.argv[1], threading.Event())
"""


def wait(cond, procs, what: str, limit: float = 900.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a process exited ({p.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {limit:.0f} s")
        time.sleep(0.3)


def flower_alone(folder: Path, *, fedtab_settings: bool, executor: bool = False, rounds: int = 10,
                 payload: int = 115000) -> list[float]:
    port = processes.free_port()
    env = {"FLWR_HOME": str(folder / "flwr-home")}
    app = folder / "echo"
    app.mkdir(parents=True)
    (app / "echo.py").write_text(ECHO_APP)
    (app / "pyproject.toml").write_text(ECHO_PYPROJECT)
    (folder / "flwr-home").mkdir()
    (folder / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "b"\n\n[superlink.b]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    result = folder / "times.json"
    started = []
    try:
        link = [sys.executable, "-m", "fedtab.deploy.superlink_main"] if fedtab_settings else ["flower-superlink"]
        started.append(processes.start([*link, "--insecure", "--host", "127.0.0.1", "--port", str(port)],
                                       folder / "superlink.log", env=env))
        processes.wait_for_port(f"127.0.0.1:{port}", started[-1], folder / "superlink.log")
        node = [sys.executable, "-m", "fedtab.deploy.supernode_main"] if fedtab_settings else ["flower-supernode"]
        for i in range(3):
            runtime = processes.free_port()
            started.append(processes.start([*node, "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                                            str(runtime), *(["--isolation", "process"] if executor else [])],
                                           folder / f"node-{i}.log", env=env))
            if executor:
                started.append(processes.start([sys.executable, "-c", EXECUTOR, f"127.0.0.1:{runtime}"],
                                               folder / f"executor-{i}.log", env=env))
        started.append(processes.start(["flwr", "run", str(app), "b", "--run-config",
                                        f'rounds={rounds} fast={"true" if fedtab_settings else "false"} '
                                        f'payload={payload} result="{result}"'], folder / "run.log", env=env))
        wait(result.exists, started[:-1], "the echo rounds")
    finally:
        processes.stop_all(started)
    return json.loads(result.read_text())


ANSWERED = re.compile(r"training round (\d+): answered in ([0-9.]+) s")


def fedtab_deployment(folder: Path, *, rounds: int) -> dict:
    port = processes.free_port()
    schema = Path(heart_site_path("cleveland")).parent / "heart_schema.json"
    folder.mkdir(parents=True)
    (folder / "consortium.toml").write_text(
        f'seed = 0\nschema = "{schema}"\n[model]\nname = "ctgan"\n[privacy]\nepsilon = 1.0\n'
        f'[training]\nrounds = {rounds}\n' + "".join(f"[sites.{s}]\n" for s in SITES))
    for s in SITES:
        (folder / f"{s}.toml").write_text(
            f'name = "{s}"\nsource = "{heart_site_path(s)}"\nsuperlink = "127.0.0.1:{port}"\n'
            f'state_dir = "state-{s}"\n[tls]\ninsecure = true\n')
    started = []
    env = {"FLWR_HOME": str(folder / "flwr-home")}
    try:
        started.append(processes.start([*FEDTAB, "coordinator", "consortium.toml", "-o", "model.fedtab", "--port",
                                        str(port), "--insecure"], folder / "coordinator.log", cwd=folder, env=env))
        started += [processes.start([*FEDTAB, "site", "--config", f"{s}.toml"], folder / f"site-{s}.log",
                                    cwd=folder, env=env) for s in SITES]
        if started[0].wait(timeout=1800) != 0:
            raise RuntimeError((folder / "coordinator.log").read_text()[-2000:])
    finally:
        processes.stop_all(started)
    status = json.loads((folder / ".model.fedtab.run" / "status.json").read_text())
    compute: dict[int, list[float]] = {}
    for s in SITES:
        for r, sec in ANSWERED.findall((folder / f"site-{s}.log").read_text()):
            compute.setdefault(int(r), []).append(float(sec))
    rows = []
    for r in status["rounds"]:
        slowest = max(compute.get(r["round"], [0.0]))
        rows.append({"round": r["round"], "seconds": r["seconds"], "compute_slowest_site": slowest,
                     "overhead": r["seconds"] - slowest})
    return {"rounds": rows, "federation_seconds": status.get("seconds")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_deploy_overhead.json"))
    args = ap.parse_args()
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stock = flower_alone(tmp / "stock", fedtab_settings=False)
        load.append(os.getloadavg()[0])
        tuned = flower_alone(tmp / "tuned", fedtab_settings=True)
        load.append(os.getloadavg()[0])
        pinned = flower_alone(tmp / "executor", fedtab_settings=True, executor=True)
        load.append(os.getloadavg()[0])
        deployed = fedtab_deployment(tmp / "fedtab", rounds=args.rounds)
        load.append(os.getloadavg()[0])
    over = [r["overhead"] for r in deployed["rounds"]]
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
           "cpus": os.cpu_count(), "load_1min": load, "sites": len(SITES),
           "flower_alone_stock_round_seconds": stock, "flower_alone_fedtab_settings_round_seconds": tuned,
           "flower_alone_fedtab_executor_round_seconds": pinned, "echo_payload_bytes": 4 * 115000,
           "fedtab": deployed,
           "summary": {"flower_alone_stock_median": statistics.median(stock),
                       "flower_alone_fedtab_settings_median": statistics.median(tuned),
                       "flower_alone_fedtab_executor_median": statistics.median(pinned),
                       "fedtab_overhead_median": statistics.median(over), "fedtab_overhead_max": max(over)}}
    atomic_write_text(Path(args.out), json.dumps(out, indent=2))
    print(f"3 sites on loopback, {os.cpu_count()} CPUs, load {', '.join(f'{x:.1f}' for x in load)}")
    print(f"{'what':58s} {'median s':>9s} {'min':>6s} {'max':>6s}")
    for name, xs in (("Flower alone, stock (process per message, 3 s polls)", stock),
                     ("Flower alone, fedtab's SuperNode settings + 0.1 s pulls", tuned),
                     ("Flower alone, those + fedtab's long-lived executor", pinned)):
        print(f"{name:58s} {statistics.median(xs):9.2f} {min(xs):6.2f} {max(xs):6.2f}")
    print(f"{'fedtab round':10s} {'seconds':>8s} {'compute':>8s} {'overhead':>9s}")
    for r in deployed["rounds"]:
        print(f"{r['round']:<10d} {r['seconds']:8.2f} {r['compute_slowest_site']:8.2f} {r['overhead']:9.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Child processes of ``fedtab coordinator`` / ``fedtab site``: started in their own process group,
stopped by that group's id (SIGTERM, then SIGKILL), never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from fedtab.errors import FederationError

DEPLOY_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], log: Path, *, env: dict | None = None, own_group: bool = True,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` with output to ``log``. ``own_group=False`` keeps it in the caller's process group,
    so that killing the caller's group (kill -9 of a whole ``fedtab site``) takes it down too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=own_group, cwd=cwd,
                                env={**os.environ, **DEPLOY_ENV, **(env or {})})


def stop(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop ``proc``: its whole process group when it leads one, otherwise the process itself
    (Flower's own helpers watch their parent's pid and exit with it)."""
    if proc.poll() is None and os.getpgid(proc.pid) != proc.pid:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.poll()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # children of the group may outlive the leader briefly
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.1)
            if not _group_alive(pgid):
                return
        except subprocess.TimeoutExpired:
            continue


def descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (children, their children, ...), read from /proc. Flower's
    SuperLink and SuperNode start helpers (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``),
    some in sessions of their own: stopping the parent alone left them running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command may hold spaces or ')'
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def stop_tree(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (``descendants``, listed before anything is stopped):
    SIGTERM to all, then SIGKILL to what is left after ``grace`` seconds. Each by its id."""
    below = descendants(proc.pid) if proc.poll() is None else []
    for pid in below:
        _signal(pid, signal.SIGTERM)
    stop(proc, grace=grace)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in below):
        time.sleep(0.1)
    for pid in below:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


class Family:
    """The processes below some started ones, noted while they run (``note``): a terminal's Ctrl-C may
    end a parent before its helpers, which then belong to no one. ``stop`` ends every noted process
    still running, each by its id and only if it is the same process (its start time matches)."""

    def __init__(self):
        self._seen: dict[int, str] = {}

    def note(self, procs) -> None:
        for proc in procs:
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    self._seen.setdefault(pid, _start_time(pid))

    def running(self) -> list[int]:
        return [pid for pid, started in self._seen.items() if _alive(pid) and _start_time(pid) == started]

    def stop(self, *, grace: float = 10.0) -> None:
        left = self.running()
        for pid in left:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.running():
            time.sleep(0.1)
        for pid in self.running():
            _signal(pid, signal.SIGKILL)


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time since boot
    except (OSError, IndexError):
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for_port(address: str, proc: subprocess.Popen, log: Path, *, timeout: float = 120.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"{Path(log).name}: the process exited with {proc.returncode}:\n{tail(log)}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.3)
    raise FederationError(f"nothing listens on {address} after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_all(procs: list[subprocess.Popen], *, grace: float = 15.0) -> None:
    """Stop several process-group leaders at once: SIGTERM to every group, then SIGKILL what is left."""
    groups = []
    for proc in procs:
        try:
            groups.append((proc, os.getpgid(proc.pid)))
            os.killpg(groups[-1][1], signal.SIGTERM)
        except ProcessLookupError:
            proc.poll()
    deadline = time.monotonic() + grace
    for proc, pgid in groups:
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

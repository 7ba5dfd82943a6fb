"""The long-lived site service: one institution's ``SiteWorker`` with persistent, replay-safe state.

Why a service: Flower 1.42 runs every message in a fresh ``flwr-clientapp`` process. The service
keeps torch, the site's table and its encoded rows in memory, and the ClientApp only forwards each
request to it over a local Unix socket (``fedtab.deploy.ipc``).

Persistence (the site's privacy ledger must outlive any restart, of the site or of the coordinator):

- the state (agreed job, schema, ledger, training setup) lives in a site-local state file, written
  atomically *before* the reply leaves the service: a release the ledger does not hold never leaves;
- every data-dependent reply (``encode``, ``train``) is kept in a replay cache keyed by the SHA-256
  of its request. The same request again (a coordinator resumed from its checkpoint re-sends the
  round it was in) gets the recorded reply back: re-releasing the same output costs no budget, and
  the result is the one an uninterrupted run would have had. A *different* request for a round the
  ledger already holds is refused, so no coordinator can make a site spend a round twice;
- the ledger itself is the site's lasting book (``state_dir/ledger.jsonl``, append-only, fsync-ed
  before a reply leaves): every job the site ever served adds up against its ``max_total_epsilon``;
  a ``schema`` request for the same job (same seed, budget, holdout) continues that job.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from fedtab.errors import FederationError
from fedtab.federation import secure_updates
from fedtab.federation.flower_app import END, HELLO
from fedtab.federation.site import ENCODE, EVALUATE, LEDGER, MEASURE, SCHEMA, SETUP, TRAIN, SiteWorker
from fedtab.federation.training import TRAINING_PHASE
from fedtab.federation.transport import error_reply
from fedtab.federation.wire import pack
from fedtab.privacy.book import job_key
from fedtab.deploy import ipc
from fedtab.deploy.state_files import load_state, save_state

STATE_FORMAT = "fedtab.site-state/1"
REPLAYED = (ENCODE, TRAIN, MEASURE)
# What a repeated ``schema`` request of the same job keeps: the replies it released, its row estimate, its
# securely summed histogram release and whether it screened it, and what the marginal model's measurements
# fixed (their noise scale, the model's setup for its identity).
KEPT = ("replies", "rows_checked", "rows_estimate", "histogram_release", "screened", "mst_z", "mst_plan_select",
        "mst_again", "training")


def request_key(kind: str, body: Any) -> str:
    p = pack(body)
    h = hashlib.sha256(kind.encode() + b"\0" + p.json.encode())
    for name in sorted(p.arrays):
        a = p.arrays[name]
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _rounds_in_ledger(worker: SiteWorker, state: dict) -> set[int]:
    prefix = f"{TRAINING_PHASE}/round "
    book = worker.book(state)
    if "job_key" not in state or not book.admitted(state["job_key"]):
        return set()
    entries = book.ledger(state["job_key"]).entries
    return {int(e.phase[len(prefix):]) for e in entries if e.phase.startswith(prefix)}


def describe(kind: str, body: Any) -> str:
    """What a request is, in the operator's words (``fedtab site`` prints one line per request)."""
    if kind == TRAIN and body.get("show"):
        return (f"training round {int(body.get('round', 0)) + 1}: its secure sum failed its screen; the failure "
                "checked here against the sites' commitments, this round's mask key (the coordinator opens this "
                "site's update of the round, a DP release already on its ledger)")
    if kind == TRAIN:
        return f"training round {int(body.get('round', 0)) + 1}"
    if kind in (ENCODE, MEASURE):
        what = "federated encoding" if kind == ENCODE else "marginal measurements"
        return f"{what} ({body.get('phase', '?')})"
    return {SCHEMA: "schema agreement", SETUP: "training setup", LEDGER: "the job's final model (ledger closed)",
            EVALUATE: "evaluation (the table drawn here, every check decided here)"}.get(kind, f"request '{kind}'")


class SiteService:
    """Handles requests for one site; ``state_path`` is the site-local state file. ``on_request(text)``
    hears of each request served (what it was, how long, refused or not); ``on_end()`` is called when the
    coordinator says the job is over."""

    def __init__(self, worker: SiteWorker, state_path: str | os.PathLike, *, on_request=None, on_end=None):
        self.worker = worker
        self.state_path = Path(state_path)
        self.state: dict = load_state(self.state_path, fmt=STATE_FORMAT) or {}
        self.on_request = on_request
        self.on_end = on_end

    def handle(self, kind: str, body: Any) -> Any:
        if kind == HELLO:
            self._tell("connected to the coordinator")
            return {"site": self.worker.name}
        if kind == END:
            self._tell("the coordinator says the job is over")
            if self.on_end is not None:
                self.on_end()
            return {"site": self.worker.name}
        t0 = time.perf_counter()
        try:
            reply = self._handle(kind, body)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the coordinator, by class
            self._tell(f"{describe(kind, body)}: refused ({type(e).__name__}; the details are in the site log)")
            return error_reply(e, site=self.worker.name)
        self._tell(f"{describe(kind, body)}: answered in {time.perf_counter() - t0:.1f} s")
        return reply

    def _tell(self, text: str) -> None:
        if self.on_request is not None:
            self.on_request(text)

    def _handle(self, kind: str, body: Any) -> Any:
        work = dict(self.state)  # the worker replaces top-level keys; commit only on success
        if kind == SCHEMA:
            key = job_key(body["job"])
            kept = {k: work[k] for k in KEPT if k in work} if work.get("job_key") == key else {}
            # A site without a ledger directory keeps its book in this state: it outlives every job.
            work = {"book": work["book"]} if "book" in work else {}
            reply = self.worker(kind, body, work)
            work.update(kept)
        elif kind in REPLAYED:
            key = request_key(kind, body)
            replies = dict(work.get("replies", {}))
            if key in replies:
                return replies[key]["reply"]
            # A recorded update is masked again, unspent; a failed sum's key request (``show``) trains nothing.
            if (kind == TRAIN and not body.get("show")
                    and int(body["round"]) + 1 in _rounds_in_ledger(self.worker, work)
                    and secure_updates.recorded(body, work) is None):
                raise FederationError(
                    f"site '{self.worker.name}' already trained round {int(body['round']) + 1} of this job on "
                    "another global model; refusing to spend its budget on that round twice", public=True)
            reply = self.worker(kind, body, work)
            if kind == TRAIN:  # keep only the latest round's update (a resume re-sends at most that one)
                replies = {k: v for k, v in replies.items() if v["kind"] != TRAIN}
            replies[key] = {"kind": kind, "reply": reply}
            work["replies"] = replies
        else:
            reply = self.worker(kind, body, work)
        save_state(self.state_path, work, fmt=STATE_FORMAT)  # persisted before anything is released
        self.state = work
        return reply


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        service = self.server.service  # type: ignore[attr-defined]
        try:
            kind, body = ipc.decode_frame(ipc.read_frame(self.request))
        except Exception as e:  # noqa: BLE001 - an oversized or malformed frame: refused (its body unread), logged
            error = e if isinstance(e, FederationError) else FederationError(f"malformed site message ({e!r})")
            try:
                self.request.sendall(ipc.encode_frame("error", error_reply(error, site=service.worker.name)))
            except OSError:
                pass  # the sender went away
            return
        reply = service.handle(kind, body)
        self.request.sendall(ipc.encode_frame(kind, reply))


def serve(service: SiteService, socket_path: str | os.PathLike, *, ready=None,
          stop: threading.Event | None = None) -> None:
    """Serve requests one at a time until ``stop`` is set (returns) or SIGTERM/SIGINT (raises
    KeyboardInterrupt once the socket is removed). ``ready()`` is called once listening."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
            probe.close()
            raise FederationError(f"another site service is already listening on {path}")
        except OSError:
            path.unlink()  # a stale socket left by a killed service
    old = os.umask(0o177)  # the socket is for this user only
    try:
        server = socketserver.UnixStreamServer(str(path), _Handler)
    finally:
        os.umask(old)
    server.service = service  # type: ignore[attr-defined]

    stopped: list[bool] = []

    def stop_on_signal(signum, frame):  # noqa: ARG001
        if not stopped:  # once: a SIGTERM while the process winds down (its children stopping) is not an error
            stopped.append(True)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), server.shutdown()), daemon=True).start()
    try:
        if ready is not None:
            ready()
        server.serve_forever(poll_interval=0.2)
    finally:
        stopped.append(True)
        server.server_close()
        path.unlink(missing_ok=True)

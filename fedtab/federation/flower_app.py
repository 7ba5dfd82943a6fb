"""Flower transport: the same coordinator and site code, carried by Flower's Message API.

- Site side: ``make_client_app(worker_for)`` builds a ``ClientApp`` whose handlers unpack the body,
  restore the site's persistent state from ``context.state`` (so it survives across messages even
  when Flower starts a fresh ClientApp process per message), call ``SiteWorker.handle`` and reply.
- Coordinator side: ``FlowerTransport(grid)`` implements ``Transport`` over a ``Grid``: it learns
  which node is which site with a ``hello`` query, then sends one message per site and waits.
- ``run_flower_simulation`` runs a coordinator function inside a ``ServerApp`` on Flower's simulation
  engine (Ray) and returns its result.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fedtab.errors import FederationError
from fedtab.federation.transport import ERROR_KEY, UNAVAILABLE_KEY, error_reply, raise_if_error, unavailable
from fedtab.federation.wire import Packed, pack, unpack

# Wire keys (named once, used on both sides).
BODY = "fedtab.body"  # ConfigRecord: {"json": <packed json>, "kind": <request kind>}
ARRAYS = "fedtab.arrays"  # ArrayRecord: packed arrays
STATE_BODY = "fedtab.state"
STATE_ARRAYS = "fedtab.state.arrays"
HELLO = "hello"
END = "end"  # the job is over: a deployed site stops after answering (fedtab.deploy.runner.run_site)
NODE_SITE_KEY = "site-name"  # node config: the site's name (deployment)
NODE_PARTITION_KEY = "partition-id"  # node config: set by Flower's simulation engine
FLOWER_ERROR_PREFIX = "Flower error: "

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def to_records(kind: str, body: Any):
    """A fedtab request or reply as a Flower ``RecordDict`` (JSON body + arrays)."""
    return _to_records(kind, body)


def from_records(rd) -> tuple[str, Any]:
    """(kind, body) of a fedtab message's ``RecordDict``."""
    return _from_records(rd)


def _message_type(kind: str) -> str:
    # Flower routes by category: train / evaluate / query. The fedtab kind travels in the body.
    return {"train": "train", "evaluate": "evaluate"}.get(kind, "query")


INDEX = "arrays"  # in BODY: [[name, dtype, shape], ...] of the arrays laid end to end in one blob
BLOB = "blob"


def _to_records(kind: str, body: Any):
    """One blob for every array of the message: Flower stores, pushes and pulls each Array as an object of
    its own (one HTTP call per object at every hop), and a model is dozens of arrays."""
    import json

    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    p = pack(body)
    rd = RecordDict()
    index = [[k, a.dtype.str, list(a.shape)] for k, a in p.arrays.items()]
    rd[BODY] = ConfigRecord({"json": p.json, "kind": kind, INDEX: json.dumps(index)})
    blob = np.frombuffer(b"".join(a.tobytes() for a in p.arrays.values()), dtype=np.uint8)
    rd[ARRAYS] = ArrayRecord(array_dict={BLOB: Array(blob)} if index else {})
    return rd


def _unblob(index_json: str, arr) -> dict:
    import json

    import numpy as np

    try:
        index = json.loads(index_json)
        blob = arr[BLOB].numpy() if index else np.zeros(0, np.uint8)
        out, at = {}, 0
        for name, dtype, shape in index:
            dt = np.dtype(str(dtype))
            if dt.hasobject:
                raise ValueError("object arrays are not sent between sites")
            n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            if at + n > blob.size:
                raise ValueError("the arrays overrun the blob")
            out[str(name)] = np.frombuffer(blob[at:at + n], dtype=dt).reshape([int(x) for x in shape]).copy()
            at += n
        if at != blob.size:
            raise ValueError("the blob is longer than its arrays")
        return out
    except (ValueError, TypeError, KeyError) as e:
        raise FederationError(f"malformed Flower message: its arrays do not match their index ({e})") from None


def _from_records(rd) -> tuple[str, Any]:
    cfg = rd.config_records.get(BODY) if hasattr(rd, "config_records") else rd[BODY]
    arr = rd.array_records.get(ARRAYS) if hasattr(rd, "array_records") else rd[ARRAYS]
    if cfg is None:
        raise FederationError("malformed Flower message: no fedtab body (is this a fedtab coordinator?)")
    if INDEX in cfg:
        arrays = _unblob(str(cfg[INDEX]), arr or {})
    else:  # one Array per array (fedtab before the blob)
        arrays = {k: v.numpy() for k, v in (arr or {}).items()}
    return str(cfg["kind"]), unpack(Packed(json=str(cfg["json"]), arrays=arrays))


def _load_state(context) -> dict:
    st = context.state
    if STATE_BODY not in st:
        return {}
    arrays = {k: v.numpy() for k, v in st[STATE_ARRAYS].items()} if STATE_ARRAYS in st else {}
    return unpack(Packed(json=str(st[STATE_BODY]["json"]), arrays=arrays))


def _save_state(context, state: dict) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord

    p = pack(state)
    context.state[STATE_BODY] = ConfigRecord({"json": p.json})
    context.state[STATE_ARRAYS] = ArrayRecord(array_dict={k: Array(v) for k, v in p.arrays.items()})


def site_name_of(context) -> str:
    cfg = context.node_config
    if NODE_SITE_KEY in cfg:
        return str(cfg[NODE_SITE_KEY])
    if NODE_PARTITION_KEY in cfg:
        return f"partition-{int(cfg[NODE_PARTITION_KEY])}"
    raise FederationError(f"this SuperNode has no '{NODE_SITE_KEY}' in its --node-config")


def make_client_app(worker_for: Callable[[Any], tuple[str, Callable[[str, Any, dict], Any]]]):
    """A ClientApp that serves fedtab requests. ``worker_for(context) -> (site name, handle)``."""
    from flwr.app import Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def serve(msg, context):
        site, handle = worker_for(context)
        kind, body = _from_records(msg.content)
        if kind == HELLO:
            reply: Any = {"site": site}
        else:
            state = _load_state(context)
            try:
                reply = handle(kind, body, state)
                _save_state(context, state)
            except Exception as e:  # noqa: BLE001 - every failure goes back to the coordinator, by class
                reply = error_reply(e, site=site)
        return Message(content=_to_records(kind, reply), reply_to=msg)

    app.train()(serve)
    app.evaluate()(serve)
    app.query()(serve)
    return app


REPLY_POLL = 0.1  # seconds between the ServerApp's pulls of replies (a local call to its SuperLink)


def _flower_error(reason: str) -> tuple[str, Any]:
    return ("error", {ERROR_KEY: {"class": "FederationError", "code": 9, "columns": [],
                                  "message": f"{FLOWER_ERROR_PREFIX}{reason}", UNAVAILABLE_KEY: True}})


def admit_sites(replies: Mapping[int, tuple[str, Any]], names_by_node: Mapping[int, str] | None
                ) -> tuple[dict[str, int], list[str]]:
    """(site name -> node id, reasons for each node refused) from the nodes' HELLO replies. Pure.

    With ``names_by_node`` (node id -> the site whose registered public key that node authenticated
    with), a node's name is its key's: one that states another name is an impostor (or a site holding
    the wrong key), one whose key no site names is unknown; both are refused. Without it, the stated
    names count, and a name stated by several nodes is refused for all of them."""
    from collections import Counter

    stated: dict[int, str] = {}
    refused: list[str] = []
    for nid, (_, body) in sorted(replies.items()):
        if isinstance(body, dict) and ERROR_KEY in body:
            refused.append(f"node {nid} did not answer: {body[ERROR_KEY].get('message', '')}")
        elif isinstance(body, dict) and "site" in body:
            stated[nid] = str(body["site"])
    nodes: dict[str, int] = {}
    if names_by_node is not None:
        for nid, name in stated.items():
            bound = names_by_node.get(nid)
            if bound is None:
                refused.append(f"a SuperNode (node {nid}) calls itself '{name}', but its key is none of the keys the "
                               "consortium configuration binds to its sites: refused")
            elif bound != name:
                refused.append(f"the SuperNode holding {bound}'s registered key calls itself '{name}': refused (an "
                               f"impostor, or {bound}'s key at the wrong site); '{name}' is admitted only with its "
                               "own key")
            else:
                nodes[name] = nid
    else:
        counts = Counter(stated.values())
        for nid, name in stated.items():
            if counts[name] > 1:
                refused.append(f"{counts[name]} SuperNodes call themselves '{name}' (node {nid} among them): none is "
                               f"admitted; bind each name to its key ([sites.{name}] public_key)")
            else:
                nodes[name] = nid
    return dict(sorted(nodes.items())), refused


class FlowerTransport:
    """``Transport`` over a Flower ``Grid`` (inside a ServerApp)."""

    def __init__(self, grid, *, expected_sites: int | None = None, timeout: float | None = None,
                 min_sites: int | None = None, join_timeout: float | None = None,
                 on_wait: Callable[[int, int], None] | None = None,
                 names_by_node: Mapping[int, str] | None = None):
        """Waits for ``expected_sites`` SuperNodes (``on_wait(connected, expected)`` whenever the count
        changes); after ``join_timeout`` seconds (default: ``timeout``, else 120) it goes on with those
        connected when they are at least ``min_sites``, else raises.

        ``names_by_node``: the site name bound to each registered node id (the consortium's public key
        of that name, registered at the SuperLink, which authenticates the node that replies). A node's
        name is then that binding; a node that calls itself by another name, or whose key no site
        names, is refused (``refused``). Without it (no keys), a name several nodes claim is refused."""
        self._grid = grid
        self._timeout = timeout
        self._round = 0
        self._min_sites = min_sites
        node_ids = self._wait_for_nodes(expected_sites, join_timeout or timeout or 120.0, on_wait)
        replies = self._send({nid: (HELLO, {}) for nid in node_ids})
        self._nodes, self.refused = admit_sites(replies, names_by_node)

    def _wait_for_nodes(self, expected: int | None, join_timeout: float, on_wait) -> list[int]:
        import time

        deadline = time.monotonic() + join_timeout
        seen = -1
        while True:
            ids = sorted(self._grid.get_node_ids())
            if on_wait is not None and expected is not None and len(ids) != seen:
                on_wait(len(ids), expected)
            seen = len(ids)
            if expected is None or len(ids) >= expected:
                return ids
            if time.monotonic() > deadline:
                enough = self._min_sites if self._min_sites is not None else expected
                if ids and len(ids) >= enough:
                    return ids
                raise FederationError(f"only {len(ids)} of {expected} sites connected in {join_timeout:.0f} s, and "
                                      f"at least {enough} must take part ('training.min_sites'); start the missing "
                                      "sites ('fedtab site --config SITE.toml'), or wait longer (--wait-for-sites)")
            time.sleep(0.5)

    @property
    def sites(self) -> list[str]:
        return list(self._nodes)

    def _send(self, per_node: Mapping[int, tuple[str, Any]], *, timeout: float | None = None
              ) -> dict[int, tuple[str, Any]]:
        """Push one message per node, then pull the replies every ``REPLY_POLL`` seconds (Flower's
        ``send_and_receive`` waits 3 s between pulls) until all are in or the timeout passes. A reply is
        the node's it answers (by message id): the SuperLink's own error replies (a node gone offline)
        come from the SuperLink's id, and a reply from any other node than the one asked is not taken."""
        import time

        from flwr.app import Message

        self._round += 1
        nodes = list(per_node)
        msgs = [Message(content=_to_records(kind, body), dst_node_id=nid,
                        message_type=_message_type(kind), group_id=str(self._round))
                for nid, (kind, body) in per_node.items()]
        out: dict[int, tuple[str, Any]] = {}
        pending: dict[str, int] = {}
        for nid, mid in zip(nodes, self._grid.push_messages(msgs)):
            if mid:
                pending[str(mid)] = nid
            else:
                out[nid] = _flower_error("the SuperLink did not take the message")
        limit = self._timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        while pending:
            for rep in self._grid.pull_messages(list(pending)):
                nid = pending.pop(rep.metadata.reply_to_message_id, None)
                if nid is None:
                    continue
                if rep.has_error():
                    out[nid] = _flower_error(rep.error.reason)
                elif rep.metadata.src_node_id != nid:
                    out[nid] = _flower_error(f"a reply came from node {rep.metadata.src_node_id}, not the one asked")
                else:
                    out[nid] = _from_records(rep.content)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(REPLY_POLL)
        return out

    def request(self, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [s for s in bodies if s not in self._nodes]
        if unknown:
            from fedtab.federation.agreement import name_sites

            raise FederationError(f"unknown {name_sites(unknown)}; connected: {name_sites(self.sites)}")
        raw = self.outcomes(kind, bodies)
        missing = [s for s in bodies if s not in raw]
        if missing:
            from fedtab.federation.transport import no_reply_error

            raise no_reply_error(kind, missing)
        return {s: raise_if_error(s, raw[s]) for s in sorted(raw)}

    def outcomes(self, kind: str, bodies: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """The reply body of each site that answered, error replies included (``unavailable``: its
        service is down, or Flower could not deliver the message). A site not connected (it never joined
        this run, e.g. one lost before a ``--resume``) does not answer."""
        known = {self._nodes[s]: (kind, b) for s, b in bodies.items() if s in self._nodes}
        if not known:
            return {}
        replies = self._send(known, timeout=timeout)
        by_node = {nid: s for s, nid in self._nodes.items()}
        return {by_node[nid]: body for nid, (_, body) in sorted(replies.items())}

    def end(self, *, timeout: float = 30.0) -> list[str]:
        """Tell every site the job is over (a deployed site then stops); the sites that acknowledged."""
        return sorted(s for s, body in self.outcomes(END, {s: {} for s in self._nodes}, timeout=timeout).items()
                      if not (isinstance(body, dict) and ERROR_KEY in body))

    def request_available(self, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
        """Like ``request``, but a site that did not answer (timed out, disconnected, or whose site
        service is down) is left out of the replies instead of failing the whole request. Errors a
        site raised itself (a refused budget, bad data) are still raised."""
        return {s: raise_if_error(s, body) for s, body in self.outcomes(kind, bodies).items() if not unavailable(body)}

    def close(self) -> None:
        pass




def run_flower_simulation(
    coordinator: Callable[[FlowerTransport], Any],
    workers: Mapping[str, Callable[[], Callable[[str, Any, dict], Any]]],
    *,
    cpus_per_site: float | None = None,
) -> Any:
    """Run ``coordinator(transport)`` on Flower's simulation engine with one SuperNode per site.

    ``workers`` maps site names (in partition order) to factories of site handlers; factories are
    shipped to Flower's worker processes, so they must be importable functions / partials.
    ``cpus_per_site`` defaults to every CPU: one worker process serves every site in turn. Secure
    aggregation's per-job keys live in a site's memory only (``secagg.SiteSession``: never stored), so
    all of a site's messages must reach the same process; with a worker per CPU, Flower handed a site's
    training round to a process that never saw its key round.
    """
    if cpus_per_site is None:
        cpus_per_site = float(os.cpu_count() or 1)
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    names = list(workers)
    factories = [workers[n] for n in names]
    result: dict[str, Any] = {}

    def worker_for(context):
        pid = int(context.node_config[NODE_PARTITION_KEY])
        return names[pid], _cached_handler(names[pid], factories[pid])

    server = ServerApp()

    @server.main()
    def main(grid, context):  # noqa: ARG001 - Flower's signature
        try:
            result["value"] = coordinator(FlowerTransport(grid, expected_sites=len(names)))
        except BaseException as e:  # handed back to the caller's thread below
            result["error"] = e

    run_simulation(
        server_app=server,
        client_app=make_client_app(worker_for),
        num_supernodes=len(names),
        backend_config={"client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
                        "init_args": {"log_to_driver": False, "include_dashboard": False}},
    )
    if "error" in result:
        raise result["error"]
    if "value" not in result:
        raise FederationError("the Flower simulation ended without a result (see Flower's log above)")
    return result["value"]


_HANDLERS: dict[str, Callable] = {}
_LOCK = threading.Lock()


def _cached_handler(name: str, factory: Callable[[], Callable]) -> Callable:
    # Flower reuses worker processes; building a site's handler (loading its table) once per process
    # keeps per-message overhead low. Persistent *state* still lives in context.state.
    with _LOCK:
        if name not in _HANDLERS:
            _HANDLERS[name] = factory()
        return _HANDLERS[name]

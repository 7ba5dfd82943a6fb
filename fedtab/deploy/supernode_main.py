"""``python -m fedtab.deploy.supernode_main ARGS``: Flower 1.42's ``flower-supernode ARGS`` with shorter waits.

Two of the SuperNode's waits are constants in Flower 1.42, not options, and they set how fast a
deployment goes:

- it asks the SuperLink for a message every 3 s when it has none, and checks every 0.5 s whether its
  ClientApp has replied: a round pays up to 3.5 s of waiting per message. Here both waits are
  ``POLL`` seconds (a request on an idle connection; the SuperLink answers at once);
- it tells the SuperLink to hold it alive for 30 s between heartbeats (sent every ~20 s), and the
  SuperLink marks a node offline only after two such intervals: a site killed mid-round was noticed
  after about a minute. Here the interval is ``--fedtab-heartbeat`` seconds (default
  ``HEARTBEAT_INTERVAL``), with one heartbeat every ~``(interval - HEARTBEAT_CALL_TIMEOUT) * 0.8`` s
  (0.7-0.9 s at 2 s): the SuperLink answers a dead site's pending messages with "node unavailable" at
  most twice the interval after its last heartbeat (4 s; tests/test_deploy_integrity_e2e.py prints how
  long after the kill the round that waited for the dead site ended: 4.5-4.9 s here, 10.0-10.3 s at 5 s). The call itself keeps Flower's 5 s timeout (a slow
  answer under load is not a failure); a failed heartbeat is retried within a second. A stock Flower 1.42 SuperLink refuses intervals under 10 s
  (``HEARTBEAT_MIN_INTERVAL``; the SuperNode exits with "[code: 2003] Invalid heartbeat interval"):
  ``fedtab site`` then starts it again with ``STOCK_MIN_HEARTBEAT``; the SuperLink ``fedtab
  coordinator`` starts accepts ``superlink_main.MIN_HEARTBEAT``.

- when it pulls a message's objects before the sender has pushed them all (it learns of a message
  as soon as its header is stored), Flower waits 1 s before the first retry, doubling up to 10 s:
  here the retries start at ``PULL_BACKOFF`` seconds and stay under ``PULL_BACKOFF_CAP``
  (``quick_pull_objects``; fedtab's executor and ServerApp pull the same way).

Everything else is Flower's own code, unchanged (``flwr.supernode.cli:flower_supernode``). The names
patched are checked when this starts: a Flower release that moved them fails loudly here.
"""

from __future__ import annotations

import sys
import time as _time
import types

POLL = 0.2
PULL_BACKOFF = 0.05
PULL_BACKOFF_CAP = 0.25
HEARTBEAT_INTERVAL = 2.0
STOCK_MIN_HEARTBEAT = 10.0  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL in 1.42
HEARTBEAT_OPTION = "--fedtab-heartbeat"
HEARTBEAT_CALL_TIMEOUT = 1.0


def quick_pull_objects(*, stall: float | None = None):
    """Flower's ``pull_objects`` with short retries (objects not pushed yet are asked for again soon).
    ``stall``: give the message up once none of its objects has arrived for that many seconds (its sender
    stopped pushing: it died mid-message); Flower itself waits up to 2 h, and meanwhile the caller waits."""
    import threading
    import time

    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError, pull_objects

    def pull(object_ids, pull_object_fn, **kwargs):
        last = [time.monotonic()]
        lock = threading.Lock()

        def pull_one(object_id):
            try:
                content = pull_object_fn(object_id)
            except ObjectUnavailableError:
                with lock:
                    stalled = stall is not None and time.monotonic() - last[0] > stall
                if stalled:
                    raise ObjectPullError(object_id, f"no object of this message arrived for {stall:.0f} s; its "
                                                     "sender stopped sending") from None
                raise
            with lock:
                last[0] = time.monotonic()
            return content

        kwargs.setdefault("initial_backoff", PULL_BACKOFF)
        kwargs.setdefault("backoff_cap", PULL_BACKOFF_CAP)
        return pull_objects(object_ids, pull_one, **kwargs)

    return pull


def patch_pulls(module, *, stall: float | None = None) -> None:
    """Make ``module``'s own ``pull_objects`` (a name it imported from Flower) retry quickly."""
    if not hasattr(module, "pull_objects"):
        raise SystemExit(f"fedtab: {module.__name__}.pull_objects is gone in this Flower release; fedtab's "
                         "settings for it need updating")
    module.pull_objects = quick_pull_objects(stall=stall)


def _patch(heartbeat_interval: float = HEARTBEAT_INTERVAL) -> None:
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as fleet
    import flwr.supernode.start_client_internal as node

    patch_pulls(node)
    for module, name in ((heartbeat, "HEARTBEAT_DEFAULT_INTERVAL"), (heartbeat, "HEARTBEAT_CALL_TIMEOUT"),
                         (fleet, "HEARTBEAT_DEFAULT_INTERVAL"), (node, "time")):
        if not hasattr(module, name):
            raise SystemExit(f"fedtab: {module.__name__}.{name} is gone in this Flower release; fedtab's SuperNode "
                             "settings need updating (run plain flower-supernode meanwhile)")
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = fleet.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval
    heartbeat.HEARTBEAT_CALL_TIMEOUT = HEARTBEAT_CALL_TIMEOUT
    quick = types.SimpleNamespace(**{k: getattr(_time, k) for k in dir(_time) if not k.startswith("__")})
    quick.sleep = lambda seconds: _time.sleep(min(float(seconds), POLL))  # only this module's waits
    node.time = quick


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    interval = HEARTBEAT_INTERVAL
    if HEARTBEAT_OPTION in args:  # fedtab's own option, not Flower's
        at = args.index(HEARTBEAT_OPTION)
        interval = float(args[at + 1])
        del args[at:at + 2]
    _patch(interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()

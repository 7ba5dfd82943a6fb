"""``python -m fedtab.deploy.superlink_main ARGS``: Flower 1.42's ``flower-superlink ARGS`` accepting
SuperNode heartbeat intervals down to ``MIN_HEARTBEAT`` seconds (Flower's floor is 10 s, so a site killed
mid-round is noticed at best 20 s after its last heartbeat). fedtab's SuperNodes ask for
``supernode_main.HEARTBEAT_INTERVAL``; everything else is Flower's own code, unchanged
(``flwr.superlink.cli:flower_superlink``). The name patched is checked when this starts.

Flower 1.42's offline rule (``LinkState.acknowledge_node_heartbeat``): each heartbeat holds the node
online until ``HEARTBEAT_PATIENCE`` (2) x its interval after it arrives; a message to a node past that
time is answered with "node unavailable" when the ServerApp pulls its replies. With a 2 s interval a dead
site is answered for at most 4 s after its last heartbeat, and a live one, sending a heartbeat every
0.7-0.9 s, is dropped only after about 4 s without one acknowledged (several in a row missed, each
failed one retried within a second): the slack a loaded machine needs."""

from __future__ import annotations

import sys

MIN_HEARTBEAT = 2.0


def _patch() -> None:
    import flwr.superlink.servicer.fleet.fleet_handlers as fleet

    if not hasattr(fleet, "HEARTBEAT_MIN_INTERVAL"):
        raise SystemExit("fedtab: flwr.superlink.servicer.fleet.fleet_handlers.HEARTBEAT_MIN_INTERVAL is gone in "
                         "this Flower release; fedtab's SuperLink settings need updating (run plain flower-superlink)")
    fleet.HEARTBEAT_MIN_INTERVAL = MIN_HEARTBEAT


def main(argv: list[str] | None = None) -> None:
    _patch()
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    flower_superlink()


if __name__ == "__main__":
    main()

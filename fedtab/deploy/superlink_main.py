"""``python -m fedtab.deploy.superlink_main ARGS``: Flower 1.42's ``flower-superlink ARGS`` accepting
SuperNode heartbeat intervals down to ``MIN_HEARTBEAT`` seconds (Flower's floor is 10 s, so a site killed
mid-round is noticed at best 20 s after its last heartbeat). fedtab's SuperNodes ask for
``supernode_main.HEARTBEAT_INTERVAL``; everything else is Flower's own code, unchanged
(``flwr.superlink.cli:flower_superlink``). The name patched is checked when this starts."""

from __future__ import annotations

import sys

MIN_HEARTBEAT = 5.0


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

"""The Flower app components that ``flwr run`` starts (``fedtab.deploy.runner.APP_PYPROJECT``).

- ``client_app``: runs in fedtab's executor at a site (``fedtab.deploy.executor``: the SuperNode runs
  no ClientApp of its own, so no bundle's code runs at a site). It imports no torch and reads no table: it forwards the request to the site service named by the SuperNode's
  ``--node-config site-socket=...`` and returns its reply.
- ``server_app``: runs in Flower's ``flwr-serverapp`` process next to the SuperLink. It reads the
  consortium config named in the run config, runs ``run_federation`` over ``FlowerTransport``,
  checkpoints after every round, and writes the model file and a status file.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedtab.errors import FederationError
from fedtab.federation.flower_app import UNAVAILABLE_KEY, from_records, to_records
from fedtab.federation.transport import ERROR_KEY, error_reply

SOCKET_KEY = "site-socket"  # node config: the site service's Unix socket
# Seconds without a new object of a reply before it is given up: a live site pushes a reply's objects one
# after the other right after its header (a gap of seconds would mean a starved machine); a little over
# the 4 s in which a dead site is declared offline (twice its 2 s heartbeat, ``superlink_main``).
REPLY_STALL = 5.0

client_app = ClientApp()


def _forward(msg, context):
    from fedtab.deploy.ipc import call_site

    kind, body = from_records(msg.content)
    path = context.node_config.get(SOCKET_KEY)
    try:
        if not path:
            raise FederationError(f"this SuperNode has no '{SOCKET_KEY}' in its --node-config", public=True)
        reply = call_site(str(path), kind, body)
    except (FederationError, OSError) as e:
        # The site service is down or unreachable: infrastructure, no data in the message.
        reply = error_reply(e if isinstance(e, FederationError) else FederationError(str(e), public=True))
        reply[ERROR_KEY][UNAVAILABLE_KEY] = True
    return Message(content=to_records(kind, reply), reply_to=msg)


client_app.train()(_forward)
client_app.evaluate()(_forward)
client_app.query()(_forward)

server_app = ServerApp()


@server_app.main()
def _main(grid, context) -> None:
    import flwr.superlink.grid.http_grid as http_grid

    from fedtab.deploy.server import run_server
    from fedtab.deploy.supernode_main import patch_pulls

    # A reply's objects are pulled with quick retries (supernode_main.py says why), and given up once none
    # has arrived for REPLY_STALL s: a site killed while it pushed its reply would otherwise hold every other
    # site's reply up to Flower's 2 h limit (Flower then answers for that reply alone with an error).
    patch_pulls(http_grid, stall=REPLY_STALL)
    cfg = context.run_config
    run_server(grid, config=str(cfg["fedtab-config"]), output=str(cfg["output"]), workdir=str(cfg["workdir"]),
               resume=bool(cfg["resume"]), round_timeout=float(cfg["round-timeout"]),
               attempt=str(cfg.get("attempt", "")), release_dir=str(cfg.get("release-dir", "")),
               policy=str(cfg.get("policy", "")), join_timeout=float(cfg.get("join-timeout", 0.0)))

"""Real multi-site deployment on Flower: ``fedtab coordinator`` and ``fedtab site``.

Processes (one machine each, in a real consortium)::

    coordinator host:  fedtab coordinator  ->  flower-superlink (+ Flower's ServerApp process
                       running ``fedtab.deploy.apps:server_app``: run_federation over FlowerTransport)
    each site host:    fedtab site         ->  site service (long-lived: holds torch, the table, the
                                               ledger; state file on local disk)
                                           ->  flower-supernode (--node-config site-name, site-socket)
                                               ClientApp ``fedtab.deploy.apps:client_app``: a thin
                                               forwarder to the site service over a local Unix socket

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message (its SuperExec has no warm
pool for ClientApps), so the ClientApp imports no torch and loads no table: it hands the request to
the site service that has both in memory. Everything that crosses an institution's boundary travels
over Flower (TLS, SuperNode authentication); the Unix socket never leaves the site's host.
"""

"""Real multi-site deployment on Flower: ``fedtab coordinator`` and ``fedtab site``.

Processes (one machine each, in a real consortium)::

    coordinator host:  fedtab coordinator  ->  flower-superlink (+ Flower's ServerApp process
                       running ``fedtab.deploy.apps:server_app``: run_federation over FlowerTransport)
    each site host:    fedtab site         ->  site service (long-lived: holds torch, the table, the
                                               ledger; state file on local disk)
                                           ->  flower-supernode (``supernode_main``: shorter waits;
                                               --isolation process: it runs no ClientApp itself)
                                           ->  fedtab's executor (``executor``, a thread): each task
                                               to the installed ClientApp ``fedtab.deploy.apps:client_app``,
                                               a thin forwarder to the site service over a local Unix
                                               socket; an app bundle that is not fedtab's is refused

Flower 1.42 would start a fresh ``flwr-clientapp`` process for every message and import whatever the
coordinator's app bundle names; fedtab's executor does neither. Everything that crosses an
institution's boundary travels over Flower (TLS, SuperNode authentication); the Unix socket never
leaves the site's host. The coordinator knows each site by the node its registered key became
(``runner.bind_nodes``), not by the name the site states.
"""

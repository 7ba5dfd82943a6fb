"""Transports carry coordinator requests to sites and replies back. Site and coordinator code is shared.

A transport only moves ``pack``-ed bodies (JSON + arrays) and keeps each site's persistent state;
what a site does with a request is ``SiteWorker.handle``. Two transports exist:

- ``InProcessTransport``: every site in this process (the embedded default: fast start);
- ``fedtab.federation.flower_app``: Flower ServerApp/ClientApp on the Message API (simulation or
  a real deployment).

Errors raised at a site travel back by class, exit code and the column names concerned, so the
coordinator raises the same fedtab error (a ``DataValidationError`` at site 'hungary' stays a
``DataValidationError``); the message travels only when the error is marked public. Values, counts
and row numbers stay in the site's log (``error_reply``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fedtab import errors
from fedtab.federation.training import torch_threads
from fedtab.federation.wire import pack, unpack

ERROR_KEY = "__error__"
UNAVAILABLE_KEY = "unavailable"  # in an error reply: the site could not serve (not: the site refused)
SITE_LOG = logging.getLogger("fedtab.site")
# Requests the in-process transport hands to several sites at once: training rounds (torch releases the
# GIL; the rest, pandas and evaluation libraries, gains little and was not written for threads).
PARALLEL_KINDS = frozenset({"train"})


class Transport(Protocol):
    """What the coordinator needs from a transport."""

    @property
    def sites(self) -> list[str]: ...

    def request(self, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``bodies[site]`` to each named site as a ``kind`` request; return replies by site."""
        ...

    def close(self) -> None: ...


def broadcast(transport: Transport, kind: str, body: Any, *, sites: Sequence[str] | None = None) -> dict[str, Any]:
    """Send the same body to every site (or the sites named)."""
    return transport.request(kind, {s: body for s in (sites or transport.sites)})


def request_outcomes(transport: Transport, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
    """Each site's reply, or the fedtab error it answered with (a ``FederationError`` with ``no_reply``
    set when it did not answer): the coordinator decides which sites go on. A transport without
    ``outcomes`` answers all or raises."""
    outcomes = getattr(transport, "outcomes", None)
    if outcomes is None:
        return transport.request(kind, bodies)
    raw = outcomes(kind, bodies)
    out: dict[str, Any] = {}
    for site in bodies:
        if site not in raw:
            out[site] = no_reply_error(kind, [site])
            continue
        try:
            out[site] = raise_if_error(site, raw[site])
        except errors.FedtabError as e:
            e.no_reply = unavailable(raw[site])  # its service is down: it cannot take part, like a silent site
            out[site] = e
    return out


def unavailable(reply: Any) -> bool:
    """Whether a reply says the site could not serve at all (its service down, the message undelivered)."""
    return isinstance(reply, dict) and ERROR_KEY in reply and bool(reply[ERROR_KEY].get(UNAVAILABLE_KEY))


def no_reply_error(kind: str, sites: Sequence[str]) -> errors.FederationError:
    """The error of sites that did not answer a request (timed out, disconnected, service down)."""
    from fedtab.federation.agreement import name_sites

    e = errors.FederationError(f"no reply from {name_sites(sites)} to '{kind}' (timed out or disconnected)",
                               public=True)
    e.no_reply = True
    return e


def error_reply(exc: BaseException, *, site: str | None = None) -> dict[str, Any]:
    """The reply body a site sends when handling a request failed: the error's class, exit code and the
    column names it concerns, never a value, a count or a row number. The message itself goes only
    where the error says it is public (``FedtabError.public``: a refusal that states rules and public
    settings); the whole error goes to the site's own log (logger ``fedtab.site``) for its operator."""
    fedtab_error = isinstance(exc, errors.FedtabError)
    cls = type(exc).__name__ if fedtab_error else "FederationError"
    code = exc.exit_code if fedtab_error else errors.FederationError.exit_code
    columns = list(getattr(exc, "columns", ()) or ())
    public = bool(getattr(exc, "public", False))
    SITE_LOG.error("site %s: %s: %s", site or "?", type(exc).__name__, exc)
    return {ERROR_KEY: {"class": cls, "code": int(code), "columns": columns,
                        "message": str(exc) if public else ""}}


def raise_if_error(site: str, reply: Any) -> Any:
    """Re-raise a site's error on the coordinator with the site's name in front."""
    if isinstance(reply, dict) and ERROR_KEY in reply:
        info = reply[ERROR_KEY]
        cls = getattr(errors, info.get("class", ""), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.FedtabError)):
            cls = errors.FederationError
        columns = [str(c) for c in info.get("columns", [])]
        text = str(info.get("message") or "")
        if not text:
            what = {"DataValidationError": "its table does not match the schema",
                    "SchemaError": "its table does not fit the schema or the encoding plan",
                    "SourceError": "it cannot read its table"}.get(cls.__name__, "it could not handle the request")
            text = (f"{cls.__name__}: {what}"
                    + (f" (column(s) {', '.join(repr(c) for c in columns)})" if columns else "")
                    + "; the details (values, rows) stay in the site's own log for its operator")
        # The site's name in front, once (a site's own message often starts with it already).
        msg = text if text.startswith(f"site '{site}'") else f"site '{site}': {text}"
        # Rebuild without calling __init__: some classes take structured arguments we do not ship.
        exc = cls.__new__(cls)
        Exception.__init__(exc, msg)
        exc.source, exc.problems, exc.failed = site, [], []
        exc.public, exc.columns = True, tuple(columns)
        raise exc
    return reply


class InProcessTransport:
    """All sites live in this process; each request still goes through ``pack``/``unpack``.

    Packing here is deliberate: a body that would not survive the wire fails in the embedded
    default too, and both transports give bit-identical results for the same seed.
    """

    def __init__(self, workers: Mapping[str, Callable[[str, Any, dict], Any]], *, max_parallel: int | None = None):
        # workers: site name -> handle(kind, body, state) -> reply
        self._workers = dict(workers)
        self._state: dict[str, dict] = {name: {} for name in self._workers}
        # Sites handle a request side by side, as separate institutions would, up to one per core.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.max_parallel = max(1, min(len(self._workers), max_parallel or cores))
        self._kinds_seen: set[str] = set()

    @property
    def sites(self) -> list[str]:
        return list(self._workers)

    def request(self, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
        return {site: raise_if_error(site, reply) for site, reply in self.outcomes(kind, bodies).items()}

    def outcomes(self, kind: str, bodies: Mapping[str, Any]) -> dict[str, Any]:
        """Each site's reply body, an error reply included (``request_outcomes``)."""
        unknown = [s for s in bodies if s not in self._workers]
        if unknown:
            from fedtab.federation.agreement import name_sites

            raise errors.FederationError(f"unknown site '{unknown[0]}'; known: {name_sites(self.sites)}")

        def handle(site: str) -> Any:
            try:
                reply = self._workers[site](kind, unpack(pack(bodies[site])), self._state[site])
            except errors.FedtabError as e:
                reply = error_reply(e, site=site)
            return unpack(pack(reply))

        sites = list(bodies)
        raw: dict[str, Any] = {}
        if sites and kind not in self._kinds_seen:
            # The first request of a kind is where libraries get imported lazily (opacus, sdmetrics ->
            # polars), and two threads importing one module at once can see it half initialised
            # (measured: the demo's evaluation failed on 'polars'): one site goes first, alone.
            self._kinds_seen.add(kind)
            raw[sites[0]] = handle(sites[0])
        rest = [site for site in sites if site not in raw]
        if self.max_parallel > 1 and len(rest) > 1 and kind in PARALLEL_KINDS:
            # Each site's work is single-threaded in torch (one intra-op thread, set here once for all:
            # a site restoring the thread count while another trains would change the other's sums),
            # draws from its own generators and holds its own state, so running sites in threads gives
            # bit-identical results; torch's kernels release the GIL, so sites overlap on the cores.
            with torch_threads(1), ThreadPoolExecutor(self.max_parallel) as pool:
                raw.update(zip(rest, pool.map(handle, rest)))
        else:
            raw.update((site, handle(site)) for site in rest)
        return {site: raw[site] for site in sites}

    def close(self) -> None:
        self._state.clear()


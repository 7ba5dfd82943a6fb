"""Site-local IPC between Flower's per-message ClientApp process and the long-lived site service.

A Unix-domain socket on the site's own host (mode 0600): never a network port. One request per
connection. A frame is an 8-byte big-endian length, a JSON header (the ``wire.pack`` JSON plus the
dtype and shape of each array) and the arrays' raw bytes. No pickle: the service never executes what
it receives. A frame whose length prefix announces more than ``MAX_FRAME_BYTES`` is refused before its
body is read (nothing is allocated for it), and a header that names more bytes than the frame holds is
refused as malformed.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from typing import Any

import numpy as np

from fedtab.errors import FederationError
from fedtab.federation.wire import Packed, pack, unpack

_LEN = struct.Struct(">Q")
# Flower's own gRPC messages stop at 512 MiB (its default max message length), so no request forwarded
# from one is larger; model files and updates are far smaller. The cap bounds what any local process
# (or a corrupt length) can make the service allocate.
MAX_FRAME_BYTES = 512 * 2**20


def encode_frame(kind: str, body: Any) -> bytes:
    p = pack(body)
    names = sorted(p.arrays)
    header = {"kind": kind, "json": p.json,
              "arrays": [{"name": n, "dtype": p.arrays[n].dtype.str, "shape": list(p.arrays[n].shape)} for n in names]}
    raw = json.dumps(header).encode("utf-8")
    parts = [_LEN.pack(len(raw)), raw] + [np.ascontiguousarray(p.arrays[n]).tobytes() for n in names]
    payload = b"".join(parts)
    return _LEN.pack(len(payload)) + payload


def decode_frame(payload: bytes) -> tuple[str, Any]:
    (n,) = _LEN.unpack_from(payload, 0)
    if 8 + n > len(payload):
        raise FederationError("malformed site message: its header is longer than the message")
    header = json.loads(payload[8:8 + n].decode("utf-8"))
    pos = 8 + n
    arrays: dict[str, np.ndarray] = {}
    for a in header["arrays"]:
        dtype = np.dtype(a["dtype"])
        if dtype.hasobject:
            raise FederationError("malformed site message: object arrays are refused")
        if any(int(d) < 0 for d in a["shape"]):
            raise FederationError("malformed site message: a negative array dimension")
        count = math.prod(int(d) for d in a["shape"])  # Python integers: no overflow to a small size
        size = count * dtype.itemsize
        if pos + size > len(payload):
            raise FederationError("malformed site message: its arrays need more bytes than it holds")
        arrays[a["name"]] = np.frombuffer(payload[pos:pos + size], dtype=dtype).reshape(a["shape"]).copy()
        pos += size
    return str(header["kind"]), unpack(Packed(json=header["json"], arrays=arrays))


def read_frame(sock: socket.socket, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame's payload; a length prefix above ``max_bytes`` is refused before the body is read."""
    head = _recv_exact(sock, 8)
    (size,) = _LEN.unpack(head)
    if size > max_bytes:
        raise FederationError(f"a site message announced {size:,} bytes, more than the {max_bytes:,} allowed; "
                              "refused without reading it", public=True)
    return _recv_exact(sock, size)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise FederationError("the site service closed the connection mid-message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def call_site(socket_path: str, kind: str, body: Any, *, timeout: float | None = None) -> Any:
    """Send one request to the site service and return its reply body."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(socket_path)
        except OSError as e:
            raise FederationError(f"the site service is not running at {socket_path} ({e.strerror}); "
                                  "start it with 'fedtab site --config site.toml'", public=True) from None
        s.sendall(encode_frame(kind, body))
        _, reply = decode_frame(read_frame(s))
    return reply

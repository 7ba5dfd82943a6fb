"""Atomic safetensors + JSON files for the deployment's persistent state (no pickle).

Used for the site's state file (its ledger, agreed job, training setup and replay cache) and the
coordinator's per-round checkpoint. A file is one safetensors blob: every array of the ``wire.pack``-ed
value is a tensor, the JSON document is in the header's metadata with a format tag. Writes go to a
temporary file, are fsync-ed and renamed over the old one, so a kill -9 leaves either the old or the
new file, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedtab.errors import FederationError
from fedtab.federation.wire import Packed, pack, unpack
from fedtab.schema import atomic_write_bytes


def save_state(path: str | os.PathLike, value: Any, *, fmt: str) -> Path:
    from safetensors.numpy import save

    p = pack(value)
    tensors = {k: np.ascontiguousarray(v) for k, v in p.arrays.items()}
    return atomic_write_bytes(path, save(tensors, metadata={"format": fmt, "json": p.json}))


def load_state(path: str | os.PathLike, *, fmt: str) -> Any:
    """The saved value, or None when there is no file yet."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.exists():
        return None
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FederationError(f"{p}: cannot read this state file ({e}); move it away to start afresh") from None
    if meta.get("format") != fmt:
        raise FederationError(f"{p}: not a {fmt} file (format {meta.get('format')!r})")
    return unpack(Packed(json=meta["json"], arrays=arrays))

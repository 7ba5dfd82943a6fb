"""Wire format shared by every transport: nested JSON-able values with numpy arrays inside.

A message body is any nest of dicts, lists, str/int/float/bool/None and numpy arrays. ``pack``
splits it into a JSON document (arrays replaced by references) and a flat ``name -> ndarray`` map,
which is exactly what Flower's ``ConfigRecord`` + ``ArrayRecord`` carry; ``unpack`` restores it.
No pickle anywhere: a site never executes what it receives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtab.errors import FederationError

_ARRAY_TAG = "__ndarray__"
_FLOAT_TAG = "__float__"  # JSON has no inf/nan: tag them


@dataclass(frozen=True)
class Packed:
    """A message body as JSON text plus named arrays."""

    json: str
    arrays: dict[str, np.ndarray]


def pack(obj: Any) -> Packed:
    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = np.ascontiguousarray(v)
            return {_ARRAY_TAG: key}
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str)]
            if bad:
                raise TypeError(f"message keys must be strings, got {bad[:3]!r}")
            return {k: enc(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            f = float(v)
            return f if math.isfinite(f) else {_FLOAT_TAG: repr(f)}
        if v is None or isinstance(v, str):
            return v
        raise TypeError(f"cannot send a value of type {type(v).__name__} between sites")

    return Packed(json=json.dumps(enc(obj), separators=(",", ":")), arrays=arrays)


def unpack(packed: Packed) -> Any:
    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if _ARRAY_TAG in v and len(v) == 1:
                try:
                    return packed.arrays[v[_ARRAY_TAG]]
                except KeyError:
                    raise FederationError(f"malformed message: array {v[_ARRAY_TAG]!r} is missing") from None
            if _FLOAT_TAG in v and len(v) == 1:
                return float(v[_FLOAT_TAG])
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    try:
        doc = json.loads(packed.json)
    except json.JSONDecodeError as e:
        raise FederationError(f"malformed message: not JSON ({e.msg})") from None
    return dec(doc)

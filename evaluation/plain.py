"""Rebuild evaluation results from their plain (JSON-able) form: how per-site figures travel.

A site sends ``SiteEvaluation.to_dict()`` (numbers, strings, small lists) to the coordinator, which
rebuilds the frozen dataclasses with ``from_plain``: driven by the dataclasses' type hints, so no
class needs hand-written parsing and nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def from_plain(cls: Any, data: Any) -> Any:
    """Build an instance of ``cls`` (a dataclass, or a typing form over dataclasses) from plain data."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None:
            return None
        return from_plain(args[0], data) if len(args) == 1 else data
    if origin is tuple:
        args = typing.get_args(cls)
        if isinstance(data, dict):  # a mapping sent for tuple[tuple[str, float], ...]
            data = list(data.items())
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], x) for x in data)
        return tuple(from_plain(a, x) for a, x in zip(args, data))
    if origin in (dict, typing.Mapping) or cls in (dict,):
        return dict(data)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        kwargs = {f.name: from_plain(hints[f.name], data[f.name])
                  for f in dataclasses.fields(cls) if f.init and f.name in data}
        return cls(**kwargs)
    if cls is float and data is not None:
        return float(data)
    if cls is int and data is not None and not isinstance(data, bool):
        return int(data)
    return data

"""Planted memorisation: tables that copy a known share of a site's training rows, to measure what the
release gate's privacy checks catch (``benchmarks/bench_gate_power.py``, tests).

A *near copy* is a training row with one whole-number numerical column moved by +-1 (the column drawn
among those the row records, the sign at random unless it would leave the column's bounds); an *exact
copy* is the row itself. The copies sit among rows of a ``background`` table that never saw the site's
training rows (the site's holdout rows resampled, rows of other sites, a model trained without the
site). Frames are plain (``evaluation._tables.to_plain``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fedtab.schema import TableSchema


def whole_number_columns(schema: TableSchema) -> list[str]:
    """The numerical columns a near copy may move: integer ones."""
    return [c.name for c in schema.columns if c.type == "numerical" and c.subtype == "int"]


def bounds_of(schema: TableSchema) -> dict[str, tuple[float | None, float | None]]:
    return {c.name: (c.lower, c.upper) for c in schema.columns if c.type == "numerical"}


def copies_of(rows: pd.DataFrame, rng: np.random.Generator, *, columns: Sequence[str],
              bounds: Mapping[str, tuple[float | None, float | None]], exact: bool = False) -> pd.DataFrame:
    """One copy of each row: exact, or near (one of ``columns`` the row records moved by +-1 within
    ``bounds``; a row recording none of them is copied exactly)."""
    out = rows.reset_index(drop=True).copy()
    if exact or not len(out):
        return out
    for i in range(len(out)):
        recorded = [c for c in columns if pd.notna(out.at[i, c])]
        if not recorded:
            continue
        c = recorded[rng.integers(len(recorded))]
        lo, hi = bounds.get(c, (None, None))
        x = float(out.at[i, c])
        signs = [s for s in (-1.0, 1.0) if (lo is None or x + s >= lo) and (hi is None or x + s <= hi)]
        if signs:
            out.at[i, c] = x + signs[rng.integers(len(signs))]
    return out


def planted_table(train: pd.DataFrame, background: pd.DataFrame, share: float, n_rows: int,
                  rng: np.random.Generator, *, schema: TableSchema, exact: bool = False,
                  copies: int | None = None) -> pd.DataFrame:
    """``n_rows`` rows: copies of ``round(share * len(train))`` distinct training rows (or ``copies`` of
    them), the rest drawn from ``background`` (without replacement when it holds enough rows), shuffled."""
    k = min(n_rows, len(train), int(round(share * len(train))) if copies is None else copies)
    picked = train.iloc[np.sort(rng.choice(len(train), size=k, replace=False))]
    planted = copies_of(picked, rng, columns=whole_number_columns(schema), bounds=bounds_of(schema), exact=exact)
    rest = n_rows - k
    fill = background.iloc[rng.choice(len(background), size=rest, replace=rest > len(background))] \
        if rest else background.iloc[0:0]
    table = pd.concat([planted, fill.reset_index(drop=True)], ignore_index=True)
    return table.iloc[rng.permutation(len(table))].reset_index(drop=True)

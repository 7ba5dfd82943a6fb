"""Shared table plumbing for the evaluation metrics (private: the public API is ``evaluate_site``).

Every metric reads *plain* frames: numerical and datetime columns as ``float64`` (datetimes as days
since the epoch), categorical and boolean columns as ``object`` strings with ``NaN`` for missing.
``id`` columns never take part (they are never copied into synthetic data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedtab.schema import TableSchema

MISSING_TOKEN = "<missing>"
OTHER_TOKEN = "<other>"
# HistGradientBoosting accepts at most 255 categories (max_bins); rarer levels share one code.
MAX_CODES = 250
# One-hot width per column in the distance space: rare levels beyond this share one slot.
MAX_ONEHOT = 60


@dataclass(frozen=True)
class Kinds:
    """Which schema columns the metrics treat as numbers and which as categories."""

    numerical: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return list(self.numerical) + list(self.categorical)


def kinds_of(schema: TableSchema) -> Kinds:
    num = tuple(c.name for c in schema.columns if c.type in ("numerical", "datetime"))
    cat = tuple(c.name for c in schema.columns if c.type in ("categorical", "boolean"))
    return Kinds(numerical=num, categorical=cat)


def to_plain(df: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Typed table (schema dtype contract) -> plain frame in schema column order, id columns dropped."""
    out = {}
    df = df.reset_index(drop=True)  # a user's frame may carry any index, duplicates included
    for spec in schema.columns:
        s = df[spec.name]
        if spec.type == "numerical":
            out[spec.name] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif spec.type == "datetime":
            ns = pd.to_datetime(s, errors="coerce")
            days = (ns - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
            out[spec.name] = days.astype("float64")
        elif spec.type in ("categorical", "boolean"):
            vals = s.astype("object")
            mask = pd.isna(vals)
            vals = vals.map(str).where(~mask, np.nan)
            out[spec.name] = vals.astype("object")
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def sdv_metadata(kinds: Kinds) -> dict:
    """Single-table metadata dict for sdmetrics (plain frames: datetimes are already numbers)."""
    cols = {c: {"sdtype": "numerical"} for c in kinds.numerical}
    cols.update({c: {"sdtype": "categorical"} for c in kinds.categorical})
    return {"columns": cols}


def subsample(df: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(df) <= n:
        return df.reset_index(drop=True)
    idx = rng.choice(len(df), size=n, replace=False)
    return df.iloc[np.sort(idx)].reset_index(drop=True)


def fill_categories(df: pd.DataFrame, kinds: Kinds) -> pd.DataFrame:
    """Missing categories as their own level (anonymeter and hashing need a value, not NaN)."""
    out = df.copy()
    for c in kinds.categorical:
        out[c] = out[c].fillna(MISSING_TOKEN)
    return out


class OrdinalCodes:
    """Categorical levels -> integer codes for HistGradientBoosting (missing stays NaN).

    Levels are learned from the frames given to ``fit`` (all inside one site); the most frequent
    ``MAX_CODES - 1`` levels keep their own code, the rest share one.
    """

    def __init__(self, kinds: Kinds):
        self.kinds = kinds

    def fit(self, *frames: pd.DataFrame) -> "OrdinalCodes":
        self.codes_ = {}
        for c in self.kinds.categorical:
            counts = pd.concat([f[c] for f in frames]).value_counts()
            keep = list(counts.index[: MAX_CODES - 1])
            self.codes_[c] = {v: i for i, v in enumerate(keep)}
        return self

    def transform(self, df: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
        cols = columns if columns is not None else self.kinds.columns
        out = np.empty((len(df), len(cols)), dtype="float64")
        for j, c in enumerate(cols):
            if c in self.codes_:
                mapping = self.codes_[c]
                other = float(len(mapping))
                mapped = df[c].map(mapping)
                vals = mapped.to_numpy(dtype="float64", na_value=np.nan)
                vals[np.isnan(vals) & df[c].notna().to_numpy()] = other
                out[:, j] = vals
            else:
                out[:, j] = df[c].to_numpy(dtype="float64")
        return out

    def categorical_mask(self, columns: list[str] | None = None) -> np.ndarray:
        cols = columns if columns is not None else self.kinds.columns
        return np.array([c in self.codes_ for c in cols], dtype=bool)


class DistanceSpace:
    """Rows -> vectors whose Euclidean distance is a Gower-like mixed-type distance.

    A numerical column is scaled by the spread between its 1st and 99th percentile in the reference
    rows (robust to outliers), missing -> centre plus a missing indicator; a categorical column is
    one-hot encoded with weight 1/sqrt(2), so two different levels add exactly 1 to the squared
    distance, as one full-range numerical difference does.
    """

    def __init__(self, kinds: Kinds):
        self.kinds = kinds

    def fit(self, reference: pd.DataFrame) -> "DistanceSpace":
        self.num_ = {}
        for c in self.kinds.numerical:
            x = reference[c].to_numpy(dtype="float64")
            x = x[~np.isnan(x)]
            if len(x) == 0:
                centre, spread = 0.0, 1.0
            else:
                lo, mid, hi = np.percentile(x, [1, 50, 99])
                spread = hi - lo if hi > lo else (np.ptp(x) or 1.0)
                centre = mid
            self.num_[c] = (float(centre), float(spread))
        self.cat_ = {}
        for c in self.kinds.categorical:
            counts = reference[c].fillna(MISSING_TOKEN).value_counts()
            self.cat_[c] = {v: i for i, v in enumerate(counts.index[:MAX_ONEHOT])}
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        blocks = []
        for c, (centre, spread) in self.num_.items():
            x = (df[c].to_numpy(dtype="float64") - centre) / spread
            miss = np.isnan(x)
            # The indicator is always present so every frame gets the same width.
            blocks.append(np.where(miss, 0.0, x)[:, None])
            blocks.append(miss.astype("float64")[:, None])
        w = 1.0 / np.sqrt(2.0)
        for c, mapping in self.cat_.items():
            codes = df[c].fillna(MISSING_TOKEN).map(mapping).fillna(len(mapping)).to_numpy(dtype="int64")
            onehot = np.zeros((len(df), len(mapping) + 1))
            onehot[np.arange(len(df)), codes] = w
            blocks.append(onehot)
        if not blocks:
            return np.zeros((len(df), 1))
        return np.hstack(blocks)


def row_hashes(df: pd.DataFrame, kinds: Kinds) -> np.ndarray:
    """One 64-bit hash per row; equal rows (numbers rounded to 9 decimals) hash equal."""
    canon = pd.DataFrame(index=df.index)
    for c in kinds.numerical:
        canon[c] = df[c].round(9).fillna(np.inf)
    for c in kinds.categorical:
        canon[c] = df[c].fillna(MISSING_TOKEN).astype(str)
    return pd.util.hash_pandas_object(canon, index=False).to_numpy()

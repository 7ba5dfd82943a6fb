"""The benchmark data sets and their splits, shared by ``bench_models.py`` and ``suite.py``.

Each loader returns ``(sites, train, test, schema, target, derive)``: the training rows per site (typed
by the schema), the pooled training rows, the pooled test rows (never trained on), the schema, the
utility target, and ``derive`` (a function applied to plain frames before utility scoring, or None).

* **Adult** (/work/shared/data/adult.csv; ``' ?'`` is missing, categories stripped of their leading
  space): stratified 80/20 split on ``income`` (seed 0); the 80% is cut into **4 non-IID sites by age
  quartile**.
* **Heart disease**: the 4 real hospitals (bundled); each hospital's rows are split 80/20, stratified
  on ``num > 0``; the utility target is ``num > 0``.
* **Bank marketing** (/work/shared/data/bank_marketing_full.csv; ``unknown`` is missing; ``duration``
  dropped because it leaks the outcome): stratified 80/20 on ``y``, the 80% cut into 4 sites by age
  quartile, like Adult.

Numerical bounds and category lists are public (documented ranges and codes of the fields), so no
privacy budget is spent on them (declared in the schema).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

import fedtab
from fedtab.schema import ColumnSpec, TableSchema

DATA = Path("/work/shared/data")
ADULT = DATA / "adult.csv"
BANK = DATA / "bank_marketing_full.csv"
ADULT_BOUNDS = {"age": (17, 90), "fnlwgt": (10_000, 1_500_000), "education-num": (1, 16),
                "capital-gain": (0, 99_999), "capital-loss": (0, 4_356), "hours-per-week": (1, 99)}
BANK_BOUNDS = {"age": (18, 95), "balance": (-10_000, 110_000), "day": (1, 31), "campaign": (1, 63),
               "pdays": (-1, 999), "previous": (0, 300)}


def _typed(raw: pd.DataFrame, bounds: dict, missing: str, name: str) -> tuple[pd.DataFrame, TableSchema]:
    cols, typed = [], {}
    for c in raw.columns:
        if c in bounds:
            lo, hi = bounds[c]
            cols.append(ColumnSpec(c, "numerical", "int", lower=float(lo), upper=float(hi)))
            typed[c] = pd.to_numeric(raw[c]).clip(lo, hi).astype("Int64")
        else:
            v = raw[c].str.strip()
            v = v.where(v != missing, None)
            # Census / bank field codes are public (the data sets' documentation lists them): declared,
            # as the anchors get them, so no budget goes to learning the domain and no category is lost.
            cols.append(ColumnSpec(c, "categorical", categories=tuple(sorted(v.dropna().unique()))))
            typed[c] = v.astype("object")
    return pd.DataFrame(typed), TableSchema(columns=tuple(cols), name=name)


def _age_sites(table: pd.DataFrame, target: str):
    train, test = train_test_split(table, test_size=0.2, stratify=table[target], random_state=0)
    quartile = pd.qcut(train["age"].astype(float), 4, labels=False, duplicates="drop")
    sites = {f"age_q{q + 1}": train[quartile == q].reset_index(drop=True) for q in range(4)}
    return sites, train.reset_index(drop=True), test.reset_index(drop=True)


def load_adult():
    raw = pd.read_csv(ADULT, keep_default_na=False, dtype=str)
    table, schema = _typed(raw, ADULT_BOUNDS, "?", "adult")
    return (*_age_sites(table, "income"), schema, "income", None)


def load_bank():
    raw = pd.read_csv(BANK, keep_default_na=False, dtype=str).drop(columns=["duration"])
    table, schema = _typed(raw, BANK_BOUNDS, "unknown", "bank")
    return (*_age_sites(table, "y"), schema, "y", None)


def heart_num_positive(frame: pd.DataFrame) -> pd.DataFrame:
    """Heart's target as a binary label: ``num`` 0 vs > 0 (the convention across the four hospitals)."""
    return frame.assign(num=np.where(frame["num"].astype(str) == "0", "0", ">0"))


def load_heart():
    sites, schema = fedtab.datasets.load_heart_sites(), fedtab.datasets.heart_schema()
    train_sites, tests = {}, []
    for name, df in sites.items():
        y = df["num"].astype(str) != "0"
        tr, te = train_test_split(df, test_size=0.2, stratify=y, random_state=0)
        train_sites[name] = tr.reset_index(drop=True)
        tests.append(te)
    train = pd.concat(train_sites.values(), ignore_index=True)
    return train_sites, train, pd.concat(tests, ignore_index=True), schema, "num", heart_num_positive


LOADERS = {"adult": load_adult, "heart": load_heart, "bank": load_bank}

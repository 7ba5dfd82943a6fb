"""Bundled real data: the UCI Heart Disease table, one CSV per hospital (a natural federated split).

Creators: Andras Janosi, M.D. (Hungarian Institute of Cardiology, Budapest); William Steinbrunn, M.D.
(University Hospital, Zurich); Matthias Pfisterer, M.D. (University Hospital, Basel); Robert Detrano,
M.D., Ph.D. (V.A. Medical Center, Long Beach and Cleveland Clinic Foundation). Donor: David W. Aha.
UCI Machine Learning Repository, DOI 10.24432/C52P4X, CC BY 4.0. See ``fedtab/data/README.md``.

``heart_schema()`` is hand-checked: declared bounds are public clinical ranges (not the observed
minima and maxima), the coded columns have their documented domains, ``?`` is missing everywhere,
and ``0`` is a missing marker of ``chol`` and ``trestbps``: a cholesterol or resting blood pressure of
0 is "not measured" (all 123 Switzerland rows and 49 VA rows have ``chol == 0``; one VA row has
``trestbps == 0``), not a value a synthesizer should learn.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from fedtab.schema import TableSchema
from fedtab.validation import validate_table

HEART_SITES = ("cleveland", "hungary", "switzerland", "va_long_beach")


def _data_file(name: str):
    return resources.files("fedtab").joinpath("data", name)


def heart_schema() -> TableSchema:
    """The hand-checked schema of the bundled heart tables (same at every site)."""
    return TableSchema.from_json(_data_file("heart_schema.json").read_text(encoding="utf-8"),
                                 source="fedtab/data/heart_schema.json")


def heart_site_path(site: str):
    """Path of one site's bundled CSV (for CLI examples and connectors)."""
    if site not in HEART_SITES:
        raise KeyError(f"unknown heart site {site!r}; sites: {list(HEART_SITES)}")
    return _data_file(f"heart_{site}.csv")


def load_heart_sites() -> dict[str, pd.DataFrame]:
    """The four hospitals' tables, typed with ``heart_schema()``: {site: DataFrame}."""
    schema = heart_schema()
    out = {}
    for site in HEART_SITES:
        with heart_site_path(site).open("r", encoding="utf-8") as f:
            raw = pd.read_csv(f, dtype=str, keep_default_na=False)
        out[site] = validate_table(raw, schema, source=f"fedtab/data/heart_{site}.csv")
    return out

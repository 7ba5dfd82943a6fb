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

* **Diabetes 130-US hospitals** (/work/shared/data/diabetes_130us_hospitals.csv.gz; ``?`` is missing;
  the two id columns dropped; ``diag_1..3`` (700-800 ICD-9 codes each) read as their ICD-9 chapter, the
  grouping of the data set's own paper, Strack et al. 2014); target ``readmitted`` < 30 days or not;
  stratified 80/20, the 80% cut into 4 sites by age bracket (``age`` is ordinal: ``[70-80)``).
* **Fair** (statsmodels' bundled ``fair``, Fair 1978: 6,366 married women; integer-coded categories
  ``rate_marriage``, ``religious``, ``educ``, ``occupation``, ``occupation_husb``, ``children``,
  ``yrs_married``, ``age`` as categories, ``affairs`` numerical with a point mass at 0); target
  ``affairs > 0`` (``had_affair``, ``affairs`` itself dropped: it is the label); 4 sites by age.
* **Breast cancer** (scikit-learn's bundled Wisconsin diagnostic table: 569 rows, 30 numerical
  measurements, heavy tails); target ``target`` (malignant or benign); 4 sites by ``mean radius``.
* **Penguins** (palmerpenguins' bundled table: 344 rows, 3 species, missing values); target ``sex``
  (rows with it missing dropped: the target must be known); 4 sites by ``body_mass_g`` quartile.

Numerical bounds and category lists are public (documented ranges and codes of the fields), so no
privacy budget is spent on them (declared in the schema). For the four tables without documented
ranges (diabetes' counts, Fair, breast cancer, penguins) the bounds are the data's own minimum and
maximum rounded outward to 2 significant digits, declared alike to every method (fedtab and the
anchors): a stand-in for the ranges a data owner would publish.
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


def _outward(lo: float, hi: float) -> tuple[float, float]:
    """``lo`` and ``hi`` rounded outward to 2 significant digits (the declared public bounds)."""
    def r(x, up):
        if x == 0:
            return 0.0
        mag = 10 ** (np.floor(np.log10(abs(x))) - 1)
        return float((np.ceil if up else np.floor)(x / mag) * mag)
    return r(lo, False), r(hi, True)


def _declared(table: pd.DataFrame, numerical: dict[str, str], name: str) -> tuple[pd.DataFrame, TableSchema]:
    """``numerical`` {column: "int" | "float"}; the rest categorical with the values seen (public codes)."""
    cols, typed = [], {}
    for c in table.columns:
        if c in numerical:
            x = pd.to_numeric(table[c], errors="coerce").astype(float)
            lo, hi = _outward(float(x.min()), float(x.max()))
            cols.append(ColumnSpec(c, "numerical", numerical[c], lower=lo, upper=hi))
            typed[c] = x.round().astype("Int64") if numerical[c] == "int" else x
        else:
            v = table[c].astype("object").where(table[c].notna(), None)
            v = v.map(lambda x: None if x is None else str(x))
            cols.append(ColumnSpec(c, "categorical", categories=tuple(sorted(v.dropna().unique()))))
            typed[c] = v
    return pd.DataFrame(typed), TableSchema(columns=tuple(cols), name=name)


def _quartile_sites(table: pd.DataFrame, target: str, by: pd.Series):
    """Stratified 80/20 on ``target`` (seed 0); the 80% cut into 4 sites by quartile of ``by`` (non-IID)."""
    train, test = train_test_split(table, test_size=0.2, stratify=table[target], random_state=0)
    key = by.loc[train.index].astype(float).rank(method="first")
    quartile = pd.qcut(key, 4, labels=False)
    sites = {f"q{q + 1}": train[quartile == q].reset_index(drop=True) for q in range(4)}
    return sites, train.reset_index(drop=True), test.reset_index(drop=True)


def _icd9_chapter(code) -> str | None:
    if code is None or code == "?":
        return None
    if code[0] in "EV":
        return "external" if code[0] == "E" else "supplementary"
    x = float(code)
    for hi, name in ((140, "infectious"), (240, "neoplasms"), (280, "endocrine"), (290, "blood"), (320, "mental"),
                     (390, "nervous"), (460, "circulatory"), (520, "respiratory"), (580, "digestive"),
                     (630, "genitourinary"), (680, "pregnancy"), (710, "skin"), (740, "musculoskeletal"),
                     (760, "congenital"), (780, "perinatal"), (800, "ill-defined"), (1000, "injury")):
        if x < hi:
            return name
    return "other"


DIABETES_NUMERICAL = {c: "int" for c in ("time_in_hospital", "num_lab_procedures", "num_procedures", "num_medications",
                                         "number_outpatient", "number_emergency", "number_inpatient",
                                         "number_diagnoses")}


def load_diabetes():
    raw = pd.read_csv(DATA / "diabetes_130us_hospitals.csv.gz", keep_default_na=False, dtype=str)
    raw = raw.drop(columns=["encounter_id", "patient_nbr"]).replace("?", None)
    for c in ("diag_1", "diag_2", "diag_3"):
        raw[c] = raw[c].map(_icd9_chapter)
    raw["readmitted"] = np.where(raw["readmitted"] == "<30", "<30", "no or >30")
    table, schema = _declared(raw, DIABETES_NUMERICAL, "diabetes")
    age = table["age"].map(lambda a: int(a.strip("[").split("-")[0]))
    return (*_quartile_sites(table, "readmitted", age), schema, "readmitted", None)


def load_fair():
    from statsmodels.datasets import fair

    raw = fair.load_pandas().data
    raw = raw.assign(had_affair=np.where(raw["affairs"] > 0, "yes", "no")).drop(columns=["affairs"])
    cats = ["rate_marriage", "religious", "educ", "occupation", "occupation_husb", "children", "yrs_married", "age"]
    raw[cats] = raw[cats].map(lambda v: f"{v:g}")
    table, schema = _declared(raw, {}, "fair")
    age = raw["age"].astype(float)
    return (*_quartile_sites(table, "had_affair", age), schema, "had_affair", None)


def load_breast_cancer():
    from sklearn.datasets import load_breast_cancer as bundled

    raw = bundled(as_frame=True).frame
    raw["target"] = raw["target"].map({0: "malignant", 1: "benign"})
    table, schema = _declared(raw, {c: "float" for c in raw.columns if c != "target"}, "breast_cancer")
    return (*_quartile_sites(table, "target", raw["mean radius"]), schema, "target", None)


def load_penguins():
    import palmerpenguins

    raw = palmerpenguins.load_penguins()
    raw = raw[raw["sex"].notna()].reset_index(drop=True)
    table, schema = _declared(raw, {"bill_length_mm": "float", "bill_depth_mm": "float",
                                    "flipper_length_mm": "int", "body_mass_g": "int", "year": "int"}, "penguins")
    return (*_quartile_sites(table, "sex", raw["body_mass_g"]), schema, "sex", None)


LOADERS = {"adult": load_adult, "heart": load_heart, "bank": load_bank, "diabetes": load_diabetes, "fair": load_fair,
           "breast_cancer": load_breast_cancer, "penguins": load_penguins}

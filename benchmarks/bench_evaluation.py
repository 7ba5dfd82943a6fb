"""Benchmark: full per-site evaluation of a ~30k-row table (UCI Adult, CC BY 4.0, Becker & Kohavi).

No model exists yet, so the "synthetic" table is a noisy bootstrap of the training rows: rows drawn
with replacement, numbers jittered by 5% of their spread, 5% of categorical cells resampled from the
column's marginal. Splits: 22,000 training rows, 10,561 holdout rows, 22,000 synthetic rows.

Sizes used inside the metrics (``EvaluationOptions`` defaults): QualityReport and detection on 5,000
rows per side; utility on up to 20,000 training rows; distances for 5,000 synthetic rows against
10,000 training and 10,000 holdout rows; membership inference on 2,000 members and 2,000 non-members
against 10,000 synthetic rows; anonymeter on 2,000 rows per side with 200 attacks per evaluator.

Run:  python benchmarks/bench_evaluation.py   (writes benchmarks/results/bench_evaluation.json)
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import os
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import EvaluationOptions, combine, evaluate_site  # noqa: E402
from evaluation.report import write_json, write_report  # noqa: E402
from fedtab.schema import ColumnSpec, TableSchema, atomic_write_text  # noqa: E402

ADULT = Path(os.environ.get("FEDTAB_ADULT_CSV", ROOT.parent / "shared" / "data" / "adult.csv"))
NUMERICAL = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
N_TRAIN = 22_000


def load_adult() -> tuple[pd.DataFrame, TableSchema]:
    raw = pd.read_csv(ADULT, keep_default_na=False, dtype=str)
    cols, typed = [], {}
    for c in raw.columns:
        if c in NUMERICAL:
            cols.append(ColumnSpec(c, "numerical", "int"))
            typed[c] = pd.to_numeric(raw[c]).astype("Int64")
        else:
            cols.append(ColumnSpec(c, "categorical", missing_markers=(" ?",)))
            typed[c] = raw[c].where(raw[c] != " ?", None).astype("object")
    return pd.DataFrame(typed), TableSchema(columns=tuple(cols), name="adult")


def noisy_bootstrap(train: pd.DataFrame, schema: TableSchema, rng: np.random.Generator) -> pd.DataFrame:
    out = train.iloc[rng.integers(0, len(train), len(train))].reset_index(drop=True)
    for spec in schema.columns:
        col = out[spec.name]
        if spec.type == "numerical":
            x = col.astype("float64")
            x = x + rng.normal(0, 0.05 * np.nanstd(x), len(x))
            out[spec.name] = x.round().clip(lower=np.nanmin(train[spec.name].astype("float64"))).astype("Int64")
        else:
            swap = rng.random(len(col)) < 0.05
            out.loc[swap, spec.name] = train[spec.name].sample(int(swap.sum()), replace=True,
                                                               random_state=1).to_numpy()
    return out


def main() -> dict:
    imports = time.perf_counter() - T_START
    t0 = time.perf_counter()
    table, schema = load_adult()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(table))
    train = table.iloc[idx[:N_TRAIN]].reset_index(drop=True)
    holdout = table.iloc[idx[N_TRAIN:]].reset_index(drop=True)
    synthetic = noisy_bootstrap(train, schema, rng)
    prep = time.perf_counter() - t0

    t = time.perf_counter()
    site = evaluate_site(train, holdout, synthetic, schema, target="income", seed=0, options=EvaluationOptions())
    total = time.perf_counter() - t

    t = time.perf_counter()
    ev = combine({"adult": site}, {"adult": len(train)})
    out_dir = ROOT / "benchmarks" / "results" / "tmp"
    write_report(ev, out_dir / "bench_report.html", title="Adult benchmark (noisy bootstrap)")
    write_json(ev, out_dir / "bench_report.json")
    report_s = time.perf_counter() - t

    rows = list(site.timings) + [("report (HTML + JSON)", report_s)]
    print(f"{'component':<28}{'seconds':>9}")
    for name, sec in rows:
        print(f"{name:<28}{sec:>9.2f}")
    print(f"{'evaluate_site total':<28}{total:>9.2f}")
    print(f"(imports {imports:.2f} s, data preparation {prep:.2f} s; rows train/holdout/synthetic "
          f"{len(train)}/{len(holdout)}/{len(synthetic)})")
    result = {
        "table": "adult", "rows": {"train": len(train), "holdout": len(holdout), "synthetic": len(synthetic)},
        "seconds": {name: round(sec, 3) for name, sec in rows},
        "evaluate_site_seconds": round(total, 3),
        "imports_seconds": round(imports, 3), "data_preparation_seconds": round(prep, 3),
        "figures": site.figures(),
        "options": site.to_dict()["options"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    atomic_write_text(ROOT / "benchmarks" / "results" / "bench_evaluation.json",
                      json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()

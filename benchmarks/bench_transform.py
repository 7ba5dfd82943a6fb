"""Benchmark: fitting the federated TableTransformer on Adult (4 sites by age quartile) and Heart (4 hospitals).

Run: ``python benchmarks/bench_transform.py``. Prints a table and writes benchmarks/results/bench_transform.json.
Uses the full Adult table from /work/shared/data when present, else the 6,000-row slice in tests/data.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtab.privacy import PrivacyLedger  # noqa: E402
from fedtab.transform import EncodingDP, fit_federated  # noqa: E402
from tests.test_transform_data import (  # noqa: E402
    ADULT_SCHEMA, HEART_SCHEMA, adult_table, binned_tvd, heart_table, split_adult, split_heart,
)

FULL_ADULT = Path("/work/shared/data/adult.csv")


def run(name, table, sites, schema, dp):
    ledgers = {s: (PrivacyLedger(s, epsilon_budget=None) if dp is None
                   else PrivacyLedger(s, epsilon_budget=dp.epsilon, delta=dp.delta)) for s in sites}
    t0 = time.perf_counter()
    tt = fit_federated(sites, schema, dp=dp, ledgers=ledgers)
    t1 = time.perf_counter()
    x = tt.transform(table)
    t2 = time.perf_counter()
    back = tt.inverse_transform(x)
    t3 = time.perf_counter()
    tvd = max(binned_tvd(table[c.name], back[c.name]) for c in schema.of_type("numerical"))
    return {"table": name, "rows": len(table), "sites": len(sites), "epsilon_pre": None if dp is None else dp.epsilon,
            "fit_s": round(t1 - t0, 3), "transform_s": round(t2 - t1, 3), "inverse_s": round(t3 - t2, 3),
            "output_dim": tt.output_dim, "max_numeric_tvd": round(tvd, 4),
            "site_epsilon": str(max(l.epsilon for l in ledgers.values())) if dp is None
            else round(max(l.epsilon for l in ledgers.values()), 5),
            "noise_multiplier": round(tt.plan_.noise_multiplier, 3), "threshold": round(tt.plan_.threshold, 1)}


def main() -> None:
    adult = adult_table(FULL_ADULT if FULL_ADULT.exists() else None)
    heart = heart_table()
    rows = []
    for dp in (None, EncodingDP(epsilon=0.1, delta=1e-5), EncodingDP(epsilon=1.0, delta=1e-5)):
        rows.append(run("adult", adult, split_adult(adult), ADULT_SCHEMA, dp))
        rows.append(run("heart", heart, split_heart(heart), HEART_SCHEMA, dp))
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    out = ROOT / "benchmarks" / "results" / "bench_transform.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"python": platform.python_version(), "machine": platform.machine(),
                               "results": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

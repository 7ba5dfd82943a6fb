"""Peak memory of reading a large table through ``connectors.read_table``.

Each measurement runs in a fresh Python process so peaks do not mix. It prints the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after importing the libraries and
after reading, and the typed table's own size, for three ways of reading
/work/shared/data/diabetes_130us_hospitals.csv.gz (101,766 rows x 50 columns):

* ``inferred``: ``read_table(path)``: streaming inference pass, then a streaming typing pass;
* ``schema``:   ``read_table(path, schema=...)``: one streaming typing pass;
* ``naive``:    ``pandas.read_csv(dtype=str)`` of the whole file, for comparison (raw text only).

Usage: python benchmarks/connector_memory.py [PATH]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

DEFAULT = "/work/shared/data/diabetes_130us_hospitals.csv.gz"

CHILD = r"""
import json, resource, sys
import pandas as pd
from connectors import read_table, scan_table
mib = lambda kb: kb / 1024  # Linux reports ru_maxrss in KiB
path, mode = sys.argv[1], sys.argv[2]
from fedtab.schema import TableSchema
if mode == "scan":
    scan_table(path).schema.save(sys.argv[3])
    print(json.dumps({}))
    sys.exit(0)
schema = TableSchema.load(sys.argv[3]) if mode == "schema" else None
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "naive":
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
else:
    df = read_table(path, schema=schema)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "rows": len(df), "cols": df.shape[1], "base_mib": mib(base),
                  "peak_mib": mib(peak), "frame_mib": df.memory_usage(deep=True).sum() / 2**20}))
"""


def measure(path: str, mode: str, schema_file: str) -> dict:
    cmd = [sys.executable, "-c", CHILD, path, mode, schema_file]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    print(f"peak RSS of reading {path}")
    print(f"{'mode':<10}{'rows':>9}{'cols':>6}{'after imports':>15}{'peak':>10}{'peak-base':>11}{'typed frame':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        schema_file = os.path.join(tmp, "schema.json")
        measure(path, "scan", schema_file)  # the schema for "schema" mode, inferred in its own process
        results = [measure(path, mode, schema_file) for mode in ("inferred", "schema", "naive")]
    for r in results:
        print(f"{r['mode']:<10}{r['rows']:>9}{r['cols']:>6}{r['base_mib']:>11.0f} MiB{r['peak_mib']:>6.0f} MiB"
              f"{r['peak_mib'] - r['base_mib']:>7.0f} MiB{r['frame_mib']:>9.0f} MiB")
    print("peak-base: what reading added to the process's peak RSS (the figure to watch).")
    print("typed frame: pandas' deep size, which counts a string shared by many cells once per cell.")


if __name__ == "__main__":
    main()

"""What secure aggregation with distributed noise gains: fedtab's default with it on and off, same epsilon.

    python benchmarks/bench_secagg.py [--epsilon 1] [--seeds 0 1 2] [--out benchmarks/results/bench_secagg.json]

Issue 22 part 4. Without secure aggregation each of k sites adds the full noise sigma to its measurements
and the coordinator's sum carries sqrt(k) sigma; with it (``privacy.secure_aggregation``, the default
under DP) each site adds sigma / sqrt(k) inside a masked sum, and the sum carries sigma, the noise of one
central release. Setups, each with ``bench_tables``' fixed configuration (at most 3,000 training rows,
public bounds, the declared target, ``FederatedSynthesizer(epsilon=..., delta=1e-5, schema=..., target=...,
seed=s)``, the only difference being ``secure_aggregation``):

* heart, its 4 real hospitals;
* Adult, its 4 non-IID sites (age quartiles);
* simulated sites: the same training rows dealt at random into 50 sites (heart: 14-15 rows a site; a
  site needs 10 to take part, so heart cannot make 100) and into 100 (Adult: 30 rows a site).

Scored like ``bench_tables`` (``suite.score``: sdmetrics quality, detection AUC, TSTR ROC-AUC, fit
seconds), every run in a subprocess; prints a table and writes the JSON (rows and a summary).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suite import _json_default, git_commit, main_versions, prepare, run_method, score  # noqa: E402

from fedtab.schema import atomic_write_text  # noqa: E402

TRAIN_ROWS = 3000
DELTA = 1e-5
TIMEOUT = 600
SETUPS = (("heart", 4), ("adult", 4), ("heart", 50), ("adult", 100))
METRICS = ("quality", "tstr_auc", "detection_auc", "fit_seconds")


def with_sites(data: dict, work: Path, k: int) -> dict:
    """``data`` with its training rows dealt at random into ``k`` sites (k = its own sites: unchanged)."""
    if k == len(data["sites"]):
        return data
    pooled = pd.read_parquet(data["pooled"])
    order = np.random.default_rng(0).permutation(len(pooled))
    paths = {}
    for i, part in enumerate(np.array_split(order, k)):
        paths[f"s{i:03d}"] = str(work / f"site{k}_{i:03d}.parquet")
        pooled.iloc[part].reset_index(drop=True).to_parquet(paths[f"s{i:03d}"])
    return {**data, "sites": paths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setups", nargs="+", default=[f"{t}:{k}" for t, k in SETUPS],
                    help="table:sites pairs (default: heart:4 adult:4 heart:50 adult:100)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_secagg.json"))
    args = ap.parse_args()
    setups = [(s.split(":")[0], int(s.split(":")[1])) for s in args.setups]
    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": git_commit(),
            "versions": main_versions(), "train_rows": TRAIN_ROWS, "epsilon": args.epsilon, "delta": DELTA,
            "command": "python benchmarks/bench_secagg.py " + " ".join(sys.argv[1:])}
    rows: list[dict] = []
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="fedtab_secagg_") as tmp:
        cache: dict = {}
        for table, k in setups:
            if table not in cache:
                work = Path(tmp) / table
                work.mkdir()
                cache[table] = (prepare(table, {"train_rows": TRAIN_ROWS}, work, 0), work)
            base, work = cache[table]
            data = with_sites(base, work, k)
            for seed in args.seeds:
                for secure in (True, False):
                    key = f"{table}-{k}s-eps{args.epsilon:g}-{'secagg' if secure else 'plain'}-seed{seed}"
                    job = {"key": key, "family": "fedtab", "model": "auto", "sites": k, "epsilon": args.epsilon,
                           "settings": {"delta": DELTA, "secure_aggregation": secure}}
                    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {key} ...", flush=True)
                    t0 = time.perf_counter()
                    result, synth = run_method(job, data, work, seed=seed, timeout=TIMEOUT)
                    row = {"table": table, "sites": k, "secure_aggregation": secure, "seed": seed, **result}
                    row.pop("versions", None)
                    if synth is not None:
                        row.update(score(synth, data, seed=seed))
                    print(f"   {row.get('status')} quality {row.get('quality')} tstr {row.get('tstr_auc')} "
                          f"fit {row.get('fit_seconds')} s ({time.perf_counter() - t0:.0f} s)", flush=True)
                    rows.append(row)
                    atomic_write_text(out, json.dumps({"meta": meta, "rows": rows}, indent=1, default=_json_default))
    summary = summarise(rows)
    text = render(meta, summary)
    atomic_write_text(out, json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1,
                                      default=_json_default))
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["table"], r["sites"], r["secure_aggregation"]), []).append(r)
    out = []
    for (table, k, secure), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        entry = {"table": table, "sites": k, "secure_aggregation": secure, "runs": len(rs), "ok": len(ok)}
        for m in METRICS:
            v = [r[m] for r in ok if r.get(m) is not None]
            entry[m] = {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                        "n": len(v)} if v else None
        out.append(entry)
    return out


def render(meta: dict, summary: list[dict]) -> str:
    f = lambda s: "-" if not s else f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s.get("sd") else "")  # noqa: E731
    lines = ["# Secure aggregation with distributed noise: the gain at the same epsilon (benchmarks/bench_secagg.py)",
             "", f"Commit {meta['commit']}, started {meta['started']}; epsilon {meta['epsilon']} per site, delta "
             f"{meta['delta']}; at most {meta['train_rows']} training rows; mean ± sd over seeds (fresh secret noise "
             "each run). Command: `" + meta["command"] + "`.", "",
             "| table | sites | secure aggregation | quality | TSTR AUC | detection AUC | fit s | ok/runs |",
             "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['table']} | {e['sites']} | {'on' if e['secure_aggregation'] else 'off'} | {f(e['quality'])} | "
                     f"{f(e['tstr_auc'])} | {f(e['detection_auc'])} | {f(e['fit_seconds'])} | {e['ok']}/{e['runs']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

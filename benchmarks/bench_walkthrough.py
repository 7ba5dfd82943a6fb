"""What the README's walk-through produces, run as a user runs it: train, sample, release on the bundled hospitals.

    python benchmarks/bench_walkthrough.py [--runs 5] [--out benchmarks/results/bench_walkthrough.json]

Each run copies ``examples/heart_job.toml`` (absolute paths, a fresh ``ledger_dir`` per run, so that no
hospital's lasting budget carries over between runs) and runs the documented commands in a subprocess:
``fedtab train`` (the model it chose), ``fedtab sample -n 1000 --seed 1`` (each numerical column's mean
against the real one: within 10%?) and ``fedtab release --model`` (exit code 0 released, 10 refused;
each hospital's verdict per check from the public report). The noise is secret, so runs differ; prints
a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from suite import git_commit  # noqa: E402

from fedtab.schema import atomic_write_text  # noqa: E402

COLUMNS = ("age", "trestbps", "chol", "thalach", "oldpeak")


def real_means() -> dict[str, float]:
    from fedtab.datasets import heart_schema, load_heart_sites
    from fedtab.validation import validate_table

    schema = heart_schema()
    frames = [validate_table(f, schema, source=s) for s, f in load_heart_sites().items()]
    table = pd.concat(frames, ignore_index=True)
    return {c: float(pd.to_numeric(table[c], errors="coerce").mean()) for c in COLUMNS}


def job_file(folder: Path) -> Path:
    """examples/heart_job.toml with absolute paths and this run's own ledger folder."""
    text = (ROOT / "examples" / "heart_job.toml").read_text()
    base = (ROOT / "examples").resolve()
    text = re.sub(r'^(schema|source)(\s*=\s*)"([^"]+)"',
                  lambda m: f'{m.group(1)}{m.group(2)}"{(base / m.group(3)).resolve()}"', text, flags=re.M)
    text = re.sub(r'^ledger_dir\s*=\s*"[^"]+"', f'ledger_dir = "{folder / "ledgers"}"', text, flags=re.M)
    path = folder / "heart_job.toml"
    path.write_text(text)
    return path


def fedtab(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedtab", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=1800)


def one_run(i: int, real: dict[str, float]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"fedtab_walk{i}_") as tmp:
        folder = Path(tmp)
        cfg = job_file(folder)
        t0 = time.perf_counter()
        train = fedtab("train", cfg, "-o", folder / "heart.fedtab", cwd=folder)
        fit_s = time.perf_counter() - t0
        if train.returncode != 0:
            return {"run": i, "status": f"train exit {train.returncode}: {train.stderr.strip()[-300:]}"}
        chose = next((ln.strip() for ln in train.stdout.splitlines() if "model" in ln.lower()), "")
        sample = fedtab("sample", folder / "heart.fedtab", "-n", 1000, "--seed", 1, "-o", folder / "s.csv", cwd=folder)
        if sample.returncode != 0:
            return {"run": i, "status": f"sample exit {sample.returncode}: {sample.stderr.strip()[-300:]}"}
        synth = pd.read_csv(folder / "s.csv")
        means = {c: float(pd.to_numeric(synth[c], errors="coerce").mean()) for c in COLUMNS}
        release = fedtab("release", cfg, "--model", folder / "heart.fedtab", "--out", folder / "rel", cwd=folder)
        failed = {}
        report = folder / "rel" / "report.json"
        if report.exists():
            data = json.loads(report.read_text())
            failed = _failed_checks(data)
        return {"run": i, "status": "ok", "fit_seconds": round(fit_s, 1), "model_line": chose[:200],
                "means": {c: round(v, 2) for c, v in means.items()},
                "within_10pct": {c: abs(means[c] - real[c]) <= 0.1 * abs(real[c]) for c in COLUMNS},
                "release_exit": release.returncode, "failed_checks": failed}


def _failed_checks(report: dict) -> dict[str, list[str]]:
    """Each hospital's failed checks, read off the public report (its verdicts only)."""
    out: dict[str, list[str]] = {}
    for site, verdict in ((report.get("evaluation") or {}).get("sites") or {}).items():
        checks = verdict.get("checks") if isinstance(verdict, dict) else None
        if isinstance(checks, dict):
            out[site] = sorted(k for k, v in checks.items() if not v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_walkthrough.json"))
    args = ap.parse_args()
    real = real_means()
    rows = []
    for i in range(args.runs):
        print(f"[{datetime.now(timezone.utc):%H:%M:%S}] run {i + 1}/{args.runs} ...", flush=True)
        row = one_run(i, real)
        print("   " + json.dumps({k: row.get(k) for k in ("status", "means", "release_exit", "failed_checks")}),
              flush=True)
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    lines = ["# The README walk-through, run as a user runs it (benchmarks/bench_walkthrough.py)", "",
             f"Commit {git_commit()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {len(ok)} of {len(rows)} runs "
             "completed; epsilon 1 per hospital (examples/heart_job.toml); secret noise: every run differs.", "",
             "| column | real mean | synthetic means (min-max) | runs within 10% |", "|---|---|---|---|"]
    for c in COLUMNS:
        v = [r["means"][c] for r in ok]
        lines.append(f"| {c} | {real[c]:.1f} | {min(v):.1f}-{max(v):.1f} (mean {statistics.fmean(v):.1f}) | "
                     f"{sum(r['within_10pct'][c] for r in ok)}/{len(ok)} |" if v else f"| {c} | {real[c]:.1f} | - | - |")
    released = sum(1 for r in ok if r["release_exit"] == 0)
    lines += ["", f"`fedtab release`: released in {released} of {len(ok)} runs (exit 0; 10 = refused).", ""]
    for r in ok:
        lines.append(f"- run {r['run'] + 1}: exit {r['release_exit']}; failed checks "
                     + ("; ".join(f"{s}: {', '.join(c) or '-'}" for s, c in sorted(r["failed_checks"].items())) or "-"))
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    atomic_write_text(out, json.dumps({"commit": git_commit(), "real_means": real, "rows": rows}, indent=1))
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()

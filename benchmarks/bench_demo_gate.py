"""Benchmark: what the release gate concludes on the demo's setup (``fedtab demo``: 4 heart hospitals,
DP-CTGAN at epsilon 1, a hospital column, 80% of the budget to the encoding), one run per training seed.

Each run trains, has every hospital draw the table from the model it trained and decide every check at
home (``fedtab.assess.release``), and records the public verdict (which checks failed, at which
hospitals) and, since a simulation runs every hospital, each hospital's own quality and detection AUC
(from its own report; in a deployment these stay at the hospital). Every run draws fresh secret noise.

Run:  python benchmarks/bench_demo_gate.py [--seeds 0 1 2 3 4]
Writes benchmarks/results/bench_demo_gate.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtab.demo import run_demo  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402


def run(seed: int) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        r = run_demo(Path(d) / "demo", seed=seed)
    sites = {s: {"quality": round(f["fidelity.quality"], 3), "detection_auc": round(f["fidelity.detection_auc"], 3)}
             for s, f in r.figures.items()}
    failed = {c.name: sorted(s for s, v in r.verdict.tests["sites"].items() if not v["checks"].get(c.name, False))
              for c in r.verdict.failed}
    return {"seed": seed, "released": bool(r.verdict.released), "failed_at": failed, "sites": sites,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_demo_gate.json")
    args = parser.parse_args()
    runs = []
    print(f"{'seed':>4} {'released':>8}  failed checks (hospitals)  | per-hospital quality / detection AUC")
    for seed in args.seeds:
        r = run(seed)
        runs.append(r)
        failed = "; ".join(f"{k} {v}" for k, v in r["failed_at"].items()) or "-"
        own = " ".join(f"{s[:5]} {v['quality']:.2f}/{v['detection_auc']:.2f}" for s, v in r["sites"].items())
        print(f"{seed:>4} {str(r['released']):>8}  {failed}  | {own}", flush=True)
    released = sum(r["released"] for r in runs)
    print(f"released {released} of {len(runs)}")
    doc = {"benchmark": "bench_demo_gate", "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "args": {"seeds": args.seeds}, "released": released, "runs": runs}
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

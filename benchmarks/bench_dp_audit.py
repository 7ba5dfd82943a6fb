"""Benchmark: empirical DP audits of fedtab's mechanisms against the epsilon their ledgers claim.

For each mechanism (the encoding's histogram release through ``site_statistics``; a DP-SGD run
through ``PrivateNetwork`` and ``poisson_sample``) and each variant (``secret``: production;
``noise/10``: a tenth of the noise; ``seeded``: noise seeded from the public job seed, replayed by the
attacker), ``--runs`` runs on a table without and with one canary record give a one-sided 95%
Clopper-Pearson lower bound on epsilon (``fedtab.privacy.audit``; the set-up is in
``tests/dp_audit.py``, which ``tests/test_dp_attacks.py`` runs with fewer runs). A variant is broken
when its lower bound exceeds the claimed epsilon. ``ceiling`` is the largest bound these runs can show
at all (a test without a single error): a broken variant that reaches it was told apart every time.

Run:  python benchmarks/bench_dp_audit.py [--runs 5000] [--confidence 0.95]
Writes benchmarks/results/bench_dp_audit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fedtab.privacy.audit import clopper_pearson_upper, epsilon_from_rates  # noqa: E402
from tests.dp_audit import DELTA, VARIANTS, SGDCase, dpsgd_audit, encoding_audit, encoding_case  # noqa: E402

STATISTICS = ("raw output", "output less the replayed seeded noise")


def ceiling(runs: int, confidence: float) -> float:
    """The bound a perfect test gives on the bounding half of ``runs`` runs per side."""
    u = clopper_pearson_upper(0, runs - runs // 2, alpha=(1 - confidence) / 2)
    return epsilon_from_rates(u, u, delta=DELTA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000, help="runs per side (without / with the canary)")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_dp_audit.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for audit in (encoding_audit, dpsgd_audit):
        for variant in VARIANTS:
            run = audit(variant, runs=args.runs, confidence=args.confidence)
            r = run.result
            rows.append({
                "mechanism": run.mechanism, "variant": variant, "claimed_epsilon": run.claimed_epsilon,
                "epsilon_lower_bound": r.epsilon_lower, "verdict": "BROKEN: exceeds its claim" if run.flagged
                else "within its claim", "runs_per_side": run.runs_per_side,
                "test": {"statistic": STATISTICS[r.statistic], "threshold": r.threshold,
                         "guess_canary_when": "statistic >= threshold" if r.direction > 0 else "statistic < threshold",
                         "fpr": r.fpr, "fnr": r.fnr, "fpr_upper": r.fpr_upper, "fnr_upper": r.fnr_upper},
                "seconds": round(run.seconds, 1),
            })
            print(f"  {run.mechanism} / {variant}: {r.epsilon_lower:.3f} (claimed {run.claimed_epsilon:.3f}), "
                  f"{run.seconds:.0f} s", file=sys.stderr)
    case, sgd = encoding_case(), SGDCase()
    result = {
        "benchmark": "bench_dp_audit",
        "confidence": args.confidence, "delta": DELTA, "runs_per_side": args.runs,
        "ceiling": ceiling(args.runs, args.confidence),
        "setup": {
            "encoding": {"rows": len(case.without), "columns": [c.name for c in case.plan.columns],
                         "plan_epsilon": case.plan.dp.epsilon, "noise_multiplier": case.plan.noise_multiplier,
                         "canary_cells": [list(c) for c in case.cells]},
            "dpsgd": {"noise_multiplier": sgd.noise_multiplier, "sample_rate": sgd.sample_rate, "steps": sgd.steps,
                      "max_grad_norm": sgd.max_grad_norm, "zero_rows": sgd.rows,
                      "network": f"nn.Linear({sgd.dim}, 1, bias=False), per-row loss -(w . x), SGD lr 1"},
        },
        "audits": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    print(f"{'mechanism':<20}{'variant':<10}{'claimed eps':>12}{'empirical lb':>14}  verdict")
    for row in rows:
        print(f"{row['mechanism']:<20}{row['variant']:<10}{row['claimed_epsilon']:>12.3f}"
              f"{row['epsilon_lower_bound']:>14.3f}  {row['verdict']}")
    print(f"(one-sided {args.confidence:.0%} bounds from {args.runs} runs per side; ceiling {result['ceiling']:.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark: how often the default policy's privacy checks refuse a table by chance at the heart hospitals.

The demo's job (DP-CTGAN, epsilon 1 per hospital, site column, 80% of the budget to the encoding) is
trained for each ``--seeds`` seed and its demo table is drawn. Every hospital then scores that same
table twice over:

* against its real split (the training rows the model saw, the holdout it never saw): the figures the
  release gate reads;
* against ``--splits`` random re-splits of its own rows into training and holdout rows of the same sizes.
  A re-split is one the table knows next to nothing about (each side holds ~80% of the rows the model
  trained on), so whatever a check reads there is chance: which rows happened to be held out.

For each split the default policy's privacy checks (DCR share band, excess exact copies, membership
AUC, singling-out, linkability and inference risks; the worst hospital, as the gate reads them) give
a verdict. The share of re-splits refused is the policy's false-alarm rate at sites of this size;
per hospital and check the re-splits' 95th percentile is the figure's chance level there.

Run:  python benchmarks/bench_gate_chance.py [--seeds 0 1 2] [--splits 20]
Writes benchmarks/results/bench_gate_chance.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation._tables import kinds_of, to_plain  # noqa: E402
from evaluation.disclosure import evaluate_disclosure  # noqa: E402
from fedtab.api import FederatedSynthesizer  # noqa: E402
from fedtab.assess import default_rows  # noqa: E402
from fedtab.datasets import heart_schema, load_heart_sites  # noqa: E402
from fedtab.demo import DEMO_TARGET  # noqa: E402
from fedtab.federation.site import site_seed, split_holdout  # noqa: E402
from fedtab.release import ReleasePolicy  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402
from fedtab.validation import validate_table  # noqa: E402

SITE_COLUMN = "hospital"
FIGURES = ("dcr_share", "exact_copies", "mia_auc", "singling_out_risk", "linkability_risk", "inference_risk")


def _figures(train, holdout, synthetic, schema, *, seed: int) -> dict[str, float]:
    kinds = kinds_of(schema)
    r = evaluate_disclosure(to_plain(train, schema), to_plain(holdout, schema), to_plain(synthetic, schema),
                            kinds, target=DEMO_TARGET, seed=seed)
    value = lambda risk: float("nan") if risk is None else float(risk.value)  # noqa: E731
    return {"dcr_share": r.dcr_share, "exact_copies": max(0.0, r.exact_copy_rate - r.natural_copy_rate),
            "mia_auc": r.mia_auc, "singling_out_risk": value(r.singling_out),
            "linkability_risk": value(r.linkability), "inference_risk": value(r.inference)}


def _failed(per_site: dict[str, dict[str, float]], policy: ReleasePolicy) -> list[str]:
    """The privacy checks the default gate would fail on these figures, as 'check@site' (NaN fails)."""
    limits = {"exact_copies": policy.max_exact_copy_rate, "mia_auc": policy.max_mia_auc,
              "singling_out_risk": policy.max_singling_out_risk, "linkability_risk": policy.max_linkability_risk,
              "inference_risk": policy.max_inference_risk}
    out = []
    for site, f in per_site.items():
        if not policy.dcr_share_min <= f["dcr_share"] <= policy.dcr_share_max:
            out.append(f"dcr_share@{site}")
        out += [f"{name}@{site}" for name, limit in limits.items() if not f[name] <= limit]
    return out


def run(seed: int, splits: int, policy: ReleasePolicy) -> dict:
    sites = load_heart_sites()
    t0 = time.perf_counter()
    synth = FederatedSynthesizer("ctgan", epsilon=1.0, delta=1e-5, rounds=10, local_epochs=2.0, batch_size=256,
                                 seed=seed, preprocessing_share=0.8, site_column=SITE_COLUMN,
                                 schema=heart_schema()).fit(sites)
    table = synth.sample(default_rows(synth), seed=seed, quantile_map=True)
    schema = synth.schema.without(SITE_COLUMN)
    rows = {s: validate_table(frame, schema, source=s) for s, frame in sites.items()}
    own = {s: table[table[SITE_COLUMN] == s].drop(columns=SITE_COLUMN).reset_index(drop=True) for s in sites}

    def score(split_seed) -> dict[str, dict[str, float]]:
        out = {}
        for i, s in enumerate(sites):
            k = site_seed(seed, s, 1) if split_seed is None else split_seed + i
            train, holdout = split_holdout(rows[s], fraction=0.2, seed=k)
            out[s] = _figures(train, holdout, own[s], schema, seed=seed)
        return out

    real = score(None)
    resplits = [score(100_000 + 97 * p) for p in range(splits)]
    chance = {s: {f: float(np.nanpercentile([r[s][f] for r in resplits], 95)) for f in FIGURES} for s in sites}
    return {"seed": seed, "real": {"figures": real, "failed": _failed(real, policy)},
            "resplits": [{"figures": r, "failed": _failed(r, policy)} for r in resplits],
            "chance_p95": chance, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", type=int, default=20, help="random re-splits per hospital and model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_gate_chance.json")
    args = parser.parse_args()
    policy = ReleasePolicy.load()
    runs = []
    print(f"{'seed':>4} {'real split':<40} {'re-splits refused':>18}  failing checks over the re-splits")
    for seed in args.seeds:
        r = run(seed, args.splits, policy)
        runs.append(r)
        refused = sum(bool(x["failed"]) for x in r["resplits"])
        counts: dict[str, int] = {}
        for x in r["resplits"]:
            for name in {f.split("@")[0] for f in x["failed"]}:
                counts[name] = counts.get(name, 0) + 1
        real = "passes" if not r["real"]["failed"] else "refused: " + ", ".join(r["real"]["failed"])
        print(f"{seed:>4} {real:<40} {f'{refused} of {args.splits}':>18}  "
              + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"), flush=True)
    print("\nchance level (95th percentile over the re-splits) per hospital, first model:")
    first = runs[0]["chance_p95"]
    print(f"{'hospital':<14} " + " ".join(f"{f[:14]:>14}" for f in FIGURES))
    for site, c in first.items():
        print(f"{site:<14} " + " ".join(f"{c[f]:>14.3f}" for f in FIGURES))
    total = sum(bool(x["failed"]) for r in runs for x in r["resplits"])
    n = sum(len(r["resplits"]) for r in runs)
    print(f"\ndefault policy: {total} of {n} random re-splits refused ({total / n:.0%}); real splits refused: "
          f"{sum(bool(r['real']['failed']) for r in runs)} of {len(runs)}")
    atomic_write_text(args.out, json.dumps({"benchmark": "bench_gate_chance", "splits": args.splits,
                                            "policy": policy.to_dict(), "runs": runs}, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

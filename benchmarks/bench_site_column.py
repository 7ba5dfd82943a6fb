"""Benchmark: the demo's job at the release gate, a table of the hospitals' union vs a site column.

The four bundled UCI Heart Disease hospitals (CC BY 4.0; credits in fedtab/data/README.md), DP-CTGAN
at epsilon 1 per hospital, 10 rounds of 2 local epochs, evaluated at every hospital and gated by the
default policy, for a few training seeds:

* ``union``: no site column, 50% of the budget to the encoding (the demo before the site column);
* ``site``: ``site_column="hospital"``, 80% to the encoding (the demo now, ``fedtab.demo``).

Evaluation follows the protocol of 89f2e72: ``fedtab.assess.release`` has every hospital draw the
table itself from the model it trained, decide every check of the policy at home (Holm over its own
tested figures at ``family_alpha`` / 4) and send back only verdicts; the consortium's checks carry
no value. The figures shown are each hospital's own, read from its outcome in this in-process
simulation (``result.evaluation.site_local[site]``): per check, the worst hospital's value (lowest
quality, highest of every other figure), '!' where the consortium's check failed.

Prints one row per (config, seed) with every gate check, then each hospital's detection AUC and DCR
share; for the site column, also the gate's verdict on ``--tables`` - 1 more tables sampled from each
model (other sampling and evaluation seeds), and how many of all its tables were released. Once a
table of a model fails a privacy check at a hospital, that hospital refuses (``PrivacyBudgetError``)
to evaluate any other table of the model: such tables are recorded as refused, with that reason.
The earlier comparison with the policy's "plain bands" (``chance_levels = false``) is gone: chance
levels were removed from the policy (a threshold is never raised by the data; a policy naming
``chance_levels`` is refused), so the default policy is the plain bands, with each figure tested
against a null fixed by the hospital's sizes. Writes benchmarks/results/bench_site_column.json.

Run:  python benchmarks/bench_site_column.py [--seeds 0 1 2] [--tables 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtab.api import FederatedSynthesizer  # noqa: E402
from fedtab.assess import release  # noqa: E402
from fedtab.datasets import heart_schema, load_heart_sites  # noqa: E402
from fedtab.errors import PrivacyBudgetError, ReleaseRefusedError  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402

CONFIGS = {"union": dict(preprocessing_share=0.5), "site": dict(preprocessing_share=0.8, site_column="hospital")}
SHOWN = ("quality", "detection_auc", "dcr_share", "mia_auc", "singling_out_risk", "linkability_risk", "inference_risk")
STICKY_REFUSAL = "the sites refuse further tables of a model refused on privacy"
LOWER_IS_WORSE = ("quality", "dcr_share_low")


def _gate(synth, sites, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        try:
            result = release(synth, sites, out, target="num", seed=seed, quantile_map=True)
        except ReleaseRefusedError as refused:
            result = refused.result
        except PrivacyBudgetError as refused:  # a hospital refuses any table of a model refused on privacy
            sticky = "already failed a privacy check" in str(refused)
            return {"seed": seed, "released": False, "refused_by_site": True,
                    "reason": STICKY_REFUSAL if sticky else str(refused), "error": str(refused), "checks": {},
                    "sites": {}}
    local = result.evaluation.site_local  # each hospital's own outcome (a simulation runs every hospital)
    own = {s: {c.name: c.value for c in o.verdict.checks} for s, o in local.items()}
    checks = {}
    for c in result.verdict.checks:
        values = [v[c.name] for v in own.values() if v.get(c.name) is not None]
        worst = (min if c.name in LOWER_IS_WORSE else max)(values) if values else None
        failed = sorted(s for s, v in result.evaluation.sites.items() if not v.checks.get(c.name, True))
        checks[c.name] = {"value": worst, "passed": c.passed, "failed_at": failed}
    per_site = {}
    for s, o in local.items():
        site_eval = o.evaluation.sites[s]
        f = site_eval.figures()
        per_site[s] = {"detection_auc": f["fidelity.detection_auc"], "dcr_share": f["disclosure.dcr_share"],
                       "mia_auc": f["disclosure.mia_auc"], "rows_scored": site_eval.n_synthetic,
                       "passed": bool(result.evaluation.sites[s].passed),
                       "failed_checks": [c.name for c in o.verdict.failed]}
    return {"seed": seed, "released": bool(result.verdict.released), "refused_by_site": False, "checks": checks,
            "sites": per_site}


def _failed(name: str, check: dict) -> str:
    value = "" if check["value"] is None else f" {check['value']:.3f}"
    return f"{name}{value} at {', '.join(check['failed_at']) or 'the coordinator'}"


def run(config: str, seed: int, tables: int) -> dict:
    """Train with ``seed``; gate the demo's table (sampled and evaluated with ``seed``), then ``tables - 1``
    more tables of the same model (other sampling and evaluation seeds): how often the gate releases."""
    sites = load_heart_sites()
    t0 = time.perf_counter()
    synth = FederatedSynthesizer("ctgan", epsilon=1.0, delta=1e-5, rounds=10, local_epochs=2.0, batch_size=256,
                                 seed=seed, schema=heart_schema(), **CONFIGS[config]).fit(sites)
    first, *more = [_gate(synth, sites, s) for s in [seed, *(1000 + 10 * seed + k for k in range(1, tables))]]
    return {"config": config, "seed": seed, **{k: v for k, v in first.items() if k != "seed"},
            "more_tables": more, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", type=int, default=4,
                        help="tables gated per 'site' model (the first is the demo's; 'union' models: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_site_column.json")
    args = parser.parse_args()
    rows = []
    print(f"{'config':6} {'seed':>4} " + " ".join(f"{c[:12]:>12}" for c in SHOWN) + "  released")
    for config in CONFIGS:
        for seed in args.seeds:
            r = run(config, seed, args.tables if config == "site" else 1)
            rows.append(r)
            cells = []
            for c in SHOWN:
                check = r["checks"].get(c, {})
                v = check.get("value")
                cells.append(f"{'' if v is None else f'{v:.3f}'}{'' if check.get('passed', True) else '!':1}".rjust(12))
            print(f"{config:6} {seed:>4} " + " ".join(cells) + f"  {'yes' if r['released'] else 'no'}", flush=True)
            print("            " + ", ".join(f"{s}: det {v['detection_auc']:.3f} dcr {v['dcr_share']:.3f} "
                                             f"({v['rows_scored']} rows)" for s, v in r["sites"].items()), flush=True)
            for t in r["more_tables"]:
                if t.get("refused_by_site"):
                    why = f"refused: {t['reason']}"
                else:
                    why = "released" if t["released"] else "refused: " + ", ".join(
                        _failed(c, v) for c, v in t["checks"].items() if not v["passed"])
                print(f"            table seed {t['seed']}: {why}", flush=True)
    print("('!' marks a failed check)")
    site_tables = [t for r in rows if r["config"] == "site" for t in [r, *r["more_tables"]]]
    print(f"site column: {sum(t['released'] for t in site_tables)} of {len(site_tables)} tables released "
          f"({len(args.seeds)} models x {args.tables} tables); "
          f"{sum(t.get('reason') == STICKY_REFUSAL for t in site_tables)} refused unevaluated ({STICKY_REFUSAL})")
    atomic_write_text(args.out, json.dumps({"benchmark": "bench_site_column", "configs": CONFIGS, "runs": rows},
                                           indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

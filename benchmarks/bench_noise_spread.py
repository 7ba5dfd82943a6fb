"""Benchmark: the Adult and heart figures at epsilon 1 over training seeds, for one code tree (issue 18).

Issue 18 replaced the DP noise seeded from the job seed by secret noise (OS entropy; a discrete
Gaussian for counts; DP-SGD planned from a DP row estimate; one more encoding release for a private
row count). The noise scale is unchanged, so quality should move only within its seed-to-seed spread.
This script measures that spread on whichever ``fedtab`` is imported, so it runs on the code before
the change (a git worktree on ``PYTHONPATH``) and after it, and writes both runs side by side.

* **heart** (the demo's job, ``fedtab.demo``): the 4 bundled hospitals, DP-CTGAN at epsilon 1 per
  hospital (delta 1e-5), 10 rounds x 2 local epochs, batch 256, 80% of the budget to the encoding, a
  ``hospital`` site column; ``fedtab.evaluate`` has every hospital draw the table itself as the demo's
  release does (the sites' reported row count, ``quantile_map=True``), score it against its own rows
  (target ``num``) and decide every check of the default policy at home; the verdict (released = 1)
  is ``fedtab.release.decide_consortium`` over the hospitals' verdicts. Since 89f2e72 the gate's
  checks carry no value (only verdicts leave a hospital), so the figures are read from each
  hospital's own outcome, which this in-process simulation holds (``ConsortiumEvaluation.site_local``,
  ``site_figures()``): quality of the union (from the hospitals' consortium counts, combined as
  ``fedtab.evaluate`` combined them before), detection AUC and quality as the hospitals' row-weighted
  means, the worst hospital's detection AUC and (new) lowest quality (each hospital now checks its
  own), and DCR share, membership AUC and inference risk at the hospital that refused the check, else
  the most significant one (smallest p-value; what the gate's check used to report). Dropped since
  89f2e72: ``gate_checks`` (each check's value; now None), replaced by ``gate_checks_passed`` and
  ``site_failed_checks``. The heart part needs a tree with site-side evaluation (89f2e72 or later);
  rows recorded before were evaluated on the coordinator's table under the old gate (Holm over all
  hospitals' figures at once), so ``released`` is not comparable across that change.
* **adult** (``suite.py``'s Adult DP row): ``benchmarks/_data.py``'s Adult split, reduced to 5,000
  training rows (the same share of each of the 4 age-quartile sites, data seed 0 for every training
  seed), CTGAN at epsilon 1 per site (delta 1e-5), 4 rounds x 5 local epochs, batch 500, 30% to the
  encoding, target ``income`` declared, no holdout; 5,000 rows sampled and scored as ``suite.py``
  scores: sdmetrics quality (overall, shapes, pairs) against the training rows, detection AUC, TSTR
  ROC-AUC on the 6,513 test rows, DCR share and membership AUC.

The data split and every setting are fixed; only the training seed (which also seeds sampling and
scoring) changes. Under the new code the DP noise does not follow the seed: rerunning a seed gives
other figures, so the spread is the comparison, not seed-by-seed values.

Run (the fedtab imported is the one reported; PYTHONPATH selects another tree):

    python benchmarks/bench_noise_spread.py --label after [--seeds 0 1 ... 19] [--datasets heart adult]
    PYTHONPATH=/tmp/fedtab_old python benchmarks/bench_noise_spread.py --label before

Each run is merged into ``--out`` (default benchmarks/results/bench_noise_spread.json) under its
label; once "before" and "after" are both there, the comparison (means, sds, the difference in units
of the pooled sd) is written too and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The repository goes LAST on the path: a tree on PYTHONPATH (the code before the change) wins over it.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fedtab  # noqa: E402
from evaluation._tables import kinds_of, subsample, to_plain  # noqa: E402
from evaluation.disclosure import DisclosureOptions, evaluate_disclosure  # noqa: E402
from evaluation.fidelity import detection_auc, quality_report  # noqa: E402
from evaluation.utility import evaluate_utility  # noqa: E402
from fedtab.api import FederatedSynthesizer  # noqa: E402
from fedtab.datasets import heart_schema, load_heart_sites  # noqa: E402

sys.path.insert(0, str(HERE))
from _data import LOADERS  # noqa: E402  (the data, identical for both trees: this file's directory)

EPSILON, DELTA = 1.0, 1e-5
HEART = dict(rounds=10, local_epochs=2.0, batch_size=256, preprocessing_share=0.8, site_column="hospital")
ADULT = dict(rounds=4, local_epochs=5.0, batch_size=500, preprocessing_share=0.3, target="income", holdout=0.0)
ADULT_ROWS = 5000
METRICS = {"heart": ("quality", "detection_auc", "dcr_share", "mia_auc", "inference_risk", "quality_mean_site",
                     "quality_min_site", "detection_max_site", "released"),
           "adult": ("quality", "column_shapes", "column_pair_trends", "detection_auc", "tstr_auc", "dcr_share",
                     "mia_auc")}


def _r(x, digits: int = 4):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), digits)


def synthesizer(epsilon: float | None, seed: int, schema, **settings) -> FederatedSynthesizer:
    """A FederatedSynthesizer valid on either tree: after issue 18 a site refuses a non-DP job unless its
    policy allows it (``site_policy``, absent before), and a DP job needs a declared schema (always given)."""
    extra = {}
    if epsilon is None and hasattr(fedtab, "SitePolicy"):
        extra["site_policy"] = fedtab.SitePolicy(allow_non_dp=True)
    return FederatedSynthesizer("ctgan", epsilon=epsilon, delta=DELTA, seed=seed, schema=schema, **settings, **extra)


def ledger_summary(synth) -> dict:
    """Per site: the epsilon spent, the encoding's releases and their first noise multiplier, and the
    DP-SGD plan (noise multiplier, sample rate, steps): the noise scale, to compare across trees."""
    out = {}
    for site, led in synth.privacy_ledger.items():
        entries = list(getattr(led, "entries", []))
        sgd = [e for e in entries if e.phase.startswith("training")]
        enc = [e for e in entries if not e.phase.startswith("training")]
        hist = [e for e in enc if e.phase == "encoding/histogram"] or enc
        out[site] = {"epsilon": _r(led.epsilon, 5), "encoding_releases": len(enc),
                     "encoding_noise_multiplier": _r(hist[0].noise_multiplier, 4) if hist else None,
                     "dpsgd": ({"noise_multiplier": _r(sgd[0].noise_multiplier, 4),
                                "sample_rate": _r(sgd[0].sample_rate, 6), "steps": int(sum(e.steps for e in sgd))}
                               if sgd else None)}
    return out


# --- heart: the demo's job at the release gate ------------------------------------------------------
_TESTED = ("dcr_share", "mia_auc", "inference_risk")


def run_heart(seed: int) -> dict:
    """The demo's job, evaluated as the sites now evaluate (89f2e72): each hospital draws the table
    itself (``n`` rows, ``seed``, quantile map) and decides every check at home; the gate reads their
    verdicts (``decide_consortium``). The figures are read from each hospital's own outcome, which an
    in-process simulation holds (``ConsortiumEvaluation.site_local``); in a deployment they stay at the
    hospitals."""
    from evaluation import combine
    from evaluation._tables import kinds_of, to_plain
    from fedtab.assess import default_rows, evaluate
    from fedtab.federation.site_evaluation import table_sha256
    from fedtab.release import ReleasePolicy, decide_consortium

    sites = load_heart_sites()
    t0 = time.perf_counter()
    synth = synthesizer(EPSILON, seed, heart_schema(), **HEART).fit(sites)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = default_rows(synth)
    ev = evaluate(synth, sites, n=n, seed=seed, quantile_map=True, target="num")
    table = synth.sample(n, seed=seed, quantile_map=True)  # the table the hospitals drew (as fedtab.demo's release)
    verdict = decide_consortium(ReleasePolicy.load(), ev, trained=sorted(synth.privacy_ledger),
                                table_sha256=table_sha256(table))
    score_s = time.perf_counter() - t0
    per = ev.site_figures()
    # The hospitals' own results, combined as fedtab.evaluate combined them before 89f2e72: figures
    # weighted by training rows, and the union's quality from every hospital's consortium counts.
    own = {s: o.evaluation.sites[s] for s, o in ev.site_local.items()}
    combined = combine(own, {s: int(r.n_train) for s, r in own.items()}, synthetic=to_plain(table, synth.schema_),
                       kinds=kinds_of(synth.schema_)).figures

    def worst(check: str):
        """The figure at the hospital that refused it, else at the most significant hospital (smallest
        p-value): the hospital the gate's check used to report."""
        failed = [s for s, v in ev.sites.items() if not v.checks.get(check, True)]
        pick = failed or list(per)
        p_value = {s: per[s].get(f"disclosure.{check}_p") for s in pick}
        site = min(pick, key=lambda s: (1.0 if p_value[s] is None else p_value[s], s)) if pick else None
        return None if site is None else per[site].get(f"disclosure.{check}")

    def extreme(fn, name: str):
        vals = [v.get(name) for v in per.values() if v.get(name) is not None]
        return fn(vals) if vals else None

    return {"dataset": "heart", "seed": seed, "rows_sampled": int(n),
            "quality": _r(combined.get("fidelity.consortium_quality")),
            "detection_auc": _r(combined.get("fidelity.detection_auc")),
            **{c: _r(worst(c)) for c in _TESTED},
            "quality_mean_site": _r(combined.get("fidelity.quality")),
            "quality_min_site": _r(extreme(min, "fidelity.quality")),
            "detection_max_site": _r(extreme(max, "fidelity.detection_auc")),
            "released": int(bool(verdict.released)), "failed_checks": [c.name for c in verdict.failed],
            "gate_checks_passed": {c.name: bool(c.passed) for c in verdict.checks},
            "site_failed_checks": {s: sorted(k for k, ok in v.checks.items() if not ok) for s, v in ev.sites.items()},
            "per_site": {s: {"quality": _r(v.get("fidelity.quality")), "detection_auc": _r(v.get("fidelity.detection_auc")),
                             "dcr_share": _r(v.get("disclosure.dcr_share")), "mia_auc": _r(v.get("disclosure.mia_auc"))}
                         for s, v in per.items()},
            "ledger": ledger_summary(synth), "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1)}


# --- adult: suite.py's reduced 4-site split, scored as suite.py scores --------------------------------
def adult_data() -> dict:
    sites, train, test, schema, target, _ = LOADERS["adult"]()
    frac = ADULT_ROWS / len(train)  # the same share of every age-quartile site (suite.py's reduction, seed 0)
    sites = {k: v.sample(frac=frac, random_state=0).reset_index(drop=True) for k, v in sites.items()}
    train = pd.concat(sites.values(), ignore_index=True)
    return {"sites": sites, "schema": schema, "kinds": kinds_of(schema), "target": target,
            "train": to_plain(train, schema), "test": to_plain(test, schema),
            "site_rows": {k: len(v) for k, v in sites.items()}}


def run_adult(seed: int, data: dict) -> dict:
    t0 = time.perf_counter()
    synth = synthesizer(EPSILON, seed, data["schema"], **ADULT).fit(data["sites"])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    synthetic = to_plain(synth.sample(len(data["train"]), seed=seed + 1), data["schema"])  # as run_method.py
    kinds, train, test = data["kinds"], data["train"], data["test"]
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):  # suite.py's score()
        overall, shapes, pairs = quality_report(subsample(train, 5000, rng), subsample(synthetic, 5000, rng), kinds)[:3]
        n_det = min(len(train), len(synthetic), 5000)
        det = detection_auc(subsample(train, n_det, rng), subsample(synthetic, n_det, rng), kinds, seed=seed)
        util = evaluate_utility(train, test, synthetic, kinds, data["target"], seed=seed)
        hold = subsample(test, len(train), rng)
        disc = evaluate_disclosure(train, hold, synthetic, kinds, target=data["target"], seed=seed,
                                   options=DisclosureOptions(anonymeter=False))
    score_s = time.perf_counter() - t0
    return {"dataset": "adult", "seed": seed, "quality": _r(overall), "column_shapes": _r(shapes),
            "column_pair_trends": _r(pairs), "detection_auc": _r(det), "tstr_auc": _r(util.synthetic_score),
            "trtr_auc": _r(util.real_score), "dcr_share": _r(disc.dcr_share), "mia_auc": _r(disc.mia_auc),
            "ledger": ledger_summary(synth), "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1)}


# --- summary and output -----------------------------------------------------------------------------
def summarise(rows: list[dict], dataset: str) -> dict:
    out = {}
    for m in METRICS[dataset] + ("fit_seconds", "score_seconds"):
        vals = [r[m] for r in rows if r["dataset"] == dataset and r.get(m) is not None]
        if vals:
            out[m] = {"mean": _r(statistics.fmean(vals)), "sd": _r(statistics.stdev(vals)) if len(vals) > 1 else None,
                      "min": _r(min(vals)), "max": _r(max(vals)), "n": len(vals)}
    return out


def compare(before: dict, after: dict) -> dict:
    """Per dataset and metric: both means and sds, the difference of the means, and that difference in
    units of the pooled sd and of its standard error (Welch's t; |t| < ~2 is within the spread)."""
    out = {}
    for ds in METRICS:
        b, a = before.get("summary", {}).get(ds, {}), after.get("summary", {}).get(ds, {})
        for m in METRICS[ds]:
            if m not in b or m not in a:
                continue
            d = a[m]["mean"] - b[m]["mean"]
            sb, sa = b[m]["sd"] or 0.0, a[m]["sd"] or 0.0
            pooled = math.sqrt((sb ** 2 + sa ** 2) / 2)
            se = math.sqrt(sb ** 2 / b[m]["n"] + sa ** 2 / a[m]["n"])
            out.setdefault(ds, {})[m] = {"before": f"{b[m]['mean']:.3f} +- {sb:.3f}", "after": f"{a[m]['mean']:.3f} +- {sa:.3f}",
                                         "difference": _r(d), "difference_in_pooled_sd": _r(d / pooled) if pooled else None,
                                         "welch_t": _r(d / se, 2) if se else None}
    return out


def provenance() -> dict:
    tree = Path(fedtab.__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=10).stdout.strip()
    dirty = bool(git("status", "--porcelain", "-uno", "--", "fedtab", "evaluation", "connectors"))
    versions = {"python": platform.python_version()}
    for n in ("torch", "opacus", "sdmetrics", "scikit-learn", "pandas", "numpy"):
        try:
            versions[n] = version(n)
        except Exception:  # noqa: BLE001
            pass
    import evaluation

    return {"fedtab_file": fedtab.__file__, "evaluation_file": evaluation.__file__, "tree": str(tree),
            "commit": git("rev-parse", "HEAD") or "unknown", "dirty": dirty,
            "subject": git("log", "-1", "--format=%s")[:160], "has_site_policy": hasattr(fedtab, "SitePolicy"),
            "benchmark_script_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                                      text=True).stdout.strip(),
            "versions": versions, "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), no GPU"}


def print_summary(label: str, run: dict) -> None:
    for ds, s in run["summary"].items():
        print(f"[{label}] {ds}: " + ", ".join(f"{m} {v['mean']:.3f} +- {(v['sd'] or 0):.3f}" for m, v in s.items()
                                               if not m.endswith("seconds"))
              + f"; fit {s['fit_seconds']['mean']:.1f} s, scoring {s['score_seconds']['mean']:.1f} s per seed")


def print_comparison(cmp: dict) -> None:
    print(f"\n{'dataset':7} {'metric':20} {'before (mean +- sd)':>20} {'after (mean +- sd)':>20} {'diff':>8} "
          f"{'diff/sd':>8} {'Welch t':>8}")
    for ds, ms in cmp.items():
        for m, c in ms.items():
            print(f"{ds:7} {m:20} {c['before']:>20} {c['after']:>20} {c['difference']:>8.3f} "
                  f"{(c['difference_in_pooled_sd'] if c['difference_in_pooled_sd'] is not None else float('nan')):>8.2f} "
                  f"{(c['welch_t'] if c['welch_t'] is not None else float('nan')):>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="this run's key in the JSON, e.g. before / after")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_noise_spread.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    ap.add_argument("--datasets", nargs="+", choices=sorted(METRICS), default=["heart", "adult"])
    ap.add_argument("--merge", action="store_true",
                    help="keep this label's earlier rows for the (dataset, seed) pairs not rerun; refused if "
                         "they were measured on another commit")
    args = ap.parse_args()
    prov = provenance()
    print(f"fedtab imported from {prov['fedtab_file']} (commit {prov['commit'][:10]}{'+dirty' if prov['dirty'] else ''}; "
          f"SitePolicy: {prov['has_site_policy']})", flush=True)
    started = time.perf_counter()
    rows, site_rows = [], None
    print(f"{'dataset':7} {'seed':>4} {'quality':>8} {'detect':>8} {'TSTR':>8} {'DCR':>8} {'MIA':>8} {'infer':>8} "
          f"{'released':>8} {'eps max':>8} {'fit s':>6} {'score s':>7}", flush=True)
    for ds in args.datasets:
        data = adult_data() if ds == "adult" else None
        if data is not None:
            site_rows = data["site_rows"]
        for seed in args.seeds:
            r = run_heart(seed) if ds == "heart" else run_adult(seed, data)
            rows.append(r)
            cell = lambda k: "" if r.get(k) is None else f"{r[k]:.3f}"  # noqa: E731
            eps_max = max(v["epsilon"] for v in r["ledger"].values())
            print(f"{ds:7} {seed:>4} {cell('quality'):>8} {cell('detection_auc'):>8} {cell('tstr_auc'):>8} "
                  f"{cell('dcr_share'):>8} {cell('mia_auc'):>8} {cell('inference_risk'):>8} "
                  f"{('yes' if r['released'] else 'no') if 'released' in r else '':>8} {eps_max:>8.3f} "
                  f"{r['fit_seconds']:>6.1f} {r['score_seconds']:>7.1f}", flush=True)
    command = ((f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else "")
               + "python " + " ".join(sys.argv))
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    commands, seconds = [command], time.perf_counter() - started
    if args.merge and args.label in saved.get("runs", {}):
        earlier = saved["runs"][args.label]
        was = (earlier["provenance"]["commit"], earlier["provenance"]["dirty"])
        if was != (prov["commit"], prov["dirty"]):
            sys.exit(f"--merge: the earlier '{args.label}' rows ran on {was}, this run on "
                     f"{(prov['commit'], prov['dirty'])}; not merged (nothing written)")
        rerun = {(r["dataset"], r["seed"]) for r in rows}
        rows = [r for r in earlier["rows"] if (r["dataset"], r["seed"]) not in rerun] + rows
        rows.sort(key=lambda r: (list(METRICS).index(r["dataset"]), r["seed"]))
        commands = earlier.get("commands", [earlier.get("command")]) + commands
        seconds += earlier.get("total_seconds", 0.0)
        site_rows = site_rows or earlier.get("adult_site_rows")
    datasets = [ds for ds in METRICS if any(r["dataset"] == ds for r in rows)]
    run = {"provenance": prov, "commands": commands,
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "seeds": {ds: [r["seed"] for r in rows if r["dataset"] == ds] for ds in datasets},
           "settings": {"epsilon": EPSILON, "delta": DELTA, "heart": HEART, "adult": {**ADULT, "train_rows": ADULT_ROWS}},
           "adult_site_rows": site_rows, "total_seconds": round(seconds, 1), "rows": rows,
           "summary": {ds: summarise(rows, ds) for ds in datasets}}
    print_summary(args.label, run)
    saved = {"benchmark": "bench_noise_spread", "issue": 18, "doc": __doc__.strip().split("\n\n")[0], **saved}
    saved.setdefault("runs", {})[args.label] = run
    if "before" in saved["runs"] and "after" in saved["runs"]:
        saved["comparison"] = compare(saved["runs"]["before"], saved["runs"]["after"])
        saved["commits"] = {k: saved["runs"][k]["provenance"]["commit"] for k in ("before", "after")}
        print_comparison(saved["comparison"])
    else:
        saved.pop("comparison", None)
        saved.pop("commits", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1, default=str))
    tmp.replace(args.out)
    print(f"total {run['total_seconds']:.0f} s (all this label's runs); wrote {args.out} (label {args.label!r})")


if __name__ == "__main__":
    main()

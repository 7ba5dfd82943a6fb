"""Benchmark: the federated marginal model ("mst", issue 20 part 1) beside CTGAN (and TVAE), over seeds.

What it measures, for every (table, model, epsilon, seed): ``FederatedSynthesizer(model, ...).fit(sites)``,
then ``sample(n, seed=seed)`` with ``n`` = the pooled real training rows (the training seed is the
sampling seed), scored as ``benchmarks/suite.py`` scores every method (so the figures sit beside
README's suite rows): sdmetrics quality (overall, column shapes, pair trends; ``evaluation.fidelity.
quality_report`` on <= 5,000 rows a side) against the pooled real training rows, detection AUC
(``evaluation.fidelity.detection_auc``), TSTR ROC-AUC (``evaluation.utility.evaluate_utility``: trained
on the synthetic rows, tested on the real test rows; TRTR beside it); fit seconds (the whole federation,
in process); the seconds and rows/s of ``sample(100_000, seed=seed)``; the largest site ledger's epsilon;
and, on heart, the synthetic means of age, trestbps, chol and thalach (and their missing shares) against
the pooled real training rows'.

Tables (``benchmarks/_data.py``'s splits, data seed 0 for every training seed):

* **heart**: the 4 bundled hospitals, each hospital's rows split 80/20 (stratified on ``num > 0``); the
  sites train on their 80% (735 rows), TSTR is tested on the pooled 20% (185 rows). Target ``num``,
  declared to the synthesizer; TSTR is scored on ``num > 0`` as suite.py and bench_models.py score it
  (``tstr_auc``), and also on the 5 levels of ``num`` (``tstr_auc_num5``, one-vs-rest macro AUC).
* **adult**: the age-quartile split into 4 sites, reduced to 5,000 training rows (the same share of each
  site) exactly as ``bench_noise_spread.adult_data()`` / suite.py's Adult do; target ``income``; TSTR on
  the 6,513 test rows.

One configuration for every table and model (no per-table tuning): delta 1e-5, ``holdout=0.0`` (the
split above is the holdout), the utility target declared, and under DP 30% of each site's epsilon to
the encoding (``preprocessing_share=0.3``: what bench_models.py, suite.py and run_method.py fix for every
table; for mst the remaining 70% pays for its three measurement phases); everything else is the API's
and the model's defaults (mst: 16 bins, 1,000 mirror-descent iterations, shares 0.25/0.25/0.5). The
neural models' training length is the one the existing benchmarks use for that table: CTGAN as
bench_noise_spread.py (heart: 10 rounds x 2 local epochs, batch 256, the demo's length; Adult: 4 x 5,
batch 500); TVAE as suite_plan.py (heart: 5 x 20, batch 64; Adult: 4 x 10, batch 500). Not copied from
bench_noise_spread.py's heart job, since they are settings of that one table: its 80% encoding share
and the ``hospital`` site column. mst has no rounds or epochs (one pass of measurements).

Epsilon: 1 per site (each site's ledger, preprocessing included; the sites are disjoint) and non-DP
(``epsilon=None`` with ``SitePolicy(allow_non_dp=True)``). Under DP the noise comes from the secret source
(issue 18), so a rerun of a seed gives other figures: read the spread (mean +- sd over seeds), not
seed-by-seed values. torch, BLAS and the evaluation's gradient boosting run on one thread each; the sites
train side by side (the in-process transport's default). The machine is a shared 2-core box, so every
timing carries the other jobs' noise.

Run:

    python benchmarks/bench_mst.py [--datasets heart adult] [--models mst ctgan tvae]
        [--epsilons 1 none] [--seeds 0 1 2] [--sample-rows 100000] [--out benchmarks/results/bench_mst.json]

The JSON holds every run's row (or its error and traceback), the summary (mean, sd, min, max, n per
table, model and epsilon), the arguments, the command, the settings and the provenance (commit,
versions). It is rewritten after every run, so an interrupted benchmark keeps what it measured.
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
import traceback
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repository, for fedtab and evaluation
sys.path.insert(0, str(HERE))  # benchmarks/, for _data

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fedtab  # noqa: E402
from _data import LOADERS  # noqa: E402
from evaluation._tables import kinds_of, to_plain  # noqa: E402
from evaluation.utility import evaluate_utility  # noqa: E402

DELTA = 1e-5
DP_PREPROCESSING_SHARE = 0.3  # bench_models.py / suite.py (run_method.py): every table, every model
ADULT_ROWS = 5000  # bench_noise_spread.py / suite.py's reduced Adult (and any larger table)
PREPROCESSING_SHARE = [DP_PREPROCESSING_SHARE]  # --preprocessing-share; "default": the API's own
# Training length of the neural models, from the existing benchmarks (see the docstring); mst: defaults.
TRAINING = {
    ("heart", "ctgan"): dict(rounds=10, local_epochs=2.0, batch_size=256),  # bench_noise_spread.HEART
    ("adult", "ctgan"): dict(rounds=4, local_epochs=5.0, batch_size=500),  # bench_noise_spread.ADULT
    ("heart", "tvae"): dict(rounds=5, local_epochs=20.0, batch_size=64),  # suite_plan.PLANS["heart"]
    ("adult", "tvae"): dict(rounds=4, local_epochs=10.0, batch_size=500),  # suite_plan.PLANS["adult"]
}
HEART_MEANS = ("age", "trestbps", "chol", "thalach")
METRICS = ("quality", "column_shapes", "column_pair_trends", "detection_auc", "tstr_auc", "trtr_auc",
           "tstr_auc_num5", "fit_seconds", "sample_seconds_100k", "sample_rows_per_s", "epsilon_spent_max")


def _r(x, digits: int = 4):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), digits)


# --- data --------------------------------------------------------------------------------------------
def load(dataset: str) -> dict:
    sites, train, test, schema, target, derive = LOADERS[dataset]()
    if len(train) > ADULT_ROWS:  # bench_noise_spread.adult_data(): the same share of every site
        frac = ADULT_ROWS / len(train)
        sites = {k: v.sample(frac=frac, random_state=0).reset_index(drop=True) for k, v in sites.items()}
        train = pd.concat(sites.values(), ignore_index=True)
    return {"sites": sites, "schema": schema, "kinds": kinds_of(schema), "target": target, "derive": derive,
            "train": to_plain(train, schema), "test": to_plain(test, schema),
            "site_rows": {k: len(v) for k, v in sites.items()}, "test_rows": len(test)}


# --- one run -----------------------------------------------------------------------------------------
def settings_for(dataset: str, model: str, epsilon: float | None) -> dict:
    s = dict(TRAINING.get((dataset, model), {}))
    if epsilon is not None and PREPROCESSING_SHARE[0] is not None:
        s["preprocessing_share"] = PREPROCESSING_SHARE[0]
    return s


def synthesizer(dataset: str, model: str, epsilon: float | None, seed: int, data: dict):
    extra = {} if epsilon is not None else {"site_policy": fedtab.SitePolicy(allow_non_dp=True)}
    return fedtab.FederatedSynthesizer(model, epsilon=epsilon, delta=DELTA, seed=seed, schema=data["schema"],
                                       holdout=0.0, target=data["target"], **settings_for(dataset, model, epsilon),
                                       **extra)


def score(synthetic: pd.DataFrame, data: dict, seed: int) -> dict:
    """suite.py's ``score`` (quality, detection, TSTR), without the disclosure figures."""
    from suite import fidelity_and_utility

    kinds, train, test, derive, target = data["kinds"], data["train"], data["test"], data["derive"], data["target"]
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        overall, shapes, pairs, det, util = fidelity_and_utility(synthetic, data, seed=seed, rng=rng)
        out = {"quality": _r(overall), "column_shapes": _r(shapes), "column_pair_trends": _r(pairs),
               "detection_auc": _r(det), "tstr_auc": _r(util.synthetic_score), "trtr_auc": _r(util.real_score)}
        if derive is not None:  # heart: also the 5 levels of num (one-vs-rest macro AUC)
            raw = evaluate_utility(train, test, synthetic, kinds, target, seed=seed)
            out.update(tstr_auc_num5=_r(raw.synthetic_score), trtr_auc_num5=_r(raw.real_score))
    return out


def sanity(synthetic: pd.DataFrame, data: dict) -> list[str]:
    """Plain warnings about absurd tables: a numerical value outside the schema's bounds or infinite, a
    column missing everywhere that is not missing everywhere in the real rows, a category not in the
    schema."""
    out = []
    for spec in data["schema"].columns:
        col = synthetic[spec.name]
        if spec.type == "numerical":
            v = col.to_numpy(dtype="float64")
            if np.isinf(v).any():
                out.append(f"{spec.name}: {int(np.isinf(v).sum())} infinite values")
            lo, hi = spec.lower, spec.upper
            bad = ((v < lo) | (v > hi)).sum() if lo is not None and hi is not None else 0
            if bad:
                out.append(f"{spec.name}: {int(bad)} values outside [{lo:g}, {hi:g}]")
        elif spec.type == "categorical" and spec.categories:
            unknown = set(col.dropna().unique()) - set(map(str, spec.categories))
            if unknown:
                out.append(f"{spec.name}: categories not in the schema {sorted(unknown)[:5]}")
        if col.isna().all() and not data["train"][spec.name].isna().all():
            out.append(f"{spec.name}: missing in every synthetic row")
    return out


def run_one(dataset: str, model: str, epsilon: float | None, seed: int, data: dict, sample_rows: int) -> dict:
    row = {"dataset": dataset, "model": model, "epsilon": epsilon, "seed": seed,
           "settings": settings_for(dataset, model, epsilon)}
    try:
        synth = synthesizer(dataset, model, epsilon, seed, data)
        t0 = time.perf_counter()
        synth.fit(data["sites"])
        row["fit_seconds"] = round(time.perf_counter() - t0, 2)
        n = len(data["train"])
        table = to_plain(synth.sample(n, seed=seed), data["schema"])
        t0 = time.perf_counter()
        synth.sample(sample_rows, seed=seed)
        dt = time.perf_counter() - t0
        row.update(sample_seconds_100k=round(dt, 2) if sample_rows == 100_000 else None,
                   sample_seconds=round(dt, 2), sample_rows=sample_rows, sample_rows_per_s=round(sample_rows / dt),
                   rows_sampled=n)
        if epsilon is not None:
            row["epsilon_spent_max"] = _r(max(led.epsilon for led in synth.privacy_ledger.values()), 5)
        t0 = time.perf_counter()
        row.update(score(table, data, seed))
        row["score_seconds"] = round(time.perf_counter() - t0, 1)
        if dataset == "heart":
            row["means"] = {c: {"synthetic": _r(table[c].mean(), 2), "real": _r(data["train"][c].mean(), 2)}
                            for c in HEART_MEANS}
            row["missing_share"] = {c: {"synthetic": _r(table[c].isna().mean(), 3),
                                        "real": _r(data["train"][c].isna().mean(), 3)} for c in HEART_MEANS}
        row["warnings"] = sanity(table, data)
        nan_figures = [k for k in ("quality", "detection_auc", "tstr_auc") if row.get(k) is None]
        if nan_figures:
            row["warnings"].append(f"not finite: {nan_figures}")
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (recorded with its traceback; the other runs go on)
        row.update(status=f"error: {type(e).__name__}: {e}"[:500], traceback=traceback.format_exc())
        print(row["traceback"], file=sys.stderr, flush=True)
    return row


# --- summary and output ------------------------------------------------------------------------------
def _eps_label(eps) -> str:
    return "non-DP" if eps is None else f"{eps:g}"


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["epsilon"]), []).append(r)
    out = []
    for (ds, model, eps), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        s = {"dataset": ds, "model": model, "epsilon": eps, "seeds": [r["seed"] for r in ok],
             "failed_seeds": [r["seed"] for r in rs if r.get("status") != "ok"]}
        stats = {}
        keys = list(METRICS)
        if ds == "heart":
            keys += [f"mean_{c}" for c in HEART_MEANS]
        for m in keys:
            if m.startswith("mean_"):
                vals = [r["means"][m[5:]]["synthetic"] for r in ok if r.get("means")]
                vals = [v for v in vals if v is not None]
            else:
                vals = [r[m] for r in ok if r.get(m) is not None]
            if vals:
                stats[m] = {"mean": _r(statistics.fmean(vals)), "sd": _r(statistics.stdev(vals)) if len(vals) > 1 else None,
                            "min": _r(min(vals)), "max": _r(max(vals)), "n": len(vals)}
        s["stats"] = stats
        if ds == "heart" and ok:
            s["real_means"] = {c: ok[0]["means"][c]["real"] for c in HEART_MEANS}
        out.append(s)
    return out


def _pm(stats: dict, key: str, fmt: str = ".3f") -> str:
    v = stats.get(key)
    if v is None:
        return "-"
    sd = v["sd"] if v["sd"] is not None else 0.0
    return f"{v['mean']:{fmt}} +- {sd:{fmt}}"


def table_text(summary: list[dict]) -> str:
    head = (f"{'table':6} {'model':6} {'eps':>6} {'n':>2} {'quality':>15} {'shapes':>15} {'pairs':>15} "
            f"{'detection AUC':>15} {'TSTR AUC':>15} {'TRTR':>6} {'fit s':>13} {'100k rows/s':>17}")
    lines = [head, "-" * len(head)]
    for s in summary:
        st = s["stats"]
        trtr = st.get("trtr_auc", {}).get("mean")
        lines.append(f"{s['dataset']:6} {s['model']:6} {_eps_label(s['epsilon']):>6} {len(s['seeds']):>2} "
                     f"{_pm(st, 'quality'):>15} {_pm(st, 'column_shapes'):>15} {_pm(st, 'column_pair_trends'):>15} "
                     f"{_pm(st, 'detection_auc'):>15} {_pm(st, 'tstr_auc'):>15} "
                     f"{(f'{trtr:.3f}' if trtr is not None else '-'):>6} {_pm(st, 'fit_seconds', '.1f'):>13} "
                     f"{_pm(st, 'sample_rows_per_s', ',.0f'):>17}"
                     + (f"   failed seeds {s['failed_seeds']}" if s["failed_seeds"] else ""))
    heart = [s for s in summary if s["dataset"] == "heart" and s.get("real_means")]
    if heart:
        real = heart[0]["real_means"]
        lines += ["", "heart: synthetic column means (mean +- sd over seeds) against the pooled real training rows; "
                      "TSTR on num > 0 above, on the 5 levels of num here"]
        lines.append(f"{'model':6} {'eps':>6} " + " ".join(f"{c + ' (real ' + format(real[c], '.1f') + ')':>22}"
                                                          for c in HEART_MEANS) + f" {'TSTR num 5-level':>17}")
        for s in heart:
            lines.append(f"{s['model']:6} {_eps_label(s['epsilon']):>6} "
                         + " ".join(f"{_pm(s['stats'], 'mean_' + c, '.1f'):>22}" for c in HEART_MEANS)
                         + f" {_pm(s['stats'], 'tstr_auc_num5'):>17}")
    return "\n".join(lines)


def provenance() -> dict:
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=10).stdout.strip()
    versions = {"python": platform.python_version()}
    for n in ("torch", "opacus", "sdmetrics", "scikit-learn", "pandas", "numpy", "mbi", "private-pgm", "jax"):
        try:
            versions[n] = version(n)
        except Exception:  # noqa: BLE001
            pass
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "-uno", "--", "fedtab", "evaluation")),
            "subject": git("log", "-1", "--format=%s")[:160], "versions": versions,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), no GPU",
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=sorted(LOADERS), default=["heart", "adult"])
    ap.add_argument("--preprocessing-share", default=str(DP_PREPROCESSING_SHARE),
                    help="under DP, the encoding's share of epsilon, or 'default' (the API's)")
    ap.add_argument("--models", nargs="+", choices=("mst", "ctgan", "tvae"), default=["mst", "ctgan"])
    ap.add_argument("--epsilons", nargs="+", default=["1", "none"], help="per-site epsilon, or 'none' (non-DP)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seed = sampling seed")
    ap.add_argument("--sample-rows", type=int, default=100_000, help="rows drawn for the sampling speed")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_mst.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epsilons = [None if e.lower() in ("none", "nondp", "non-dp") else float(e) for e in args.epsilons]
    PREPROCESSING_SHARE[0] = None if args.preprocessing_share == "default" else float(args.preprocessing_share)
    prov = provenance()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    print(f"fedtab at commit {prov['commit'][:10]}{'+dirty' if prov['dirty'] else ''}; load {prov['load_average_at_start']}",
          flush=True)
    started = time.perf_counter()
    rows, data_info = [], {}
    doc = {"benchmark": "bench_mst", "issue": 20, "doc": __doc__.strip().split("\n\n")[0], "command": command,
           "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "provenance": prov,
           "settings": {"delta": DELTA, "holdout": 0.0, "target_declared": True,
                        "dp_preprocessing_share": PREPROCESSING_SHARE[0] or "the API's default",
                        "training": {f"{d}/{m}": s for (d, m), s in TRAINING.items()},
                        "mst_options": "defaults (fedtab.models.marginal.DEFAULT_OPTIONS)",
                        "adult_train_rows": ADULT_ROWS, "torch_threads": 1}}

    def write() -> None:
        doc.update(data=data_info, total_seconds=round(time.perf_counter() - started, 1), rows=rows,
                   summary=summarise(rows))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(args.out)

    print(f"{'table':6} {'model':6} {'eps':>6} {'seed':>4} {'quality':>8} {'detect':>7} {'TSTR':>6} {'fit s':>7} "
          f"{'rows/s':>9} {'eps max':>7}  status", flush=True)
    for ds in args.datasets:
        data = load(ds)
        data_info[ds] = {"site_rows": data["site_rows"], "train_rows": len(data["train"]), "test_rows": data["test_rows"],
                         "target": data["target"], "tstr_target": "num > 0" if ds == "heart" else data["target"]}
        for eps in epsilons:
            for model in args.models:
                for seed in args.seeds:
                    r = run_one(ds, model, eps, seed, data, args.sample_rows)
                    rows.append(r)
                    c = lambda k, f=".3f": "" if r.get(k) is None else format(r[k], f)  # noqa: E731
                    print(f"{ds:6} {model:6} {_eps_label(eps):>6} {seed:>4} {c('quality'):>8} {c('detection_auc'):>7} "
                          f"{c('tstr_auc'):>6} {c('fit_seconds', '.1f'):>7} {c('sample_rows_per_s', ',.0f'):>9} "
                          f"{c('epsilon_spent_max', '.3f'):>7}  {r['status']}"
                          + (f"; warnings: {r['warnings']}" if r.get("warnings") else ""), flush=True)
                    write()
    write()
    print()
    print(table_text(doc["summary"]))
    print(f"\ntotal {doc['total_seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()

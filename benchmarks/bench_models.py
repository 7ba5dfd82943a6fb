"""Every registered model, federated, non-DP and DP (epsilon 1 and 10 per site, preprocessing included).

Datasets and splits (one run, seed 0):

* **Adult** (/work/shared/data/adult.csv; ``' ?'`` is missing, categories stripped of their leading
  space): stratified 80/20 split on ``income``; the 80% is cut into **4 non-IID sites by age quartile**
  (each site holds one age band, so income rates and occupations differ between sites).
* **Heart disease**: the 4 real hospitals (bundled); each hospital's rows are split 80/20, stratified
  on ``num > 0``; sites train on their 80%, the pooled 20% is the test set.

Metrics: sdmetrics 0.32 QualityReport on 5,000 training rows vs 5,000 synthetic rows (``evaluation.
fidelity.quality_report``); TSTR ROC-AUC (``evaluation.utility``: HistGradientBoosting trained on the
synthetic rows, tested on the real 20%; target ``income``, and ``num > 0`` for heart); fit time (the
whole federation, in process); sampling rows/s of ``FederatedSynthesizer.sample`` (model + decoding)
and of the model alone. Local training and sampling run on ONE torch thread (the federation pins
local training to one thread; sampling is pinned too), the evaluation's gradient boosting on one
OpenMP thread. The machine is a shared 2-core box: timings carry that noise.

    python benchmarks/bench_models.py [--datasets adult heart] [--models ctgan tvae diffusion]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for fedtab and evaluation

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import fedtab
from evaluation._tables import Kinds, kinds_of, subsample, to_plain
from evaluation.fidelity import quality_report
from evaluation.utility import evaluate_utility
from fedtab.federation import training
from fedtab.models.registry import available_models
from fedtab.schema import atomic_write_text

from _data import load_adult, load_heart  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
# Training length per (dataset, model): rounds x local epochs; tuned within the time available.
PLAN = {
    ("adult", "ctgan"): dict(rounds=4, local_epochs=1.0, batch_size=500),
    ("adult", "tvae"): dict(rounds=4, local_epochs=3.0, batch_size=500),
    ("adult", "diffusion"): dict(rounds=4, local_epochs=4.0, batch_size=500),
    ("heart", "ctgan"): dict(rounds=5, local_epochs=10.0, batch_size=64),
    ("heart", "tvae"): dict(rounds=5, local_epochs=20.0, batch_size=64),
    ("heart", "diffusion"): dict(rounds=5, local_epochs=20.0, batch_size=64),
}
EPSILONS = (None, 10.0, 1.0)


def score(real_train, test, synth, schema, target, derive, seed=0):
    kinds = kinds_of(schema)
    rt, te, sy = (to_plain(f, schema) for f in (real_train, test, synth))
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        quality = quality_report(subsample(rt, 5000, rng), subsample(sy, 5000, rng), kinds)[0]
        if derive is not None:
            rt, te, sy = derive(rt), derive(te), derive(sy)
        util = evaluate_utility(rt, te, sy, Kinds(kinds.numerical, kinds.categorical), target, seed=seed)
    return quality, util.synthetic_score, util.real_score


def run_one(dataset, model, epsilon, data, *, seed=0):
    sites, train, test, schema, target, derive = data
    plan = PLAN[(dataset, model)]
    synth = fedtab.FederatedSynthesizer(model, epsilon=epsilon, seed=seed, schema=schema, holdout=0.0, **plan)
    t0 = time.perf_counter()
    synth.fit(sites)
    fit_s = time.perf_counter() - t0
    n = len(train)
    t0 = time.perf_counter()
    frame = synth.sample(n, seed=seed + 1)
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    training.sample_encoded(synth._model, n, seed=seed + 2)
    model_s = time.perf_counter() - t0
    quality, tstr, trtr = score(train, test, frame, schema, target, derive, seed=seed)
    eps_spent = max(l.epsilon for l in synth.privacy_ledger.values()) if epsilon is not None else None
    return {"dataset": dataset, "model": model, "epsilon": epsilon, "epsilon_spent_max": eps_spent,
            "quality": round(quality, 4), "tstr_auc": round(tstr, 4), "trtr_auc": round(trtr, 4),
            "fit_seconds": round(fit_s, 1), "sample_rows_per_s": round(n / sample_s),
            "model_sample_rows_per_s": round(n / model_s), "rows_sampled": n, **plan}


def table_md(rows) -> str:
    head = ("| dataset | model | epsilon | quality | TSTR AUC | TRTR AUC | fit s | sample rows/s | model rows/s |"
            " rounds x epochs |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['dataset']} | {r['model']} | {r['epsilon'] if r['epsilon'] is not None else 'non-DP'} | "
        f"{r['quality']:.3f} | {r['tstr_auc']:.3f} | {r['trtr_auc']:.3f} | {r['fit_seconds']:.0f} | "
        f"{r['sample_rows_per_s']:,} | {r['model_sample_rows_per_s']:,} | {r['rounds']} x {r['local_epochs']:g} |\n"
        for r in rows)
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["adult", "heart"])
    ap.add_argument("--models", nargs="+", default=list(available_models()))
    ap.add_argument("--epsilons", nargs="+", default=["none", "10", "1"])
    ap.add_argument("--out", default="bench_models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epsilons = [None if e == "none" else float(e) for e in args.epsilons]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch_threads": 1,
            "torch": torch.__version__, "note": "shared 2-core machine; timings are noisy"}
    rows = []
    for dataset in args.datasets:
        data = load_adult() if dataset == "adult" else load_heart()
        for eps in epsilons:  # non-DP of every model first: the headline figures come out early
            for model in args.models:
                rows.append(run_one(dataset, model, eps, data))
                print(json.dumps(rows[-1]), flush=True)
                # Written after every run, so an interrupted benchmark keeps what it measured.
                atomic_write_text(OUT / f"{args.out}.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
                atomic_write_text(OUT / f"{args.out}.md", f"# bench_models\n\n{table_md(rows)}\n\n{json.dumps(meta)}\n")
    print(table_md(rows))


if __name__ == "__main__":
    main()

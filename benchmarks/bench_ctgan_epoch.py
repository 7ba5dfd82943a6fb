"""Time per local training step of fedtab's CTGAN on one Adult site, and where it goes (torch.profiler).

The rows are encoded exactly as the federation encodes them: a one-round federated fit of
``bench_ctgan_adult.py``'s 4 age-quartile sites records the first site's encoded matrix and training
setup (the encoding is not timed). A ``LocalTrainer`` is then built as a federated round builds it (the
federation's Adam settings, one thread) and timed over blocks of steps, interleaved across the batch
sizes asked for (same machine load for each); the median block is reported, with the projected local
training time of one epoch over the 4 sites (each site runs ceil(rows / batch) steps per epoch). The
whole-system comparison with SDV (same run, same rows) is ``bench_ctgan_adult.py``; this one is for
finding the hot spots of a step.

    python benchmarks/bench_ctgan_epoch.py [--batches 500,1000] [--dp] [--profile-steps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ctgan_adult as adult  # noqa: E402  (the same data, split and sites)


def encoded_site(data_path: str, seed: int) -> tuple[dict, np.ndarray, dict[str, int]]:
    """(training setup, encoded rows) of the first site, as the federation produces them; site sizes."""
    import fedtab
    from fedtab.federation import training

    raw = adult.load_adult(data_path)
    train_raw, _ = adult.split(raw, seed=seed)
    sites = adult.age_sites(train_raw)
    seen: dict = {}
    original = training.train_one_round

    def recording(setup, data, weights, **kw):
        seen.setdefault("site", (setup, data))
        return original(setup, data, weights, **kw)

    training.train_one_round = recording
    try:
        fedtab.FederatedSynthesizer("ctgan", rounds=1, local_epochs=0.001, seed=seed, holdout=0.0,
                                    missing_markers=("?",), site_policy=fedtab.SitePolicy(allow_non_dp=True)).fit(sites)
    finally:
        training.train_one_round = original
    setup, data = seen["site"]
    return setup, data, {s: len(f) for s, f in sites.items()}


def make_trainer(setup: dict, data: np.ndarray, *, batch: int, dp: bool, seed: int):
    from fedtab.federation import training
    from fedtab.privacy.dpsgd import DPSGDConfig
    from fedtab.training.loop import LocalTrainer
    from fedtab.transform.table import TableTransformer

    model = training.build_model(setup, TableTransformer.from_dict(setup["transformer"]))
    config = (DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=min(1.0, batch / len(data)),
                          grad_sample_mode=training.GRAD_SAMPLE_MODE) if dp else None)
    optimizer = dataclasses.replace(training.OPTIMIZER, **model.optimizer_options())
    return LocalTrainer(model, data, batch_size=batch, dp=config, seed=seed, optimizer=optimizer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/adult.csv")
    ap.add_argument("--batches", default="500,1000", help="comma-separated batch sizes, timed interleaved")
    ap.add_argument("--dp", action="store_true", help="also time DP-SGD (book-keeping clipping) steps")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--profile-steps", type=int, default=20, help="steps under torch.profiler (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_ctgan_epoch.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    setup, data, site_rows = encoded_site(args.data, args.seed)
    batches = [int(b) for b in args.batches.split(",")]
    trainers = {(b, dp): make_trainer(setup, data, batch=b, dp=dp, seed=args.seed)
                for b in batches for dp in ((False, True) if args.dp else (False,))}
    for t in trainers.values():
        t.train(3)  # warm-up: optimizer state, first-call allocations
    times: dict = {k: [] for k in trainers}
    for _ in range(args.blocks):
        for key, t in trainers.items():
            t0 = time.perf_counter()
            t.train(args.steps)
            times[key].append((time.perf_counter() - t0) / args.steps)
    rows = []
    for (batch, dp), ts in times.items():
        step = statistics.median(ts)
        steps_per_epoch = sum(math.ceil(n / batch) for n in site_rows.values())
        rows.append({"batch_size": batch, "dp": dp, "ms_per_step": round(step * 1e3, 2),
                     "ms_per_step_min": round(min(ts) * 1e3, 2), "steps_per_epoch_4_sites": steps_per_epoch,
                     "local_s_per_epoch": round(step * steps_per_epoch, 3)})
    result = {"benchmark": "fedtab CTGAN local training step, one Adult site (encoded by the federation)",
              "site_rows": int(data.shape[0]), "encoded_width": int(data.shape[1]), "site_rows_all": site_rows,
              "model_options": setup["model_options"], "threads": 1, "blocks": args.blocks,
              "steps_per_block": args.steps, "timings": rows}
    print(f"{'batch':>6} {'DP':>4} {'ms/step':>9} {'min':>7} {'steps/epoch':>12} {'local s/epoch':>14}")
    for r in rows:
        print(f"{r['batch_size']:>6} {str(r['dp']):>4} {r['ms_per_step']:>9.2f} {r['ms_per_step_min']:>7.2f} "
              f"{r['steps_per_epoch_4_sites']:>12} {r['local_s_per_epoch']:>14.3f}")
    if args.profile_steps:
        from torch.profiler import ProfilerActivity, profile

        trainer = trainers[(batches[0], False)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train(args.profile_steps)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / args.profile_steps, 3),
                "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count / args.profile_steps}
               for e in events[:15]]
        result["profile"] = {"batch_size": batches[0], "steps": args.profile_steps, "top_ops_by_self_time": top}
        print(f"\ntop ops by self CPU time (batch {batches[0]}, non-DP, {args.profile_steps} steps):")
        for t in top:
            print(f"  {t['op']:<40} {t['self_ms_per_step']:>7.3f} ms/step  {t['share']:>6.1%}  "
                  f"{t['calls_per_step']:g} calls/step")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Time per epoch: fedtab's CTGAN (non-DP, and DP-SGD) vs ctgan.CTGAN (the engine of SDV's CTGANSynthesizer).

Adult (/work/shared/data/adult.csv), the first 26,048 rows (80%), batch size 500, epochs of
rows // 500 steps each. Both models train on the same encoded matrix: ctgan's own DataTransformer
(benchmarks may import ctgan; fedtab/ never does) is fitted once, outside the timings; for ctgan the
fitted transformer is handed in so its ``fit`` times the training epochs (plus building its DataSampler).
One thread each (``--threads``): fair, and faster on a shared 2-core machine. Timed in the same run.

    python benchmarks/bench_ctgan_epoch.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedtab.models.ctgan import CTGAN
from fedtab.privacy.dpsgd import DPSGDConfig
from fedtab.training.loop import LocalTrainer
from fedtab.transform.spans import ConditionSpan, SpanInfo, span_offsets

DISCRETE = ["workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
            "native-country", "income"]


def encode(df: pd.DataFrame):
    from ctgan.data_transformer import DataTransformer  # reference encoder, benchmark only

    tr = DataTransformer()
    tr.fit(df, DISCRETE)
    matrix = tr.transform(df).astype(np.float32)
    spans, conds = [], []
    for info in tr._column_transform_info_list:
        for k, s in enumerate(info.output_info):
            role = "category" if info.column_type == "discrete" else ("value" if k == 0 else "mode")
            spans.append(SpanInfo(s.dim, s.activation_fn, info.column_name, role))
    for off, s in zip(span_offsets(spans), spans):
        if s.role == "category":
            conds.append(ConditionSpan(s.column, off, s.dim, matrix[:, off : off + s.dim].mean(axis=0)))
    return tr, matrix, spans, conds


def time_fedtab(matrix, spans, conds, *, epochs: int, batch: int, dp: DPSGDConfig | None) -> float:
    model = CTGAN().build(spans, conds, seed=0)
    trainer = LocalTrainer(model, matrix, batch_size=batch, dp=dp, seed=0)
    steps = max(len(matrix) // batch, 1)
    trainer.train(3)  # warm-up
    t0 = time.perf_counter()
    trainer.train(steps * epochs)
    return (time.perf_counter() - t0) / epochs


def time_ctgan(df, transformer, matrix, *, epochs: int, batch: int) -> float:
    import ctgan.synthesizers.ctgan as ref

    class Prefitted:  # hand the already-fitted transformer to ctgan's fit
        def __new__(cls):
            return transformer

    original_fit, original_transform = transformer.fit, transformer.transform
    transformer.fit = lambda *a, **k: None
    transformer.transform = lambda *a, **k: matrix.astype(np.float64)
    saved, ref.DataTransformer = ref.DataTransformer, Prefitted
    try:
        model = ref.CTGAN(epochs=epochs, batch_size=batch, cuda=False)
        t0 = time.perf_counter()
        model.fit(df, DISCRETE)
        return (time.perf_counter() - t0) / epochs
    finally:
        ref.DataTransformer = saved
        transformer.fit, transformer.transform = original_fit, original_transform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/adult.csv")
    ap.add_argument("--rows", type=int, default=26048)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_ctgan_epoch.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.data, skipinitialspace=True).head(args.rows)
    t0 = time.perf_counter()
    transformer, matrix, spans, conds = encode(df)
    print(f"encoded {matrix.shape} with ctgan's DataTransformer in {time.perf_counter() - t0:.1f}s (not timed below)")
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=args.batch / len(matrix))
    fed1 = time_fedtab(matrix, spans, conds, epochs=args.epochs, batch=args.batch, dp=None)
    ref = time_ctgan(df, transformer, matrix, epochs=args.epochs, batch=args.batch)
    fed2 = time_fedtab(matrix, spans, conds, epochs=args.epochs, batch=args.batch, dp=None)
    fed_dp = time_fedtab(matrix, spans, conds, epochs=args.epochs, batch=args.batch, dp=dp)
    fed = (fed1 + fed2) / 2
    result = {
        "benchmark": "seconds per epoch, Adult", "rows": len(matrix), "encoded_width": matrix.shape[1],
        "batch_size": args.batch, "epochs_timed": args.epochs, "threads": args.threads,
        "ctgan_reference_s_per_epoch": round(ref, 3),
        "fedtab_ctgan_s_per_epoch": round(fed, 3), "fedtab_runs": [round(fed1, 3), round(fed2, 3)],
        "fedtab_ctgan_dp_s_per_epoch": round(fed_dp, 3),
        "ratio_fedtab_over_reference": round(fed / ref, 3),
        "ratio_fedtab_dp_over_reference": round(fed_dp / ref, 3),
        "target_ratio": 0.2,
    }
    print(f"{'model':<34}{'s/epoch':>10}{'x ref':>8}")
    print(f"{'ctgan.CTGAN (SDV engine, pac=10)':<34}{ref:>10.2f}{1.0:>8.2f}")
    print(f"{'fedtab CTGAN':<34}{fed:>10.2f}{fed / ref:>8.2f}")
    print(f"{'fedtab CTGAN, DP-SGD (ghost)':<34}{fed_dp:>10.2f}{fed_dp / ref:>8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Time one discriminator step: plain Adam vs DP-SGD (Opacus ghost clipping, and Opacus hooks).

Same network as fedtab's CTGAN discriminator (256, 256), input width of an Adult-like encoded row plus its
condition vector, 500 real + 500 generated rows per step (what the trainer feeds it). Modes are timed
interleaved in the same run (the machine is shared: compare ratios, not absolute times), on one thread
(``--threads``) because intra-op threads only add contention on a busy 2-core machine.

    python benchmarks/bench_dp_step.py [--reps 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedtab.models.ctgan import Discriminator
from fedtab.privacy.secret import secret_source
from fedtab.privacy.dpsgd import DPSGDConfig, PrivateNetwork

DATA_WIDTH, COND_WIDTH, BATCH = 150, 100, 500


def make_step(mode: str, seed: int = 0):
    torch.manual_seed(seed)
    net = Discriminator(DATA_WIDTH + COND_WIDTH, (256, 256), slope=0.2, dropout=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * BATCH, DATA_WIDTH + COND_WIDTH)
    sign = torch.ones(2 * BATCH)
    sign[:BATCH] = -1.0
    if mode == "plain":
        def step():
            opt.zero_grad(set_to_none=True)
            F.softplus(sign * net(x, generator=g)).mean().backward()
            opt.step()
        return step
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=BATCH / 26048, grad_sample_mode=mode)
    private = PrivateNetwork(net, opt, config=cfg, expected_batch_size=2.0 * BATCH, noise_source=secret_source("bench"))

    def dp_step():
        private.zero_grad()
        private.backward(F.softplus(sign * net(x, generator=g)))
        private.step()
    return dp_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--hooks-reps", type=int, default=5, help="hooks mode is slow: fewer repetitions")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_dp_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {m: make_step(m) for m in ("plain", "ghost", "hooks")}
    times: dict[str, list[float]] = {m: [] for m in steps}
    for fn in steps.values():  # warm-up
        fn()
    for rep in range(args.reps):
        for mode, fn in steps.items():
            if mode == "hooks" and rep >= args.hooks_reps:
                continue
            t0 = time.perf_counter()
            fn()
            times[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    result = {
        "benchmark": "discriminator step, plain vs DP-SGD",
        "network": "CTGAN discriminator (256, 256), LeakyReLU, dropout 0.5",
        "input_width": DATA_WIDTH + COND_WIDTH, "rows_per_step": 2 * BATCH, "threads": args.threads,
        "reps": {m: len(v) for m, v in times.items()},
        "median_ms": {m: round(v, 3) for m, v in med.items()},
        "ratio_ghost_over_plain": round(med["ghost"] / med["plain"], 3),
        "ratio_hooks_over_plain": round(med["hooks"] / med["plain"], 3),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    print(f"{'mode':<8}{'median ms':>12}{'x plain':>10}{'reps':>7}")
    for m in steps:
        print(f"{m:<8}{med[m]:>12.2f}{med[m] / med['plain']:>10.2f}{len(times[m]):>7}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

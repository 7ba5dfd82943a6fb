"""What secure aggregation of the DP-SGD updates costs: time and bytes per training round, secure vs plain.

    python benchmarks/bench_secagg_updates.py [--rows 1000] [--rounds 2] [--models tvae ctgan]
                                              [--out benchmarks/results/bench_secagg_updates.json]

Issue 22 part 4. Adult's 4 non-IID sites (age quartiles, ``_data.load_adult``), ``--rows`` training rows
drawn from each (seeded), each model at its default size, epsilon 1, ``--rounds`` rounds of one local
epoch, in process; the only difference between the two runs of a model is ``secure_aggregation``. Per
run: the model's parameter count, the mean seconds of a round (``RoundRecord.seconds``: training, masking,
unmasking, screening and averaging; the keys and shares, drawn once per job, are counted apart), and the
bytes the coordinator receives per round and site (each reply packed by ``fedtab.federation.wire``:
its JSON plus its arrays) for the training request and, secure only, the unmasking request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import load_adult  # noqa: E402

import fedtab  # noqa: E402
from fedtab.federation import transport as transport_module  # noqa: E402
from fedtab.federation import wire  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402


def _size(reply) -> int:
    packed = wire.pack(reply)
    return len(packed.json.encode()) + sum(a.nbytes for a in packed.arrays.values())


def run(model: str, secure: bool, sites: dict, schema, rounds: int) -> dict:
    received = defaultdict(list)  # (kind, phase) -> bytes of each reply
    seconds = defaultdict(float)

    class Measuring(transport_module.InProcessTransport):
        def outcomes(self, kind, bodies):
            t0 = time.perf_counter()
            replies = super().outcomes(kind, bodies)
            phase = str(next(iter(bodies.values())).get("phase", "")) if kind == "measure" else ""
            seconds[(kind, phase)] += time.perf_counter() - t0
            for r in replies.values():
                received[(kind, phase)].append(_size(r))
            return replies

    original = transport_module.InProcessTransport
    transport_module.InProcessTransport = Measuring
    try:
        t0 = time.perf_counter()
        synth = fedtab.FederatedSynthesizer(model, epsilon=1.0, delta=1e-5, schema=schema, seed=0, rounds=rounds,
                                            local_epochs=1, secure_aggregation=secure).fit(sites)
        total = time.perf_counter() - t0
    finally:
        transport_module.InProcessTransport = original
    n_params = int(sum(np.size(v) for v in synth.weights_.values()))
    per_round = [h.seconds for h in synth.result_.history]
    n_sites = len(sites)

    def mean_bytes(key):
        return float(np.mean(received[key])) if received.get(key) else 0.0

    return {"model": model, "secure": secure, "parameters": n_params, "sites": n_sites, "rounds": rounds,
            "round_seconds": per_round, "mean_round_seconds": float(np.mean(per_round)), "fit_seconds": total,
            "train_reply_bytes": mean_bytes(("train", "")), "unmask_reply_bytes": mean_bytes(("measure", "unmask")),
            "keys_and_shares_seconds": seconds[("measure", "keys")] + seconds[("measure", "shares")],
            "keys_and_shares_reply_bytes": mean_bytes(("measure", "keys")) + mean_bytes(("measure", "shares"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["tvae", "ctgan"])
    ap.add_argument("--out", default=str(HERE / "results" / "bench_secagg_updates.json"))
    args = ap.parse_args()
    sites, _, _, schema, _, _ = load_adult()
    sites = {s: f.sample(n=min(args.rows, len(f)), random_state=0).reset_index(drop=True) for s, f in sites.items()}
    rows = []
    for model in args.models:
        for secure in (False, True):
            r = run(model, secure, sites, schema, args.rounds)
            rows.append(r)
            print(f"{model:6s} secure={secure!s:5s} params={r['parameters']:>8,d} round={r['mean_round_seconds']:.2f}s "
                  f"train reply={r['train_reply_bytes'] / 1e6:.2f} MB unmask reply={r['unmask_reply_bytes'] / 1e3:.1f} kB "
                  f"keys+shares={r['keys_and_shares_seconds']:.2f}s", flush=True)
    out = {"benchmark": "bench_secagg_updates", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "rows_per_site": args.rows, "rounds": args.rounds, "results": rows}
    atomic_write_text(Path(args.out), json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

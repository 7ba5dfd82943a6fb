"""How well the marginal model's one-way estimate of each numerical column survives the DP noise, with and
without emptying the runs of noise far from the rows (``fedtab.federation.marginals.isolated_runs``).

    python benchmarks/bench_one_way.py [--tables heart adult ...] [--draws 30] [--out benchmarks/results/bench_one_way.json]

For each table of ``benchmarks/_data.py`` (the same split and at most 3,000 training rows as
``bench_tables.py``), fedtab's default runs at epsilon 1 on the 4 sites up to its one-way phase, which
gives the public discretisation, the coarser levels, the noise sd of one summed table (under the star on the
target, of the two measurements' average) and the row estimate. The one-way phase is then simulated on the sites' pooled training rows: ``--draws`` Gaussian
draws at that sd on the fine cells and on every level, each estimated as ``_with_levels`` does (least
squares over the levels, norm-sub to the row count) with the rule off (``sd=0``) and on. Reported per
table, mean over its numerical columns and draws: the bias of the column's mean in its sds (cells read at
their midpoints) and the distance of the distributions (KS over the cells); per column, the sd of the
estimated mean and the share of draws within 10% of the real one (what the one-way noise alone allows
the walk-through's 10% target). Prints tables, writes JSON.
A simulation of one phase, not the whole model: ``bench_tables.py`` measures the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import LOADERS  # noqa: E402
from bench_tables import TABLES, TRAIN_ROWS  # noqa: E402
from suite import git_commit  # noqa: E402

import fedtab  # noqa: E402
from fedtab.federation import marginals  # noqa: E402
from fedtab.models.marginal import fine_codes  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402


class _Captured(Exception):
    pass


def one_way_phase(name: str) -> dict:
    """The public inputs of ``name``'s one-way phase at epsilon 1 on 4 sites, and the pooled training rows."""
    sites, train, _test, schema, target, _derive = LOADERS[name]()
    if len(train) > TRAIN_ROWS:
        frac = TRAIN_ROWS / len(train)
        sites = {k: v.sample(frac=frac, random_state=0).reset_index(drop=True) for k, v in sites.items()}
        train = pd.concat(sites.values(), ignore_index=True)
    got: dict = {}
    discretise, with_levels = marginals.discretise, marginals._with_levels

    def keep_discretisation(transformer):
        got["transformer"], got["fine"] = transformer, discretise(transformer)
        return got["fine"]

    def stop(disc, fine_counts, levels, level_counts, *, rows, sd):  # sd: the one-way tables' summed noise
        got.update(levels=levels, rows=rows, sd=sd)
        raise _Captured

    marginals.discretise, marginals._with_levels = keep_discretisation, stop
    try:
        fedtab.FederatedSynthesizer(epsilon=1.0, delta=1e-5, schema=schema, target=target, seed=0).fit(sites)
    except _Captured:
        pass
    finally:
        marginals.discretise, marginals._with_levels = discretise, with_levels
    got["train"] = train
    return got


def simulate(got: dict, draws: int, rng: np.random.Generator) -> dict[str, list[float]]:
    fine, train, rows, sd = got["fine"], got["train"], got["rows"], got["sd"]
    codes = fine_codes(train, got["transformer"], fine)
    out = {"bias_off": [], "bias_on": [], "ks_off": [], "ks_on": []}
    columns = {}  # per numerical column, with the rule on: the estimated means' sd, the share within 10%
    for j, c in enumerate(fine.columns):
        if c["kind"] != "numerical":
            continue
        n_cells = len(c["edges"]) + 1
        exact = np.bincount(codes[:, j], minlength=c["size"]).astype(float) * rows / len(train)
        levels = [[0, g] for i, g in got["levels"] if i == j]
        bounds = np.concatenate([[c["lower"]], c["edges"], [c["upper"]]])
        mids = (bounds[:-1] + bounds[1:]) / 2
        values = pd.to_numeric(train[c["name"]], errors="coerce").astype(float)
        col_sd = float(values.std()) or 1.0
        q = exact[:n_cells] / exact[:n_cells].sum()
        one = type("D", (), {"columns": (c,)})()
        means = []
        for _ in range(draws):
            noisy = [exact + rng.normal(size=exact.size) * sd]
            level_counts = [np.bincount(np.asarray(g), weights=exact, minlength=max(g) + 1)
                            + rng.normal(size=max(g) + 1) * sd for _, g in levels]
            for key, rule_sd in (("off", 0.0), ("on", sd)):
                est = marginals._with_levels(one, noisy, levels, level_counts, rows=rows, sd=rule_sd)[0][:n_cells]
                p = est / est.sum() if est.sum() > 0 else np.full(n_cells, 1.0 / n_cells)
                out[f"bias_{key}"].append(abs(float(p @ mids - q @ mids)) / col_sd)
                out[f"ks_{key}"].append(float(np.abs(np.cumsum(p) - np.cumsum(q)).max()))
            means.append(float(p @ mids))
        real = float(q @ mids)
        columns[c["name"]] = {"mean": real, "sd_of_mean": float(np.std(means)),
                              "within_10pct": float(np.mean([abs(m - real) <= 0.1 * abs(real) for m in means]))}
    return out, columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "results" / "bench_one_way.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    print("| table | numerical columns | noise sd (rows) | row estimate | mean bias (sds) off / on | KS off / on |")
    print("|---|---|---|---|---|---|")
    for name in args.tables:
        got = one_way_phase(name)
        res, columns = simulate(got, args.draws, rng)
        n_num = sum(1 for c in got["fine"].columns if c["kind"] == "numerical")
        row = {"table": name, "numerical_columns": n_num, "noise_sd": got["sd"], "rows": got["rows"],
               **{k: (float(np.mean(v)) if v else None) for k, v in res.items()}, "columns": columns}
        rows.append(row)
        fmt = (lambda a, b: f"{row[a]:.3f} / {row[b]:.3f}") if n_num else (lambda a, b: "-")
        print(f"| {name} | {n_num} | {got['sd']:.1f} | {got['rows']:.0f} | {fmt('bias_off', 'bias_on')} | "
              f"{fmt('ks_off', 'ks_on')} |", flush=True)
    print("\nPer numerical column, the rule on: the mean of the discretised rows (cells at their midpoints), the sd "
          "of the estimated means over the draws, and the share of draws within 10% of it.\n")
    print("| table | column | mean | sd of the estimate | within 10% |")
    print("|---|---|---|---|---|")
    for row in rows:
        for col, v in row["columns"].items():
            print(f"| {row['table']} | {col} | {v['mean']:.4g} | {v['sd_of_mean']:.3g} | {v['within_10pct']:.2f} |")
    meta = {"commit": git_commit(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "draws": args.draws, "epsilon": 1.0, "sites": 4}
    atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

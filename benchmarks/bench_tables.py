"""fedtab's default across many tables, against the anchors: one fixed configuration for every table.

    python benchmarks/bench_tables.py [--tables heart adult ...] [--tier 1|2] [--shard I/N]
                                      [--out benchmarks/results/bench_tables.json]
    python benchmarks/bench_tables.py --render      # merge the shards' JSON, print the table, write .md
    python benchmarks/bench_tables.py --only fedtab-auto-4s-eps1- --shard 0/2   # rerun some jobs

What runs (issue 20, part 3), on every table of ``benchmarks/_data.py`` (heart, adult, bank, fair,
breast_cancer, penguins, diabetes), each split 80/20 with the 80% in 4 non-IID sites, and at most
``TRAIN_ROWS`` training rows (the same share of each site):

* **fedtab's default**: ``FederatedSynthesizer(epsilon=..., delta=1e-5, schema=..., target=..., seed=s)``
  and nothing else (the model and its settings are the API's choice), at epsilon 0.5, 1, 3, 10 per site
  and non-DP, on the 4 sites (seeds 0, 1, 2) and on 1 site holding the pooled rows (seed 0);
* **centralized smartnoise MST** at the same epsilons and delta (seed 0; at epsilon 1 seeds 0, 1, 2) and
  **AIM** at epsilon 1 (seed 0), on the pooled rows;
* **SDV GaussianCopula, CTGAN, TVAE** and **synthcity TabDDPM** without DP (seed 0), on the pooled rows.

``--held-out`` runs the same jobs on tables fedtab's defaults were never developed on (``_data.HELD_OUT``:
gbsg2, ACTG 175, cars, Seattle weather, wine, tips, ANES 1996, RAND HIE), into ``bench_heldout.json``.

The settings are the same for every table (``SETTINGS``). Every method runs in a subprocess of its own
(``suite.run_method``) and is scored in this process by ``suite.score``: sdmetrics quality, detection
AUC, TSTR ROC-AUC on the test rows, DCR share and MIA AUC; fit seconds. Tier 1 is what the issue's
acceptance reads (epsilon 1 and non-DP on 4 sites, MST at epsilon 1, SDV GaussianCopula and TVAE);
tier 2 the rest. ``--shard I/N`` runs every N-th job from the I-th (two shards use both cores). Each
shard rewrites its JSON after every job, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import HELD_OUT, LOADERS  # noqa: E402
from suite import _json_default, git_commit, main_versions, prepare, run_method, score  # noqa: E402

from fedtab.schema import atomic_write_text  # noqa: E402

TABLES = ("heart", "adult", "bank", "fair", "breast_cancer", "penguins", "diabetes")
ALL_TABLES = TABLES + tuple(HELD_OUT)  # --held-out: tables the defaults were never developed on
TRAIN_ROWS = 3000
DELTA = 1e-5
EPSILONS = (0.5, 1.0, 3.0, 10.0, None)
SEEDS = (0, 1, 2)
TIMEOUT = 300
SETTINGS = {
    "sdv-ctgan": {"epochs": 30, "batch_size": 500},
    "sdv-tvae": {"epochs": 60, "batch_size": 500},
    "sdv-gaussiancopula": {},
    "synthcity-ddpm": {"n_iter": 500, "batch_size": 1024},
    "smartnoise-mst": {"delta": DELTA},
    "smartnoise-aim": {"delta": DELTA},
}


def _eps(e) -> str:
    return "nondp" if e is None else f"eps{e:g}"


def jobs(tables) -> list[dict]:
    """Every (table, method, sites, epsilon, seed), tier 1 first."""
    out = []
    for t in tables:
        for eps in EPSILONS:
            for k, seeds in ((4, SEEDS), (1, (0,))):
                for s in seeds:
                    out.append({"table": t, "family": "fedtab", "model": "auto", "sites": k, "epsilon": eps, "seed": s,
                                "tier": 1 if k == 4 and eps in (1.0, None) else 2,
                                "settings": {"delta": DELTA}, "label": "fedtab default"})
            if eps is not None:
                for s in (SEEDS if eps == 1.0 else (0,)):
                    out.append({"table": t, "family": "smartnoise", "model": "mst", "sites": 1, "epsilon": eps,
                                "seed": s, "tier": 1 if eps == 1.0 else 2, "settings": SETTINGS["smartnoise-mst"],
                                "label": "smartnoise MST"})
        out.append({"table": t, "family": "smartnoise", "model": "aim", "sites": 1, "epsilon": 1.0, "seed": 0,
                    "tier": 2, "settings": SETTINGS["smartnoise-aim"], "label": "smartnoise AIM"})
        for m, tier in (("gaussiancopula", 1), ("tvae", 1), ("ctgan", 2)):
            out.append({"table": t, "family": "sdv", "model": m, "sites": 1, "epsilon": None, "seed": 0, "tier": tier,
                        "settings": SETTINGS[f"sdv-{m}"], "label": f"SDV {m}"})
        out.append({"table": t, "family": "synthcity", "model": "ddpm", "sites": 1, "epsilon": None, "seed": 0,
                    "tier": 2, "settings": SETTINGS["synthcity-ddpm"], "label": "synthcity TabDDPM"})
    for j in out:
        j["key"] = f"{j['table']}/{j['family']}-{j['model']}-{j['sites']}s-{_eps(j['epsilon'])}-seed{j['seed']}"
    return sorted(out, key=lambda j: j["tier"])  # stable: tables and methods keep their order


def run(args) -> None:
    todo = [j for j in jobs(args.tables) if j["tier"] in args.tier]
    if args.only:  # a rerun of some jobs: its rows replace theirs (see ``render``)
        todo = [j for j in todo if any(w in j["key"] for w in args.only.split(","))]
    i, n = (int(x) for x in args.shard.split("/"))
    todo = todo[i::n]
    kind = ("rerun-" + args.tag if args.tag else "rerun") if args.only else "shard"
    path = Path(args.out).with_suffix(f".{kind}{i}.json")
    rows = json.loads(path.read_text())["rows"] if path.exists() and args.resume else []
    done = {r["key"] for r in rows if r.get("status") == "ok"}
    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": git_commit(),
            "versions": main_versions(), "train_rows": TRAIN_ROWS, "settings": SETTINGS, "timeout_s": TIMEOUT,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), one thread per method",
            "command": "python benchmarks/bench_tables.py " + " ".join(sys.argv[1:]), "tag": args.tag or None}
    data_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="fedtab_tables_") as tmp:
        for job in todo:
            if job["key"] in done:
                continue
            t = job["table"]
            if t not in data_cache:
                work = Path(tmp) / t
                work.mkdir()
                data_cache[t] = (prepare(t, {"train_rows": TRAIN_ROWS}, work, 0), work)
            data, work = data_cache[t]
            m = {**job, "key": job["key"].replace("/", "_")}
            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {job['key']} ...", flush=True)
            result, synth = run_method(m, data, work, seed=job["seed"], timeout=TIMEOUT)
            row = {**job, **result, "commit": git_commit()}
            if synth is not None:
                try:
                    row.update(score(synth, data, seed=job["seed"]))
                except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                    row["status"] = f"scoring failed: {type(exc).__name__}: {exc}"[:400]
            row.pop("versions", None)
            print("   " + json.dumps({k: row.get(k) for k in ("status", "quality", "tstr_auc", "fit_seconds")}),
                  flush=True)
            rows = [r for r in rows if r["key"] != job["key"]] + [row]
            atomic_write_text(path, json.dumps({"meta": meta, "rows": rows}, indent=1, default=_json_default))


# --- summary ---------------------------------------------------------------------------------------
METRICS = ("quality", "tstr_auc", "detection_auc", "fit_seconds")


def _stat(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None,
            "n": len(v)}


def _model(row: dict) -> str:
    """The model a row ran, with the marginal model's selection where recorded (e.g. "mst/pooled")."""
    d = row.get("details", {})
    return d["model"] + (f"/{d['selection']}" if d.get("selection") else "")


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["table"], r["label"], r["sites"], r["epsilon"]), []).append(r)
    out = []
    for (t, label, k, eps), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok" and r.get("quality") is not None]
        entry = {"table": t, "method": label, "sites": k, "epsilon": eps, "runs": len(rs), "ok": len(ok),
                 "failed": sorted({r.get("status", "")[:80] for r in rs if r not in ok}),
                 "models": sorted({_model(r) for r in ok if r.get("details", {}).get("model")})}
        timed = [r for r in ok if r.get("rerun")] or ok
        for mtr in METRICS:
            entry[mtr] = _stat([r.get(mtr) for r in (timed if mtr == "fit_seconds" else ok)])
        out.append(entry)
    order = {t: i for i, t in enumerate(ALL_TABLES)}
    return sorted(out, key=lambda e: (order.get(e["table"], 99), e["epsilon"] is None, e["epsilon"] or 0,
                                      e["method"] != "fedtab default", -e["sites"], e["method"]))


def acceptance(summary: list[dict]) -> list[dict]:
    """Per table: the default at epsilon 1 on 4 sites against MST (quality, TSTR, fit time) and without DP
    against SDV TVAE and GaussianCopula (quality); means over seeds."""
    get = {(e["table"], e["method"], e["sites"], e["epsilon"]): e for e in summary}
    out = []
    for t in ALL_TABLES:
        f1, mst = get.get((t, "fedtab default", 4, 1.0)), get.get((t, "smartnoise MST", 1, 1.0))
        f0 = get.get((t, "fedtab default", 4, None))
        gc, tv = get.get((t, "SDV gaussiancopula", 1, None)), get.get((t, "SDV tvae", 1, None))
        if not f1 and not f0:
            continue
        m = lambda e, k: (e or {}).get(k) and e[k]["mean"]  # noqa: E731
        row = {"table": t}
        for k in ("quality", "tstr_auc", "fit_seconds"):
            row[f"eps1_{k}"] = (m(f1, k), m(mst, k))
        row["eps1_met"] = (None if not (f1 and mst and f1["quality"] and mst["quality"]) else
                           m(f1, "quality") >= m(mst, "quality") and m(f1, "tstr_auc") >= m(mst, "tstr_auc")
                           and m(f1, "fit_seconds") <= m(mst, "fit_seconds"))
        row["nondp_quality"] = (m(f0, "quality"), m(tv, "quality"), m(gc, "quality"))
        row["nondp_met"] = (None if not (f0 and f0["quality"] and tv and tv["quality"] and gc and gc["quality"]) else
                            m(f0, "quality") >= max(m(tv, "quality"), m(gc, "quality")))
        out.append(row)
    return out


def _fmt(s, digits=3) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['sd']:.{digits}f}" if s.get("sd") is not None else "")


def render(args) -> None:
    out = Path(args.out)
    rows, metas = [], []
    # The shards' rows, then the reruns' (``--only``): a rerun draws fresh secret noise, so its rows are
    # more runs of the same job (kept beside the first ones, key + "@rerun"), and the group's fit
    # seconds are read from the reruns alone (the code they ran on is the later one).
    # A tagged rerun (``--tag``: the code changed what the jobs measure) supersedes the earlier rows of its
    # jobs: those stay in the table under their own label, "(before <tag>)", and out of the acceptance.
    tagged: dict[str, str] = {}
    def started(path: Path) -> str:  # reruns in the order they ran: a later tag supersedes an earlier one
        return json.loads(path.read_text())["meta"].get("started") or ""

    reruns = sorted(out.parent.glob(out.stem + ".rerun*.json"), key=lambda q: (started(q), q.name))
    for p in [*sorted(out.parent.glob(out.stem + ".shard*.json")), *reruns]:
        d = json.loads(p.read_text())
        rerun = ".rerun" in p.name
        tag = d["meta"].get("tag")
        rows += [{**r, "key": r["key"] + ("@rerun" if rerun else "") + (f"@{tag}" if tag else ""), "rerun": rerun,
                  "tag": tag} for r in d["rows"]]
        tagged.update({r["key"].split("@")[0]: tag for r in d["rows"] if tag})
        metas.append(d["meta"])
    for r in rows:
        base = r["key"].split("@")[0]
        if base in tagged and r.get("tag") != tagged[base]:
            r["label"] = f"{r['label']} (before {tagged[base]})"
    summary = summarise(rows)
    acc = acceptance(summary)
    lines = ["# fedtab's default across tables, against the anchors (benchmarks/bench_tables.py)", "",
             f"Commits: {sorted({m['commit'] for m in metas})}; started {min(m['started'] for m in metas)}; "
             f"machine: {metas[0]['machine']}; at most {TRAIN_ROWS} training rows per table; settings "
             f"{json.dumps(SETTINGS)}; per-method timeout {TIMEOUT} s. Mean ± sd over runs (n runs: seeds, and "
             "reruns of the same seeds, which draw fresh secret noise; where a group was rerun, its fit seconds are "
             "the reruns' alone).", "", "Commands: " + "; ".join(f"`{m['command']}`" for m in metas), "",
             "## Acceptance (epsilon 1 per site, 4 sites, against centralized MST; non-DP against SDV)", "",
             "| table | quality default / MST | TSTR default / MST | fit s default / MST | met | non-DP quality "
             "default / TVAE / GaussianCopula | met |", "|---|---|---|---|---|---|---|"]
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for a in acc:
        lines.append(f"| {a['table']} | {' / '.join(map(f, a['eps1_quality']))} | {' / '.join(map(f, a['eps1_tstr_auc']))}"
                     f" | {' / '.join('-' if x is None else f'{x:.1f}' for x in a['eps1_fit_seconds'])} | "
                     f"{a['eps1_met']} | {' / '.join(map(f, a['nondp_quality']))} | {a['nondp_met']} |")
    lines += ["", "## Every method", "", "| table | method | sites | epsilon | quality | TSTR AUC | detection AUC | "
              "fit s | ok/runs | model | failures |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['table']} | {e['method']} | {e['sites']} | {'non-DP' if e['epsilon'] is None else e['epsilon']} | "
                     f"{_fmt(e['quality'])} | {_fmt(e['tstr_auc'])} | {_fmt(e['detection_auc'])} | "
                     f"{_fmt(e['fit_seconds'], 1)} | {e['ok']}/{e['runs']} | {','.join(e['models'])} | "
                     f"{'; '.join(e['failed'])} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out, json.dumps({"meta": metas, "acceptance": acc, "summary": summary, "rows": rows}, indent=1,
                                      default=_json_default))
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", default=None, choices=ALL_TABLES)
    ap.add_argument("--held-out", action="store_true", help="the tables of _data.HELD_OUT (never tuned on), into "
                    "results/bench_heldout.json unless --out says otherwise")
    ap.add_argument("--tier", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--resume", action="store_true", help="skip the jobs this shard's JSON already holds (ok)")
    ap.add_argument("--only", default="", help="rerun only jobs whose key holds one of these comma-separated "
                                               "strings (e.g. 'fedtab-auto-4s-eps1-'); their rows replace the earlier")
    ap.add_argument("--tag", default="", help="with --only: name what changed; these rows supersede the earlier "
                    "rows of the same jobs, which are kept under the label '(before TAG)'")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.tables = args.tables or list(HELD_OUT if args.held_out else TABLES)
    args.out = args.out or str(HERE / "results" / ("bench_heldout.json" if args.held_out else "bench_tables.json"))
    t0 = time.perf_counter()
    if args.render:
        render(args)
        return
    run(args)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

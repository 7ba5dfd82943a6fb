"""fedtab against the anchors, one data set per invocation, every method on the same split and seed.

    python benchmarks/suite.py --dataset heart|adult|bank [--quick] [--only KEY,...] [--merge] [--out DIR]

Methods (each fitted in a subprocess of its own: its peak memory is that process's max RSS, and a crash
or a timeout is recorded as such, not fatal):

* fedtab's models (ctgan, tvae, diffusion) on 1 site (the pooled training rows) and on 4 sites (heart's
  hospitals; Adult's and bank's age quartiles), non-DP and DP at epsilon 1, 3, 10 per site (delta 1e-5,
  preprocessing included; the sites are disjoint, so the pooled table is epsilon-DP too);
* SDV GaussianCopula, CTGANSynthesizer and TVAESynthesizer on the pooled training rows (non-DP);
* synthcity's TabDDPM (``ddpm``) on the pooled rows (non-DP), in /work/venvs/synthcity;
* smartnoise-synth DPCTGAN, MST and AIM at epsilon 1, 3, 10 (delta 1e-5), in /work/venvs/smartnoise,
  with public numerical bounds so that their preprocessing spends no epsilon (the spend is read back).

Make the anchors' environments with ``benchmarks/anchors/setup_venvs.sh``; a missing one is recorded
as "skipped". Every synthetic table is scored here, in this process, by fedtab's evaluation functions:
sdmetrics quality (overall, column shapes, pair trends) against the training rows, TSTR ROC-AUC on the
test rows (against TRTR), detection AUC, DCR share and membership-inference AUC (training rows vs test
rows as non-members). Results go to DIR/suite_<dataset>[_quick].json and .md after every method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, for fedtab and evaluation

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from _data import LOADERS  # noqa: E402
from evaluation._tables import kinds_of, subsample, to_plain  # noqa: E402
from evaluation.disclosure import DisclosureOptions, evaluate_disclosure  # noqa: E402
from evaluation.fidelity import detection_auc, quality_report  # noqa: E402
from evaluation.utility import evaluate_utility  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402
from suite_plan import PLANS, methods_for  # noqa: E402

RUNNER = Path(__file__).parent / "anchors" / "run_method.py"
VENVS = Path(os.environ.get("FEDTAB_ANCHOR_VENVS", "/work/venvs"))
PYTHONS = {"fedtab": sys.executable, "sdv": sys.executable,
           "synthcity": str(VENVS / "synthcity" / "bin" / "python"),
           "smartnoise": str(VENVS / "smartnoise" / "bin" / "python")}
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "XLA_FLAGS_THREADS")}


# --- data ------------------------------------------------------------------------------------------
def prepare(dataset: str, plan: dict, work: Path, seed: int) -> dict:
    """Load and split, reduce if the plan says so, and write every input file the methods read."""
    sites, train, test, schema, target, derive = LOADERS[dataset]()
    rows = plan.get("train_rows")
    if rows and rows < len(train):  # the same share of every site, so the non-IID split is kept
        frac = rows / len(train)
        sites = {k: v.sample(frac=frac, random_state=seed).reset_index(drop=True) for k, v in sites.items()}
        train = pd.concat(sites.values(), ignore_index=True)
    paths = {}
    for name, frame in sites.items():
        paths[name] = str(work / f"site_{name}.parquet")
        frame.to_parquet(paths[name])
    pooled = str(work / "pooled.parquet")
    train.to_parquet(pooled)
    schema_path = work / "schema.json"
    schema.save(schema_path)
    kinds = kinds_of(schema)
    plain_train = to_plain(train, schema)
    plain_train.to_csv(work / "train_plain.csv", index=False)
    bounds = {c.name: (c.lower, c.upper) for c in schema.columns if c.type == "numerical"}
    return {"sites": paths, "pooled": pooled, "schema": str(schema_path), "schema_obj": schema,
            "kinds": kinds, "train": plain_train, "test": to_plain(test, schema), "target": target,
            "derive": derive, "bounds": bounds, "n_sites": {k: len(v) for k, v in sites.items()}}


# --- one method in a subprocess --------------------------------------------------------------------
def run_method(m: dict, data: dict, work: Path, *, seed: int, timeout: float) -> tuple[dict, pd.DataFrame | None]:
    family = m["family"]
    python = PYTHONS[family]
    if not Path(python).exists():
        return {"status": f"skipped: no environment at {Path(python).parents[1]} "
                          "(run benchmarks/anchors/setup_venvs.sh)"}, None
    key = m["key"]
    fedtab = family == "fedtab"
    spec = {"method": "fedtab" if fedtab else f"{family}-{m['model']}", "model": m["model"],
            "epsilon": m["epsilon"], "settings": m["settings"], "seed": seed, "n": len(data["train"]),
            "target": data["target"], "numerical": list(data["kinds"].numerical),
            "categorical": list(data["kinds"].categorical), "bounds": data["bounds"],
            "train_csv": str(work / "train_plain.csv"), "schema": data["schema"],
            "sites": data["sites"] if m["sites"] > 1 else {"pooled": data["pooled"]},
            "out": str(work / f"{key}.{'parquet' if fedtab else 'csv'}"),
            "result": str(work / f"{key}.json"), "workdir": str(work)}
    spec_path = work / f"{key}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log = work / f"{key}.log"
    env = {**os.environ, **ONE_THREAD, "PYTHONHASHSEED": str(seed)}
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, str(RUNNER), str(spec_path)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        status, rusage, timed_out = None, None, False
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = st, ru
            elif time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)  # the method and anything it started
                _, status, rusage = os.wait4(proc.pid, 0)
                timed_out = True
            else:
                time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    row = {"peak_rss_mib": round(rusage.ru_maxrss / 1024, 1), "wall_seconds": round(wall, 1)}
    if timed_out:
        return {**row, "status": f"timeout after {timeout:.0f} s"}, None
    if proc.returncode != 0 or not Path(spec["result"]).exists():
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        return {**row, "status": f"failed (exit {proc.returncode}): " + " | ".join(tail)[-400:]}, None
    info = json.loads(Path(spec["result"]).read_text())
    if fedtab:
        synth = to_plain(pd.read_parquet(spec["out"]), data["schema_obj"])
    else:
        cats = list(data["kinds"].categorical)
        synth = pd.read_csv(spec["out"], dtype={c: str for c in cats}, keep_default_na=False, na_values=[""])
        synth = synth.reindex(columns=data["train"].columns)
        for c in data["kinds"].numerical:
            synth[c] = pd.to_numeric(synth[c], errors="coerce").astype("float64")
    n = len(synth)
    row.update({"status": "ok", "fit_seconds": round(info["fit_seconds"], 1),
                "sample_rows_per_s": round(n / max(info["sample_seconds"], 1e-9)),
                "epsilon_spent": _round(info.get("epsilon_spent")), "versions": info.get("versions", {}),
                "details": {k: v for k, v in info.items()
                            if k not in ("fit_seconds", "sample_seconds", "epsilon_spent", "versions")}})
    if fedtab:
        row["federation_overhead_seconds"] = round(info["federation_overhead_seconds"], 1)
    return row, synth


def _round(x, digits=4):
    return None if x is None else round(float(x), digits)


# --- scoring, the same for every method ------------------------------------------------------------
def fidelity_and_utility(synth: pd.DataFrame, data: dict, *, seed: int, rng: np.random.Generator) -> tuple:
    """(quality, column shapes, pair trends, detection AUC, the utility result) of ``synth`` against the
    data's training rows (up to 5,000 of each side) and test rows; call inside ``threadpool_limits(1)``."""
    kinds, train, test, derive = data["kinds"], data["train"], data["test"], data["derive"]
    overall, shapes, pairs = quality_report(subsample(train, 5000, rng), subsample(synth, 5000, rng), kinds)[:3]
    n_det = min(len(train), len(synth), 5000)
    det = detection_auc(subsample(train, n_det, rng), subsample(synth, n_det, rng), kinds, seed=seed)
    tr, te, sy = (derive(f) if derive else f for f in (train, test, synth))
    util = evaluate_utility(tr, te, sy, kinds, data["target"], seed=seed)
    return overall, shapes, pairs, det, util


def score(synth: pd.DataFrame, data: dict, *, seed: int) -> dict:
    kinds, train, test = data["kinds"], data["train"], data["test"]
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        overall, shapes, pairs, det, util = fidelity_and_utility(synth, data, seed=seed, rng=rng)
        # Non-members: the test rows, at most as many as the training rows (DCR share compares
        # equal-size reference samples).
        hold = subsample(test, len(train), rng)
        disc = evaluate_disclosure(train, hold, synth, kinds, target=data["target"], seed=seed,
                                   options=DisclosureOptions(anonymeter=False))
    return {"quality": _round(overall), "column_shapes": _round(shapes), "column_pair_trends": _round(pairs),
            "tstr_auc": _round(util.synthetic_score), "trtr_auc": _round(util.real_score),
            "detection_auc": _round(det), "dcr_share": _round(disc.dcr_share), "mia_auc": _round(disc.mia_auc)}


# --- output ----------------------------------------------------------------------------------------
COLUMNS = [("method", "method"), ("sites", "sites"), ("epsilon", "ε target"), ("epsilon_spent", "ε spent"),
           ("quality", "quality"), ("column_shapes", "shapes"), ("column_pair_trends", "pairs"),
           ("tstr_auc", "TSTR AUC"), ("detection_auc", "detection AUC"), ("dcr_share", "DCR share"),
           ("mia_auc", "MIA AUC"), ("fit_seconds", "fit s"), ("peak_rss_mib", "peak MiB"),
           ("sample_rows_per_s", "sample rows/s"), ("federation_overhead_seconds", "fed. overhead s"),
           ("status", "status"), ("commit", "commit")]


METHOD_NOTES = [
    "fedtab: `FederatedSynthesizer(model, epsilon, delta=1e-5, rounds, local_epochs, batch_size, seed=0, "
    "holdout=0.0)` in process; 1 site = the pooled training rows as one site; epsilon spent = the largest "
    "site ledger (preprocessing included). A commit ending in +dirty: other engineers' uncommitted edits "
    "to fedtab/ or evaluation/ were in the shared tree when the row ran.",
    "SDV 2.0 (non-DP), sdtypes set from the schema; CTGAN and TVAE with the epochs and batch above.",
    "synthcity TabDDPM (`ddpm`, non-DP), its defaults but the iterations above, conditioned on the target; "
    "it takes numbers only, so categories go in as integer codes (rounded back) and a missing number is "
    "filled with the median; a stand-in torchvision module is used because PyPI has no CPU torchvision "
    "for torch 2.13 (TabDDPM never calls it; benchmarks/anchors/_torchvision_stub.py).",
    "smartnoise-synth (same epsilon, delta 1e-5): numerical columns get the schema's public bounds "
    "(MinMax for DPCTGAN, 10 equal bins for MST/AIM), so the preprocessor spends nothing (its odometer "
    "is read back and added); like smartnoise itself, the category lists are read from the rows at no "
    "privacy cost (fedtab pays for its category release). MST/AIM spend exactly their budget. DPCTGAN "
    "(sigma 5) checks its budget only before each epoch: its spend is recomputed from the epochs it "
    "trained and can pass the target; with the epoch cap it may also stop below it.",
]


def _cell(key: str, v) -> str:
    if v is None:
        return "" if key != "epsilon" else "non-DP"
    if isinstance(v, float):
        return f"{v:,.0f}" if key in ("sample_rows_per_s", "peak_rss_mib") else (
            f"{v:.1f}" if key.endswith("seconds") else f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}")
    if isinstance(v, int) and key == "sample_rows_per_s":
        return f"{v:,}"
    return str(v).replace("|", "/")


def markdown(meta: dict, rows: list[dict]) -> str:
    trtr = next((r["trtr_auc"] for r in rows if r.get("trtr_auc") is not None), None)
    lines = [f"# fedtab against the anchors: {meta['dataset']}{' (quick smoke run)' if meta['quick'] else ''}", "",
             "Commands (in order; a later `--merge` run replaces the rows it reran):  ",
             *[f"`{c}`  " for c in meta["commands"]], f"Date (UTC): {meta['started']} to {meta['updated']}  ",
             f"Commit at start: {meta['commit']} (each row's own in the last column)  ", f"Machine: {meta['machine']}  ",
             f"Split: {meta['split']}  ", f"TRTR ROC-AUC (real training rows -> test rows): "
             f"{trtr if trtr is not None else 'n/a'}", "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", "## Settings and reductions", ""] + [f"- {n}" for n in meta["notes"]]
    lines += ["", "## Versions", "", f"- main environment: `{json.dumps(meta['versions'])}`"]
    for family, v in sorted(meta["anchor_versions"].items()):
        lines.append(f"- {family}: `{json.dumps(v)}`")
    lines += ["", "## How each method is run", "", *[f"- {n}" for n in METHOD_NOTES]]
    lines += ["", "Ideal values: quality 1; TSTR AUC as close to TRTR as possible; detection AUC 0.5 (1 = "
              "trivially told apart); DCR share 0.5 (above: closer to training rows than to unseen rows); MIA "
              "AUC 0.5. Peak MiB: max RSS of the method's own process (fit + sample). Federation overhead: "
              "fedtab's whole fit minus its training rounds (schema agreement, federated encoding, "
              "aggregation). Per-method settings, epsilon accounting details and errors are in the JSON."]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    """HEAD, plus "+dirty" when fedtab's or evaluation's files differ from it (the tree is shared with
    engineers who commit while a long run goes on: each row records the code it ran on)."""
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        head = git("rev-parse", "--short", "HEAD") or "unknown"
        return head + ("+dirty" if git("status", "--porcelain", "-uno", "--", "fedtab", "evaluation") else "")
    except OSError:
        return "unknown"


def main_versions() -> dict:
    out = {"python": platform.python_version()}
    for n in ("fedtab", "torch", "opacus", "sdv", "sdmetrics", "scikit-learn", "pandas", "numpy"):
        try:
            out[n] = version(n)
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(LOADERS), required=True)
    ap.add_argument("--quick", action="store_true", help="smoke run: a slice of the data, a few epochs")
    ap.add_argument("--only", default="", help="comma-separated substrings of method keys to run")
    ap.add_argument("--merge", action="store_true", help="keep earlier rows of the results file not rerun")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per method (default: the plan's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", action="append", default=[], help="a line for the notes (e.g. machine load)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    plan = PLANS["quick" if args.quick else args.dataset]
    timeout = args.timeout or plan["timeout"]
    methods = methods_for(plan)
    order = {m["key"]: i for i, m in enumerate(methods)}  # the table keeps the plan's order
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        methods = [m for m in methods if any(w in m["key"] for w in wanted)]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"suite_{args.dataset}{'_quick' if args.quick else ''}"
    if args.render_only:
        saved = json.loads(stem.with_suffix(".json").read_text())
        saved["meta"]["notes"] += [n for n in args.note if n not in saved["meta"]["notes"]]
        atomic_write_text(stem.with_suffix(".json"), json.dumps(saved, indent=1, default=_json_default))
        atomic_write_text(stem.with_suffix(".md"), markdown(saved["meta"], saved["rows"]))
        return
    rows, earlier = [], None
    command = "python benchmarks/suite.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.merge and stem.with_suffix(".json").exists():
        rerun = {m["key"] for m in methods}
        earlier = json.loads(stem.with_suffix(".json").read_text())
        rows = [r for r in earlier["rows"] if r["key"] not in rerun]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    meta = {"dataset": args.dataset, "quick": args.quick,
            "commands": (earlier["meta"].get("commands", [earlier["meta"].get("command")]) if earlier else [])
            + [command],
            "started": earlier["meta"]["started"] if earlier else started, "commit": git_commit(), "seed": args.seed, "timeout_seconds": timeout,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared; load average "
                       f"{os.getloadavg()[0]:.1f} at start), no GPU, one torch/BLAS thread per method",
            "versions": main_versions(), "anchor_versions": dict(earlier["meta"]["anchor_versions"]) if earlier else {},
            "notes": list(plan["notes"]) + [
                f"per-method timeout {timeout:.0f} s (a method past it is recorded as a timeout)"]
            + (earlier["meta"]["notes"][len(plan["notes"]) + 1:] if earlier else []) + args.note}
    with tempfile.TemporaryDirectory(prefix="fedtab_suite_") as tmp:
        work = Path(tmp)
        data = prepare(args.dataset, plan, work, args.seed)
        meta["split"] = (f"{len(data['train']):,} training rows in {len(data['n_sites'])} sites "
                         f"({', '.join(f'{k} {v}' for k, v in data['n_sites'].items())}); "
                         f"{len(data['test']):,} test rows; seed {args.seed}")
        for m in methods:
            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {m['key']} ...", flush=True)
            row = {"key": m["key"], "method": m["label"], "family": m["family"], "model": m["model"],
                   "sites": m["sites"], "epsilon": m["epsilon"], "settings": m["settings"],
                   "commit": git_commit(), "started": datetime.now(timezone.utc).strftime("%H:%M:%S")}
            result, synth = run_method(m, data, work, seed=args.seed, timeout=timeout)
            row.update(result)
            if synth is not None:
                try:
                    row.update(score(synth, data, seed=args.seed))
                except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
                    row["status"] = f"scoring failed: {type(exc).__name__}: {exc}"[:400]
            if row.get("versions"):
                meta["anchor_versions"][m["family"]] = row.pop("versions")
            rows = sorted([r for r in rows if r["key"] != m["key"]] + [row], key=lambda r: order.get(r["key"], 1e9))
            meta["updated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
            print("   " + json.dumps({k: row.get(k) for k in ("status", "quality", "tstr_auc", "fit_seconds")}),
                  flush=True)
            # After every method, atomically: an interrupted run keeps what it measured.
            atomic_write_text(stem.with_suffix(".json"),
                              json.dumps({"meta": meta, "rows": rows}, indent=1, default=_json_default))
            atomic_write_text(stem.with_suffix(".md"), markdown(meta, rows))


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


if __name__ == "__main__":
    main()

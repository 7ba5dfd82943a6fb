"""One hostile site among four: does it move the model's quality by more than the seed-to-seed spread?

    python benchmarks/bench_hostile.py [--tables heart adult] [--seeds 0 1 2] [--epsilons 1 none]
        [--models tvae-trimmed tvae-mean auto] [--out benchmarks/results/bench_hostile.json]
    python benchmarks/bench_hostile.py --detector [--detector-seeds 10] [--tables heart adult ...]

Issue 22 part 5. Four sites (heart: its 4 real hospitals; Adult: its 4 non-IID age-quartile sites;
``suite.prepare`` with at most 3,000 training rows, public bounds, the declared target), epsilon 1 per site
(delta 1e-5) and non-DP. One site, the largest, is hostile (the attack harness is this script's, not
product code; like ``tests/test_hostile_sites.py`` it alters what the site sends, after the site computed it):

* ``scaled``: its DP-SGD update x100; ``nan``: its weights NaN; ``flipped``: its update sign-flipped (the
  same size as an honest one, inside the screen's bound);
* ``garbage_uniform``: its table replaced by one that conforms to the schema: as many rows, every value
  drawn uniformly in the declared bounds / categories (no missing values);
* ``garbage_shuffled``: its own table with each column shuffled independently (one-way distributions
  kept, the relations between columns destroyed);
* ``inflated`` (the marginal model only): every masked release of the site (the encoding's two-way tables
  with the target and its marginal measurements) multiplied by 10 before masking (non-DP or without
  secure aggregation: its counts x10).

Model ``auto-declared``: the default with the consortium's declared site sizes (``site_rows_at_most``,
``DECLARED_SLACK`` x each site's training rows), honest and inflated (x10, and ``inflated_x2``,
``inflated_x1.5``: how small an inflation the declarations stop).

Model ``tvae-show``: the secure mean with ``training.on_failed_sum = "screen_each"`` (the default since
commit 0b50b7b: a round whose sum fails its screen is opened site by site, each update screened);
``tvae-mean``: the secure mean with ``"stop"`` (a failed sum stops the run). There the hostile site masks the
altered update (x100, NaN, flipped); ``scaled_hidden`` was a site that masks x100 and shows its honest update,
until a failed sum was opened with the round's mask keys (commit after fe4ebbe): since, the coordinator reads
the update in the sum, whatever the site keeps, so ``scaled`` and ``scaled_hidden`` are the same attack there.

Models: TVAE (DP-SGD; ``aggregation="trimmed_mean"`` and ``"mean"``) and the default chosen without model
options (``auto``: "mst" under DP and without). The update attacks do not apply to the marginal model.
Scoring: ``suite.score`` (sdmetrics quality against the training rows, TSTR, detection AUC, ...), in this
process; every fit runs in this process too (the harness patches the in-process transport). Per condition:
mean quality, its difference to the all-honest reference, the reference's sd and min-max range across
seeds, and whether |difference| < sd (and < range).

``--detector``: no training; measures the garbage-site detector (``fedtab.federation.screening``) on the
sites' one-way histogram releases of the encoding (the DP statistics the coordinator already receives):
its false alarms on the real non-IID sites and its power against the two garbage kinds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suite import LOADERS, _json_default, git_commit, main_versions, prepare, score  # noqa: E402

import fedtab  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402

TRAIN_ROWS = 3000
DELTA = 1e-5
UPDATE_ATTACKS = ("scaled", "nan", "flipped")
TABLE_ATTACKS = ("garbage_uniform", "garbage_shuffled")
CONDITIONS = {"tvae-trimmed": ("honest", *UPDATE_ATTACKS, *TABLE_ATTACKS),
              "tvae-mean": ("honest", *UPDATE_ATTACKS, *TABLE_ATTACKS),
              "tvae-show": ("honest", *UPDATE_ATTACKS, "scaled_hidden"),
              "auto": ("honest", *TABLE_ATTACKS, "inflated"),
              "auto-declared": ("honest", "inflated", "inflated_x2", "inflated_x1.5")}
TVAE = dict(rounds=4, local_epochs=5.0, batch_size=64)
# 'auto-declared': the default model with the consortium's declared site sizes (``site_rows_at_most``) at
# this many times each site's real training rows (a consortium that knows its sites' sizes within 10%).
DECLARED_SLACK = 1.1


# --- the attack harness ----------------------------------------------------------------------------
def garbage_table(frame: pd.DataFrame, schema, kind: str, rng: np.random.Generator) -> pd.DataFrame:
    """A table that conforms to ``schema``, as many rows as ``frame``: uniform values in the declared
    bounds / categories (``garbage_uniform``), or ``frame``'s columns each shuffled on its own."""
    n = len(frame)
    if kind == "garbage_shuffled":
        return pd.DataFrame({c: frame[c].to_numpy()[rng.permutation(n)] for c in frame.columns}).astype(frame.dtypes)
    out = {}
    for spec in schema.columns:
        if spec.type == "numerical":
            if spec.is_integer:
                out[spec.name] = pd.array(rng.integers(int(spec.lower), int(spec.upper) + 1, n), dtype="Int64")
            else:
                out[spec.name] = np.round(rng.uniform(spec.lower, spec.upper, n), spec.precision or 6)
        elif spec.type == "boolean":
            out[spec.name] = pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean")
        elif spec.type == "categorical":
            out[spec.name] = pd.Series(rng.choice(np.array(spec.categories, dtype=object), n), dtype="object")
        else:
            raise ValueError(f"garbage_uniform: column '{spec.name}' of type {spec.type} is not generated")
    return pd.DataFrame(out)[list(frame.columns)].astype(frame.dtypes)


@contextlib.contextmanager
def hostile(site: str, how: str):
    """Install one site's attack on what it sends (its train or measure replies), undone on exit."""
    from fedtab.federation import marginals, secagg
    from fedtab.federation.transport import InProcessTransport

    saved = []

    def patch(owner, name, new):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    if how.removesuffix("_hidden") in UPDATE_ATTACKS:
        original = InProcessTransport.request

        def altered(glob, w):
            if how == "nan":
                return {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in w.items()}
            if how.removesuffix("_hidden") == "scaled":
                return {k: glob[k] + 100.0 * (v - glob[k]) for k, v in w.items()}
            return {k: glob[k] - (v - glob[k]) for k, v in w.items()}

        def request(transport, kind, bodies):
            replies = original(transport, kind, bodies)
            if (kind == "train" and site in replies and "weights" in replies[site]  # sent in the clear
                    and not bodies[site].get("show")):  # (what it shows after a failed sum: below)
                replies[site] = {**replies[site], "weights": altered(bodies[site]["weights"], replies[site]["weights"])}
            return replies

        patch(InProcessTransport, "request", request)
        # Under secure aggregation of the updates (DP, "mean") the site masks its change itself: alter it first.
        from fedtab.federation import secure_updates

        masked_reply = secure_updates.masked_reply

        def hostile_masked_reply(name, body, reply, state, session):
            if name == site:
                reply = {**reply, "weights": altered(body["weights"], reply["weights"])}
            return masked_reply(name, body, reply, state, session)

        patch(secure_updates, "masked_reply", hostile_masked_reply)
        # ``_hidden``: it keeps its honest update (what it trains and records) and alters only what it masks.
        # After a failed sum (training.on_failed_sum) the coordinator opens the masked one with the round's
        # mask keys, whatever the site keeps.
    elif how.startswith("inflated"):
        mask, measure = secagg.SiteSession.mask, marginals.site_measure
        factor = float(how.split("_x")[1]) if "_x" in how else 10.0

        def inflated_mask(session, values, *, me, **kw):
            return mask(session, [np.asarray(v) * factor for v in values] if me == site else values, me=me, **kw)

        def inflated_measure(name, body, state, **kw):
            reply = measure(name, body, state, **kw)
            if name == site and "counts" in reply:  # sent in the clear (no secure aggregation)
                reply = {**reply, "counts": [np.asarray(c) * factor for c in reply["counts"]]}
            return reply

        patch(secagg.SiteSession, "mask", inflated_mask)
        patch(marginals, "site_measure", inflated_measure)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


# --- one run ---------------------------------------------------------------------------------------
def fit_and_sample(model: str, epsilon: float | None, frames: dict, data: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    """Like ``anchors/run_method.py``'s fedtab runs (same settings), in this process, with the aggregation."""
    from fedtab.schema import TableSchema

    events: list = []
    common = dict(epsilon=epsilon, delta=DELTA, seed=seed, schema=TableSchema.load(data["schema"]), holdout=0.0,
                  target=data["target"], site_policy=fedtab.SitePolicy(allow_non_dp=True), min_sites=3,
                  progress=lambda event, info: events.append(info))
    if model == "auto":
        synth = fedtab.FederatedSynthesizer(**common)
    elif model == "auto-declared":  # each site's size declared, from the honest table's rows
        synth = fedtab.FederatedSynthesizer(**common, site_rows_at_most={
            k: int(math.ceil(DECLARED_SLACK * n)) for k, n in data["n_sites"].items()})
    else:
        dp_share = {"preprocessing_share": 0.3} if epsilon is not None else {}
        how = {"tvae-trimmed": {"aggregation": "trimmed_mean"},
               "tvae-mean": {"aggregation": "mean", "on_failed_sum": "stop"},
               "tvae-show": {"aggregation": "mean", "on_failed_sum": "screen_each"}}[model]
        synth = fedtab.FederatedSynthesizer("tvae", **how, **TVAE, **dp_share, **common)
    t0 = time.perf_counter()
    synth.fit(frames)
    fit_s = time.perf_counter() - t0
    synth_rows = synth.sample(len(data["train"]), seed=seed + 1)
    from evaluation._tables import to_plain

    dropped = sorted({s for info in events for s in info.get("dropped", [])})
    return to_plain(synth_rows, data["schema_obj"]), {"fit_seconds": round(fit_s, 1), "model_used": synth.job_.model,
                                                      "dropped": dropped}


def run_grid(args, meta: dict, out: Path, earlier: list[dict]) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    ident = lambda r: (r["table"], r["epsilon"], r["model"], r["condition"], r["seed"])  # noqa: E731
    planned = {(t, e, m, c, s) for t in args.tables for e in args.epsilons for m in args.models
               for c in CONDITIONS[m] for s in args.seeds}
    rows: list[dict] = [r for r in earlier if ident(r) not in planned]  # --merge: the rows not rerun
    with tempfile.TemporaryDirectory(prefix="fedtab_hostile_") as tmp:
        for table in args.tables:
            data, frames = _prepared(table, tmp)
            site = max(frames, key=lambda k: len(frames[k]))  # the largest site is the hostile one
            scored = data
            if args.score_on_honest:  # every run scored against the other three sites' rows only
                starts = np.cumsum([0, *data["n_sites"].values()])
                keep = np.concatenate([np.arange(a, b) for k, a, b in zip(data["n_sites"], starts, starts[1:])
                                       if k != site])
                scored = {**data, "train": data["train"].iloc[keep].reset_index(drop=True)}
            for eps in args.epsilons:
                for model in args.models:
                    for cond in CONDITIONS[model]:
                        for seed in args.seeds:
                            key = f"{table}-eps{eps}-{model}-{cond}-seed{seed}"
                            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {key} ...", flush=True)
                            sites = dict(frames)
                            if cond in TABLE_ATTACKS:
                                sites[site] = garbage_table(frames[site], data["schema_obj"], cond,
                                                            np.random.default_rng(1000 + seed))
                            row = {"table": table, "epsilon": eps, "model": model, "condition": cond, "seed": seed,
                                   "hostile_site": None if cond == "honest" else site,
                                   "commit": meta["commit"]}  # the code this process loaded at its start
                            try:
                                with hostile(site, cond):
                                    synth, info = fit_and_sample(model, None if eps == "none" else float(eps),
                                                                 sites, data, seed)
                                row.update(status="ok", **info, **score(synth, scored, seed=seed))
                            except Exception as exc:  # noqa: BLE001 - recorded (a run may stop: min_sites)
                                row["status"] = f"{type(exc).__name__}: {exc}"[:400]
                            print(f"   {row['status'][:80]} quality {row.get('quality')} dropped {row.get('dropped')} "
                                  f"fit {row.get('fit_seconds')} s", flush=True)
                            rows.append(row)
                            atomic_write_text(out, json.dumps({"meta": meta, "rows": rows}, indent=1,
                                                              default=_json_default))
    return rows


# --- summary ---------------------------------------------------------------------------------------
def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["table"], r["epsilon"], r["model"]), {}).setdefault(r["condition"], []).append(r)
    out = []
    for (table, eps, model), conds in groups.items():
        ref = [r["quality"] for r in conds.get("honest", []) if r.get("status") == "ok"]
        sd = statistics.stdev(ref) if len(ref) > 1 else None
        span = max(ref) - min(ref) if ref else None
        for cond, rs in conds.items():
            q = [r["quality"] for r in rs if r.get("status") == "ok"]
            mean = statistics.fmean(q) if q else None
            diff = None if mean is None or not ref or cond == "honest" else mean - statistics.fmean(ref)
            out.append({"table": table, "epsilon": eps, "model": model, "condition": cond, "runs": len(rs),
                        "ok": len(q), "quality_mean": _r(mean),
                        "quality_sd": _r(statistics.stdev(q)) if len(q) > 1 else None,
                        "difference": _r(diff), "reference_sd": _r(sd), "reference_range": _r(span),
                        "within_sd": None if diff is None or sd is None else abs(diff) < sd,
                        "within_range": None if diff is None or span is None else abs(diff) < span,
                        "dropped": sorted({s for r in rs for s in r.get("dropped") or []}),
                        "failures": sorted({r["status"][:160] for r in rs if r.get("status") != "ok"})})
    return out


def _r(x, digits=4):
    return None if x is None else round(float(x), digits)


def _summary(rows: list[dict]) -> list[dict]:
    summary = summarise(rows)
    for e in summary:
        e["model_used"] = next((r["model_used"] for r in rows if r["model"] == e["model"] and r.get("model_used")),
                               None)
    return summary


def render(meta: dict, summary: list[dict], detector: dict | None) -> str:
    f = lambda x: "-" if x is None else f"{x:+.3f}" if isinstance(x, float) and x < 0 else f"{x:.3f}"  # noqa: E731
    yn = lambda b: "-" if b is None else "yes" if b else "**no**"  # noqa: E731
    scored_on = meta.get("scored_on", "all 4 sites' training rows")
    auto = "/".join(sorted({e.get("model_used") or "?" for e in summary if e.get("model") == "auto"}))
    lines = ["# One hostile site among four (benchmarks/bench_hostile.py)", "",
             f"Commit {meta['commit']}, started {meta['started']}; delta {DELTA}; at most {TRAIN_ROWS} training rows; "
             f"TVAE {TVAE['rounds']} rounds x {TVAE['local_epochs']:g} local epochs, batch {TVAE['batch_size']}; "
             f"'auto' = the default model ({auto}); "
             f"seeds {meta['seeds']}; hostile site: the largest ({meta.get('hostile_sites')}). "
             "Command: `" + meta["command"] + "`.", "",
             f"Quality: sdmetrics quality against {scored_on} (`suite.score`). Difference: the condition's mean "
             "quality minus the all-honest mean of the same table, epsilon and model. Spread: the honest runs' sd "
             "across seeds (the criterion) and their min-max range (shown too).", "",
             "| table | epsilon | model | condition | quality (mean ± sd) | difference | honest sd | honest range | "
             "< sd | < range | dropped | ok/runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        q = "-" if e["quality_mean"] is None else f"{e['quality_mean']:.3f}" + (
            f" ± {e['quality_sd']:.3f}" if e["quality_sd"] is not None else "")
        lines.append(f"| {e['table']} | {e['epsilon']} | {e['model']} | {e['condition']} | {q} | "
                     f"{f(e['difference'])} | "
                     f"{f(e['reference_sd'])} | {f(e['reference_range'])} | {yn(e['within_sd'])} | "
                     f"{yn(e['within_range'])} | {', '.join(e['dropped']) or '-'} | {e['ok']}/{e['runs']} |")
    judged = [e for e in summary if e["condition"] != "honest"]
    lines += ["", f"Acceptance (|difference| < the honest sd, every run finished): "
              f"{sum(1 for e in judged if e['within_sd'] and e['ok'] == e['runs'])} of {len(judged)} conditions; "
              f"within the min-max range: {sum(1 for e in judged if e['within_range'] and e['ok'] == e['runs'])}; "
              f"runs stopped: {sum(1 for e in judged if e['ok'] < e['runs'])} condition(s)."]
    fails = [(e, m) for e in summary for m in e["failures"]]
    if fails:
        lines += ["", "Runs that stopped:", ""] + [f"- {e['table']} {e['epsilon']} {e['model']} {e['condition']}: {m}"
                                                   for e, m in fails]
    if meta.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in meta["notes"]]
    if detector:
        lines += ["", *render_detector(detector)]
    return "\n".join(lines) + "\n"


# --- the garbage-site detector on the encoding's per-site histograms -------------------------------
def site_histograms(frames: dict, schema, epsilon: float | None, seed: int) -> tuple:
    """The sites' ``histogram`` releases of the encoding (fresh secret noise each call) and the plan,
    as the coordinator receives them (30% of epsilon to the encoding, like the fits above)."""
    from fedtab.privacy.ledger import PrivacyLedger
    from fedtab.transform.plan import EncodingDP, EncodingPlan
    from fedtab.transform.statistics import PHASE_HISTOGRAM, merge_statistics, phase_request, site_statistics

    dp = None if epsilon is None else EncodingDP(epsilon=0.3 * epsilon, delta=DELTA)
    plan = EncodingPlan(schema, dp=dp, seed=seed)
    ledgers = {s: PrivacyLedger(s, epsilon_budget=None if dp is None else dp.epsilon,
                                delta=None if dp is None else dp.delta) for s in frames}
    previous = None  # the phases up to the histograms, as ``run_phases`` asks them (without the fit)
    for phase in plan.phases()[:plan.phases().index(PHASE_HISTOGRAM) + 1]:
        request = phase_request(plan, phase, previous)
        histogram = {s: site_statistics(df, plan, phase, request, ledger=ledgers[s]) for s, df in frames.items()}
        previous = merge_statistics(plan, phase, [histogram[s] for s in sorted(histogram)])
    return plan, histogram


def _prepared(table: str, tmp: str) -> tuple[dict, dict[str, pd.DataFrame]]:
    """``table``'s inputs as bench_tables prepares them (in a folder of ``tmp``), and each site's rows."""
    work = Path(tmp) / table
    work.mkdir()
    data = prepare(table, {"train_rows": TRAIN_ROWS}, work, 0)
    return data, {k: pd.read_parquet(p) for k, p in data["sites"].items()}


def run_detector(args, meta: dict) -> dict:
    from fedtab.federation.screening import garbage_sites

    results = {"splits": [], "seeds": args.detector_seeds, "epsilons": args.epsilons}
    with tempfile.TemporaryDirectory(prefix="fedtab_detect_") as tmp:
        for table in args.tables:
            data, frames = _prepared(table, tmp)
            schema = data["schema_obj"]
            for eps in args.epsilons:
                e = None if eps == "none" else float(eps)
                tally = {"table": table, "epsilon": eps, "sites": len(frames), "honest_runs": 0, "false_alarms": 0,
                         "false_alarm_sites": [],
                         **{k: {"runs": 0, "named": 0, "others_named": 0} for k in TABLE_ATTACKS}}
                for seed in range(args.detector_seeds):
                    plan, hist = site_histograms(frames, schema, e, seed)
                    flagged = garbage_sites(plan, hist)
                    tally["honest_runs"] += 1
                    tally["false_alarms"] += bool(flagged)
                    tally["false_alarm_sites"] += sorted(flagged)
                    for kind in TABLE_ATTACKS:
                        for victim in frames:  # each site in turn replaced by garbage
                            rng = np.random.default_rng(10_000 * seed + hash(victim) % 1000)
                            bad = {**frames, victim: garbage_table(frames[victim], schema, kind, rng)}
                            plan, hist = site_histograms(bad, schema, e, seed)
                            flagged = garbage_sites(plan, hist)
                            tally[kind]["runs"] += 1
                            tally[kind]["named"] += victim in flagged
                            tally[kind]["others_named"] += len(set(flagged) - {victim})
                print(json.dumps(tally), flush=True)
                results["splits"].append(tally)
    return results


def render_detector(d: dict) -> list[str]:
    lines = ["## Garbage-site detector on the encoding's per-site one-way histograms", "",
             f"Each split: {d['seeds']} draws of fresh secret DP noise; for power every site in turn replaced by "
             "garbage (each kind), so runs = draws x sites. False alarm: any site named in a run where all sites "
             "are real. 'others named': real sites named in the runs with one garbage site. "
             f"Commit {d.get('commit')}; command: `{d.get('command')}`.", "",
             "| table | epsilon | sites | false alarms (runs with any real site named) | uniform garbage named | "
             "shuffled garbage named | real sites named beside garbage |", "|---|---|---|---|---|---|---|"]
    for t in d["splits"]:
        u, s = t["garbage_uniform"], t["garbage_shuffled"]
        lines.append(f"| {t['table']} | {t['epsilon']} | {t['sites']} | {t['false_alarms']}/{t['honest_runs']} | "
                     f"{u['named']}/{u['runs']} | {s['named']}/{s['runs']} | {u['others_named'] + s['others_named']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", default=["heart", "adult"], choices=sorted(LOADERS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epsilons", nargs="+", default=["1", "none"], help="epsilon per site, or 'none' (non-DP)")
    ap.add_argument("--models", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--conditions", nargs="+", default=None, help="run only these conditions")
    ap.add_argument("--score-on-honest", action="store_true",
                    help="score against the training rows of the three sites that are never hostile (not all four)")
    ap.add_argument("--merge", action="store_true", help="keep the earlier rows of the results file not rerun")
    ap.add_argument("--detector", action="store_true", help="measure the garbage-site detector only (no training)")
    ap.add_argument("--detector-seeds", type=int, default=10)
    ap.add_argument("--detector-json", default=None, help="take the detector results from this file, re-render")
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    ap.add_argument("--note", action="append", default=[], help="with --render-only: a line for the notes")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_hostile.json"))
    args = ap.parse_args()
    if args.conditions:  # exactly these (with --merge the earlier honest rows stay the reference)
        for m in CONDITIONS:
            CONDITIONS[m] = tuple(c for c in CONDITIONS[m] if c in args.conditions)
    out = Path(args.out)
    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": git_commit(),
            "versions": main_versions(), "train_rows": TRAIN_ROWS, "delta": DELTA, "tvae": TVAE,
            "seeds": args.seeds, "scored_on": "the 3 never-hostile sites' training rows" if args.score_on_honest
            else "all 4 sites' training rows", "command": "python benchmarks/bench_hostile.py " + " ".join(sys.argv[1:])}
    saved = json.loads(out.read_text()) if out.exists() else {}
    if args.detector_json or args.render_only:  # a detector measurement made to another file; re-render
        if args.detector_json:
            saved["detector"] = json.loads(Path(args.detector_json).read_text())["detector"]
        saved["meta"]["notes"] = saved["meta"].get("notes", []) + [n for n in args.note
                                                                   if n not in saved["meta"].get("notes", [])]
        saved["summary"] = _summary(saved["rows"])  # rows merged into the file by hand count too
        atomic_write_text(out, json.dumps(saved, indent=1, default=_json_default))
        atomic_write_text(out.with_suffix(".md"), render(saved["meta"], saved["summary"], saved.get("detector")))
        return
    if args.detector:
        detector = run_detector(args, meta)
        detector["command"], detector["commit"] = meta["command"], meta["commit"]
        saved["detector"] = detector
        atomic_write_text(out, json.dumps(saved, indent=1, default=_json_default))
        if "summary" in saved:
            atomic_write_text(out.with_suffix(".md"), render(saved["meta"], saved["summary"], detector))
        print("\n".join(render_detector(detector)))
        return
    if args.merge and saved.get("meta"):
        meta["command"] = saved["meta"]["command"] + "; then " + meta["command"]
        meta["started"] = saved["meta"]["started"]
        meta["notes"] = saved["meta"].get("notes", [])
    rows = run_grid(args, meta, out, saved.get("rows", []) if args.merge else [])
    summary = _summary(rows)
    meta["hostile_sites"] = sorted({r["hostile_site"] for r in rows if r.get("hostile_site")})
    detector = saved.get("detector")
    atomic_write_text(out, json.dumps({"meta": meta, "summary": summary, "rows": rows, "detector": detector},
                                      indent=1, default=_json_default))
    text = render(meta, summary, detector)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark: what the release gate's privacy checks catch at the heart hospitals, and how often they
refuse a table that never saw a hospital's rows.

Every hospital's rows are split as the demo splits them (80/20, ``site_seed(seed, site, 1)``); the
synthetic rows a hospital scores number its training rows (as the demo's table gives each hospital
about its share). The gate's privacy checks are read as each hospital now decides them at home
(``fedtab.federation.site_evaluation``, since the evaluation protocol of 89f2e72): every hospital
runs ``fedtab.release.privacy_tests`` on its own figures alone, under
``site_release_policy(None, None, n_sites=4)`` (the default policy with ``family_alpha`` 0.1 split
over the 4 hospitals: Holm over its 6 tested figures - DCR share, near-copy excess, membership AUC,
singling-out, linkability, inference - at family-wise 0.025, each over its band; Bonferroni across
the hospitals), plus the exact-copy rate as a plain threshold. A table is refused when any hospital
refuses it. (Before 89f2e72 this script read Holm once over 4 hospitals x 6 figures at 0.1; the
first Holm level is the same number under both rules, 0.1 / 24, the later steps differ.) The lower
DCR bound (a table hugging the holdout rows, or a swapped split) is counted apart: a table made of
holdout rows trips it by construction.

(a) Planted memorisation, ``--seeds`` seeds: at one hospital the table holds near copies (one integer
    column +-1 within the schema's bounds) of 20% / 100% of its training rows, or exact copies of
    1 row / 2% / 20% / 100%, among background rows; every other hospital scores a background table.
    Refused = any privacy check fails at any hospital. Two backgrounds: the hospital's holdout rows
    resampled, and rows of the other three hospitals.
(b) False alarms, ``--draws`` draws per hospital, all four hospitals at once, a fresh split per draw:
    tables that never saw the training rows: (1) the holdout rows resampled; (2) fresh rows: 20% of the
    hospital's rows set aside, the rest split 80/20, the set-aside rows as the table (not resampled, so
    fewer rows than the demo's); (3) a DP-CTGAN
    (epsilon 1, the demo's settings, no site column) trained WITHOUT that hospital, ``--dp-models``
    models per hospital, the draws cycling through them (each draw its own sample and split).
(c) Power: for each check and hospital, the smallest planted share of near copies refused (at the
    first Holm level inside one hospital, ``family_alpha / 4 / 6`` = 0.1 / 24, and over the band) in at
    least 90% of ``--reps`` plantings, on the grid ``--shares``; background: other hospitals' rows
    (every check), and resampled holdout rows (distance checks only). Beside it, what each hospital's
    evaluation itself reports (``NearCopies.power`` at that level, read by the gate's
    ``memorisation_power`` check). ``--skip-power`` (or ``--parts a b``) leaves part (c) out.

Run:  python benchmarks/bench_gate_power.py [--seeds 10] [--draws 30] [--reps 20] [--dp-models 5] [--skip-power]
Writes benchmarks/results/bench_gate_power.json (with the arguments and the rule it ran under).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation._tables import kinds_of, to_plain  # noqa: E402
from evaluation.disclosure import DisclosureOptions, evaluate_disclosure  # noqa: E402
from evaluation.planting import planted_table  # noqa: E402
from fedtab.datasets import heart_schema, load_heart_sites  # noqa: E402
from fedtab.demo import DEMO_TARGET  # noqa: E402
from fedtab.federation.site import site_seed, split_holdout  # noqa: E402
from fedtab.federation.site_evaluation import site_release_policy  # noqa: E402
from fedtab.release import TESTED_CHECKS, ReleasePolicy, memorised_share_caught, privacy_tests  # noqa: E402
from fedtab.schema import atomic_write_text  # noqa: E402
from fedtab.validation import validate_table  # noqa: E402

SCHEMA = heart_schema()
KINDS = kinds_of(SCHEMA)
CHECKS = [c for c, *_ in TESTED_CHECKS] + ["exact_copies"]
DISTANCE_CHECKS = ("dcr_share", "near_copies", "mia_auc", "exact_copies")
SCENARIOS = (("near 20%", 0.2, False, None), ("near 100%", 1.0, False, None), ("exact 1 row", 0.0, True, 1),
             ("exact 2%", 0.02, True, None), ("exact 20%", 0.2, True, None), ("exact 100%", 1.0, True, None))


def _sites() -> dict[str, pd.DataFrame]:
    return {s: to_plain(validate_table(f, SCHEMA, source=s), SCHEMA) for s, f in load_heart_sites().items()}


def _score(train, holdout, table, seed: int, *, anonymeter: bool = True) -> dict:
    r = evaluate_disclosure(train, holdout, table, KINDS, target=DEMO_TARGET, seed=seed,
                            options=DisclosureOptions(resplits=0, anonymeter=anonymeter, power_draws=0))
    return r.figures()


def _gate(figures: dict[str, dict], policy: ReleasePolicy) -> dict:
    """The privacy checks as the hospitals decide them at home: each hospital reads its own figures
    alone (``fedtab.release.privacy_tests`` on ``{site: figures[site]}``: Holm over its 6 tested figures
    at ``policy.family_alpha``, which is the site policy's, i.e. the default's split over the hospitals),
    and the exact-copy threshold; the lower DCR bound apart. The table is refused when any hospital
    refuses it. Returns the refused 'check@site' pairs."""
    tested = []
    for s, f in figures.items():
        _, record = privacy_tests(policy, {s: f})
        tested += [f"{t['check']}@{t['site']}" for t in record["tests"] if t["refused"]]
    excess = {s: f["disclosure.exact_copy_rate"] - f["disclosure.natural_copy_rate"] for s, f in figures.items()}
    exact = [f"exact_copies@{s}" for s, e in excess.items() if not max(0.0, e) <= policy.max_exact_copy_rate]
    low = [s for s, f in figures.items() if not f["disclosure.dcr_share"] >= policy.dcr_share_min]
    # The same gate were max_exact_copy_rate 0 (any exact copy beyond the natural rate refused).
    strict = [f"exact_copies@{s}" for s, e in excess.items() if e > 1e-12]
    return {"refused": sorted(tested + exact), "dcr_share_low": low, "refused_exact_0": sorted(tested + strict)}


def _background(kind: str, site: str, train, holdout, rows: dict) -> pd.DataFrame:
    if kind == "holdout":
        return holdout
    return pd.concat([f for s, f in rows.items() if s != site], ignore_index=True)


def planted(rows: dict, seeds: int, policy: ReleasePolicy, log) -> dict:
    out = {}
    for bg in ("holdout", "other"):
        counts = {s: {name: [] for name, *_ in SCENARIOS} for s in rows}
        strict = {s: {name: [] for name, *_ in SCENARIOS} for s in rows}
        for seed in range(seeds):
            rng = np.random.default_rng([seed, 11])
            splits = {s: split_holdout(f, fraction=0.2, seed=site_seed(seed, s, 1)) for s, f in rows.items()}
            null = {}
            for s, (tr, ho) in splits.items():
                back = _background(bg, s, tr, ho, rows)
                null[s] = _score(tr, ho, planted_table(tr, back, 0.0, len(tr), rng, schema=SCHEMA), seed)
            for s, (tr, ho) in splits.items():
                back = _background(bg, s, tr, ho, rows)
                for name, share, exact, copies in SCENARIOS:
                    table = planted_table(tr, back, share, len(tr), rng, schema=SCHEMA, exact=exact, copies=copies)
                    g = _gate({**null, s: _score(tr, ho, table, seed)}, policy)
                    counts[s][name].append(g["refused"])
                    strict[s][name].append(g["refused_exact_0"])
            log(f"  (a) background {bg}: seed {seed} done")
        out[bg] = {s: {name: {"refused": sum(bool(r) for r in runs), "of": len(runs),
                              "checks": _count_checks(runs),
                              "refused_if_max_exact_copy_rate_0": sum(bool(r) for r in strict[s][name])}
                       for name, runs in per.items()}
                   for s, per in counts.items()}
    return out


def _count_checks(runs: list[list[str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        for name in {x.split("@")[0] for x in r}:
            out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def _dp_tables(rows_typed: dict, models: int, log) -> dict:
    """For each hospital, ``models`` DP-CTGANs (epsilon 1, the demo's settings, no site column) trained on
    the three other hospitals."""
    from fedtab.api import FederatedSynthesizer

    out = {}
    for s in rows_typed:
        out[s] = []
        for m in range(models):
            t = time.perf_counter()
            synth = FederatedSynthesizer("ctgan", epsilon=1.0, delta=1e-5, rounds=10, local_epochs=2.0, batch_size=256,
                                         seed=m, preprocessing_share=0.8, schema=SCHEMA).fit(
                {o: f for o, f in rows_typed.items() if o != s})
            out[s].append(synth)
            log(f"  (b) DP model {m} without {s}: {time.perf_counter() - t:.0f} s")
    return out


def false_alarms(rows: dict, draws: int, dp_models: int, policy: ReleasePolicy, log) -> dict:
    typed = {s: validate_table(f, SCHEMA, source=s) for s, f in load_heart_sites().items()}
    models = _dp_tables(typed, dp_models, log) if dp_models else {}
    kinds = ("holdout resampled", "fresh rows set aside") + (("DP model without the site",) if models else ())
    out = {}
    for kind in kinds:
        runs, low, strict = [], [], []
        for d in range(draws):
            rng = np.random.default_rng([d, 13])
            figures = {}
            for s, f in rows.items():
                k = site_seed(1000 + d, s, 1)
                if kind == "fresh rows set aside":
                    rest, fresh = split_holdout(f, fraction=0.2, seed=k + 1)
                    tr, ho = split_holdout(rest, fraction=0.2, seed=k)
                    # Not resampled: a natural duplicate of a training row (Hungary and VA hold a pair of
                    # identical rows each) drawn 4 times over would read as 4 exact copies.
                    table = fresh.reset_index(drop=True)
                else:
                    tr, ho = split_holdout(f, fraction=0.2, seed=k)
                    if kind == "holdout resampled":
                        table = ho.iloc[rng.choice(len(ho), size=len(tr))].reset_index(drop=True)
                    else:
                        synth = models[s][d % len(models[s])]
                        table = to_plain(synth.sample(len(tr), seed=d, quantile_map=True), SCHEMA)
                figures[s] = _score(tr, ho, table, d)
            g = _gate(figures, policy)
            runs.append(g["refused"])
            low.append(g["dcr_share_low"])
            strict.append(g["refused_exact_0"])
        out[kind] = {"draws": draws, "refused": sum(bool(r) for r in runs),
                     "per_site": {s: sum(any(x.endswith("@" + s) for x in r) for r in runs) for s in rows},
                     "checks": _count_checks(runs), "dcr_share_low_tripped": sum(bool(x) for x in low),
                     "refused_if_max_exact_copy_rate_0": sum(bool(x) for x in strict),
                     "refused_by_tested_figures": sum(any(not x.startswith("exact_copies@") for x in r) for r in runs),
                     "refusals": runs}
        log(f"  (b) {kind}: {out[kind]['refused']} of {draws} refused")
    return out


def power(rows: dict, reps: int, shares: list[float], policy: ReleasePolicy, log) -> dict:
    """``policy``: a hospital's own (family_alpha already split over the hospitals); each check is read
    at the first Holm level inside the hospital, family_alpha / 4 / 6 (= 0.1 / 24, as under the old
    rule's Holm over 4 x 6)."""
    level = policy.family_alpha / len(TESTED_CHECKS)
    out = {}
    for bg, anonymeter in (("other", True), ("holdout", False)):
        per_site = {}
        for s, f in rows.items():
            caught = {c: {} for c in CHECKS}
            for share in shares:
                hits = {c: 0 for c in CHECKS}
                for rep in range(reps):
                    rng = np.random.default_rng([rep, 17, int(share * 1000)])
                    tr, ho = split_holdout(f, fraction=0.2, seed=site_seed(rep, s, 1))
                    table = planted_table(tr, _background(bg, s, tr, ho, rows), share, len(tr), rng, schema=SCHEMA)
                    fig = _score(tr, ho, table, rep, anonymeter=anonymeter)
                    for check, name, band_key, _ in TESTED_CHECKS:
                        v, p = fig.get(f"disclosure.{name}"), fig.get(f"disclosure.{name}_p")
                        hits[check] += bool(v is not None and p is not None and p <= level
                                            and v > getattr(policy, band_key))
                    hits["exact_copies"] += bool(fig["disclosure.exact_copy_rate"] - fig["disclosure.natural_copy_rate"]
                                                 > policy.max_exact_copy_rate)
                for c in CHECKS:
                    caught[c][share] = hits[c] / reps
            checks = CHECKS if anonymeter else DISTANCE_CHECKS
            per_site[s] = {c: {"min_share_at_90": next((sh for sh in shares if caught[c][sh] >= 0.9), None),
                               "power": {str(sh): caught[c][sh] for sh in shares}} for c in checks}
            log(f"  (c) background {bg}, {s}: " + ", ".join(
                f"{c} {per_site[s][c]['min_share_at_90']}" for c in checks))
        out[bg] = per_site
    # What each hospital's evaluation reports of itself (read by the gate's memorisation_power check).
    own = {}
    for s, f in rows.items():
        tr, ho = split_holdout(f, fraction=0.2, seed=site_seed(0, s, 1))
        table = ho.iloc[np.random.default_rng(0).choice(len(ho), size=len(tr))].reset_index(drop=True)
        r = evaluate_disclosure(tr, ho, table, KINDS, seed=0, options=DisclosureOptions(resplits=0, anonymeter=False))
        own[s] = {"min_share_at_90": memorised_share_caught(policy, r.near_copies, len(TESTED_CHECKS)),
                  "rank": r.near_copies.rank, "threshold": r.near_copies.threshold,
                  "expected_rate": r.near_copies.expected, "holdout_rate": r.near_copies.holdout_rate}
    out["site_reported"] = own
    out["level"] = level
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="(a) planted memorisation: seeds per hospital")
    parser.add_argument("--draws", type=int, default=30, help="(b) false alarms: draws per hospital and null")
    parser.add_argument("--dp-models", type=int, default=5, help="(b) DP models per hospital trained without it")
    parser.add_argument("--reps", type=int, default=20, help="(c) plantings per share")
    parser.add_argument("--shares", type=float, nargs="+",
                        default=[0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0])
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--skip-power", action="store_true", help="leave part (c) out (same as --parts a b)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_gate_power.json")
    args = parser.parse_args()
    if args.skip_power:
        args.parts = [p for p in args.parts if p != "c"]
    policy = ReleasePolicy.load()
    rows = _sites()
    # The policy each hospital decides by (no site policy of its own: the default's thresholds), as
    # fedtab.federation.site_evaluation builds it: family_alpha split over the hospitals.
    site_policy = site_release_policy(None, None, n_sites=len(rows))
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    result: dict = {"benchmark": "bench_gate_power",
                    "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "rule": {"method": "each hospital decides at home: Holm over its own 6 tested figures at "
                                       "family_alpha / hospitals, each over its band; exact-copy threshold; a table "
                                       "is refused when any hospital refuses it (protocol of 89f2e72)",
                             "family_alpha": policy.family_alpha, "hospitals": len(rows),
                             "site_family_alpha": site_policy.family_alpha,
                             "tests_per_hospital": len(TESTED_CHECKS),
                             "first_holm_level": site_policy.family_alpha / len(TESTED_CHECKS)},
                    "policy": policy.to_dict(), "site_policy": site_policy.to_dict(),
                    "sizes": {s: {"rows": len(f), "train": len(split_holdout(f, fraction=0.2, seed=1)[0])}
                              for s, f in rows.items()}}
    if "a" in args.parts:
        result["planted"] = planted(rows, args.seeds, site_policy, log)
    if "b" in args.parts:
        result["false_alarms"] = false_alarms(rows, args.draws, args.dp_models, site_policy, log)
    if "c" in args.parts:
        result["power"] = power(rows, args.reps, args.shares, site_policy, log)
    result["seconds"] = time.perf_counter() - t0
    _print(result, args)
    atomic_write_text(args.out, json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


def _print(r: dict, args) -> None:
    sites = list(r["sizes"])
    if "planted" in r:
        print(f"\n(a) planted memorisation: tables refused by the privacy checks, of {args.seeds} seeds "
              "[most frequent failing checks]")
        for bg, per in r["planted"].items():
            print(f"  background: {'holdout rows resampled' if bg == 'holdout' else 'rows of the other hospitals'}")
            print(f"  {'hospital':<14}" + "".join(f"{name:>14}" for name, *_ in SCENARIOS))
            for s in sites:
                print(f"  {s:<14}" + "".join(f"{per[s][name]['refused']:>11}/{per[s][name]['of']:<2}"
                                             for name, *_ in SCENARIOS))
        strict = lambda x: f"{x['refused_if_max_exact_copy_rate_0']}/{x['of']}"  # noqa: E731
        print("  exact 1 row, were max_exact_copy_rate 0 (any exact copy beyond the natural rate refused): "
              + "; ".join(f"{bg}: " + ", ".join(f"{s} {strict(per[s]['exact 1 row'])}" for s in sites)
                          for bg, per in r["planted"].items()))
        need = [(bg, s) for bg, per in r["planted"].items() for s in sites
                if per[s]["near 20%"]["refused"] < 0.9 * per[s]["near 20%"]["of"]]
        always = [(bg, s, name) for bg, per in r["planted"].items() for s in sites for name, *_ in SCENARIOS
                  if name != "near 20%" and per[s][name]["refused"] < per[s][name]["of"]]
        print("  target 20% near copies refused >= 9 in 10 at every hospital: "
              + ("MET" if not need else f"UNMET at {need}"))
        print("  target 100% near copies and exact copies always refused: "
              + ("MET" if not always else f"UNMET for {always}"))
    if "false_alarms" in r:
        print("\n(b) false alarms: draws refused by the privacy checks (any hospital; per hospital: refusals its "
              "own checks made)")
        for kind, x in r["false_alarms"].items():
            per = ", ".join(f"{s} {x['per_site'][s]}" for s in sites)
            print(f"  {kind:<28} {x['refused']:>3}/{x['draws']} ({per}); checks {x['checks'] or '-'}; "
                  f"tested figures alone {x['refused_by_tested_figures']}/{x['draws']}; "
                  f"lower DCR bound tripped {x['dcr_share_low_tripped']}/{x['draws']}; "
                  f"were max_exact_copy_rate 0: {x['refused_if_max_exact_copy_rate_0']}/{x['draws']}")
        for kind, x in r["false_alarms"].items():
            worst = x["refused"] / x["draws"]
            print(f"  target at most 1 in 10 (every hospital, >= 30 draws), {kind}: "
                  + ("MET" if worst <= 0.1 and x["draws"] >= 30 else f"UNMET ({x['refused']}/{x['draws']})"))
    if "power" in r:
        print(f"\n(c) smallest planted share of near copies refused in >= 90% of {args.reps} plantings "
              f"(first Holm level inside a hospital, family_alpha / 4 / 6 = {r['power']['level']:.3g}, over the band; "
              "'-' none up to 1.0)")
        for bg in ("other", "holdout"):
            per = r["power"][bg]
            checks = list(next(iter(per.values())))
            print(f"  background: {'rows of the other hospitals' if bg == 'other' else 'holdout rows resampled'}")
            print(f"  {'hospital':<14}" + "".join(f"{c:>18}" for c in checks))
            for s in sites:
                print(f"  {s:<14}" + "".join(f"{_share(per[s][c]['min_share_at_90']):>18}" for c in checks))
        own = r["power"]["site_reported"]
        print("  each hospital's own report (near-copy check, what the gate reads): "
              + ", ".join(f"{s} {_share(own[s]['min_share_at_90'])}" for s in sites))


def _share(x) -> str:
    return "-" if x is None else f"{x:g}"


if __name__ == "__main__":
    main()

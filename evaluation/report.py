"""The evaluation report: one self-contained HTML file (inline SVG, inline CSS, no script, no network)
and a JSON file of every figure. Both are written atomically.

``ledger`` maps a site to its privacy ledger: a ``PrivacyLedger.to_dict()`` dict, a list of entries
(dicts with ``epsilon_after`` or ``epsilon``) or a plain epsilon. ``verdict`` is the release gate's
verdict (``fedtab.release.Verdict`` or its ``to_dict()``); evaluation does not import the gate.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Mapping

from evaluation._svg import PALETTE, REAL, SYNTH, bars, heatmap
from evaluation.aggregate import Evaluation
from fedtab.schema import atomic_write_text

REPORT_FORMAT = "fedtab.evaluation/1"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;border-bottom:2px solid #eee;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:18px 0 6px} table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums} .pass{color:#137333;font-weight:600}
.fail{color:#b3261e;font-weight:600} .banner{padding:12px 16px;border-radius:6px;font-size:18px;font-weight:700}
.released{background:#e6f4ea;color:#137333} .refused{background:#fce8e6;color:#b3261e}
.grid{stroke:#eee} .rule{stroke:#b3261e;stroke-dasharray:4 3} .t{font-size:12px;font-weight:600}
.a{font-size:10px;fill:#444} .charts{display:flex;flex-wrap:wrap;gap:8px} .muted{color:#666;font-size:12px}
svg.chart{background:#fff;border:1px solid #f0f0f0}
"""


def ledger_epsilons(ledger: Mapping[str, Any] | None) -> dict[str, float]:
    """Total epsilon per site from any accepted ledger form (``inf`` for a non-DP site)."""
    out = {}
    for site, led in (ledger or {}).items():
        out[site] = _total_epsilon(led)
    return out


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _entries(led: Any) -> list[dict]:
    if isinstance(led, Mapping):
        return list(led.get("entries", []))
    if isinstance(led, (list, tuple)):
        return [e if isinstance(e, Mapping) else {"epsilon": e} for e in led]
    return []


def _total_epsilon(led: Any) -> float:
    if isinstance(led, Mapping) and "epsilon" in led:
        return _as_float(led["epsilon"])
    entries = _entries(led)
    if entries:
        if "epsilon_after" in entries[-1]:
            return _as_float(entries[-1]["epsilon_after"])  # composed by the ledger's accountant
        return sum(_as_float(e.get("epsilon", 0.0)) for e in entries)  # basic composition
    return _as_float(led)


def _verdict_dict(verdict: Any) -> dict | None:
    if verdict is None:
        return None
    return verdict.to_dict() if hasattr(verdict, "to_dict") else dict(verdict)


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null / "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def report_dict(evaluation: Evaluation, *, ledger: Mapping[str, Any] | None = None, verdict: Any = None) -> dict:
    return _clean({
        "format": REPORT_FORMAT,
        "evaluation": evaluation.to_dict(),
        "ledger": {"epsilon": ledger_epsilons(ledger), "sites": dict(ledger or {})},
        "verdict": _verdict_dict(verdict),
    })


def write_json(evaluation: Evaluation, path: str | os.PathLike, *, ledger: Mapping[str, Any] | None = None,
               verdict: Any = None) -> Path:
    """Every figure (combined and per site), the ledger totals and the verdict, as JSON."""
    text = json.dumps(report_dict(evaluation, ledger=ledger, verdict=verdict), indent=2, default=str)
    return atomic_write_text(path, text + "\n")


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}" if isinstance(v, float) else escape(str(v))


def _verdict_html(verdict: Any) -> str:
    v = _verdict_dict(verdict)
    if v is None:
        return '<p class="muted">No release decision was attached to this report.</p>'
    cls, word = ("released", "RELEASED") if v["released"] else ("refused", "REFUSED")
    failed = [c["name"] for c in v["checks"] if not c["passed"]]
    head = f'<div class="banner {cls}">Release gate: {word}'
    head += f" — failed: {escape(', '.join(failed))}</div>" if failed else "</div>"
    rows = "".join(
        f'<tr><td>{escape(c["name"])}</td><td class="n">{_num(c["value"])}</td><td>{escape(c["threshold"])}</td>'
        f'<td class="{"pass" if c["passed"] else "fail"}">{"pass" if c["passed"] else "FAIL"}</td>'
        f'<td>{escape(c["message"])}</td></tr>' for c in v["checks"])
    return (head + f"<table><tr><th>check</th><th>value</th><th>threshold</th><th>result</th><th>detail</th></tr>{rows}"
            "</table>" + _tests_html(v.get("tests")))


def _tests_html(tests: Mapping[str, Any] | None) -> str:
    """Every tested privacy figure at every site (value, p-value, the Holm level it was read at, band,
    outcome) and each site's power, as the gate decided them."""
    if not tests or not tests.get("tests"):
        return ""
    sites = list(dict.fromkeys(t["site"] for t in tests["tests"]))
    checks = list(dict.fromkeys(t["check"] for t in tests["tests"]))
    cell = {(t["check"], t["site"]): t for t in tests["tests"]}

    def show(t):
        word = "REFUSED" if t["refused"] else "significant, within band" if t["significant"] else "pass"
        return (f"<td class='n {'fail' if t['refused'] else ''}'>{_num(t['value'])} (p {_p(t['p_value'])} vs "
                f"{_p(t['holm_level'])}; band {t['band']:g}): {word}</td>")

    rows = "".join(f"<tr><td>{escape(c)}</td>" + "".join(show(cell[(c, s)]) for s in sites) + "</tr>" for c in checks)
    power = tests.get("power") or {}

    def caught(x):
        if x is None:
            return "<td class='n'>–</td>"
        share = "–" if x["share"] is None else f"{x['share']:g}"
        at = f" ({x['power']:g})" if x.get("power") else ""
        return (f"<td class='n {'' if x['powered'] else 'fail'}'>{share}{at}"
                f"{'' if x['powered'] else ' UNDERPOWERED'}</td>")

    if power:
        rows += "<tr><td>memorised share caught (power)</td>" + "".join(caught(power.get(s)) for s in sites) + "</tr>"
    return (f"<p class='muted'>Privacy figures tested with Holm's step-down procedure over {tests['n_tests']} "
            f"tests (every site x tested figure) at family-wise level {tests['family_alpha']:g}: a figure is refused "
            "where it is over its band and significant. Each p-value is one-sided under a null fixed by the site's sizes "
            "(training, holdout and synthetic rows), never raised by the data. The power row: the smallest share of "
            "training rows planted as near copies that the near-copy check refuses with the power shown.</p>"
            "<table><tr><th>figure</th>" + "".join(f"<th>{escape(s)}</th>" for s in sites) + f"</tr>{rows}</table>")


def _p(v: Any) -> str:
    return "–" if v is None else f"{v:.2g}"


def _figures_html(ev: Evaluation) -> str:
    sites = list(ev.sites)
    per = ev.site_figures()
    head = "<tr><th>figure</th><th>all sites</th>" + "".join(f"<th>{escape(s)}</th>" for s in sites) + "</tr>"
    rows = "".join(
        f"<tr><td>{escape(f)}</td><td class='n'>{_num(v)}</td>"
        + "".join(f"<td class='n'>{_num(per[s].get(f))}</td>" for s in sites) + "</tr>"
        for f, v in ev.figures.items())
    counts = "<tr><td>rows (train / holdout / synthetic)</td><td class='n'>weights: " + escape(
        ", ".join(f"{k}={w}" for k, w in ev.weights.items())) + "</td>" + "".join(
        f"<td class='n'>{s.n_train} / {s.n_holdout} / {s.n_synthetic}</td>" for s in ev.sites.values()) + "</tr>"
    scored = ""
    if any(s.synthetic_rows for s in ev.sites.values()):  # a site column: each site scored its own rows
        scored = "<tr><td>synthetic rows scored</td><td class='n'>each site its own</td>" + "".join(
            f"<td class='n'>{escape(s.synthetic_rows or 'all')}</td>" for s in ev.sites.values()) + "</tr>"
    return f"<table>{head}{counts}{scored}{rows}</table>"


def _utility_html(ev: Evaluation) -> str:
    sites = [s for s, r in ev.sites.items() if r.utility is not None]
    if not sites:
        return '<p class="muted">No target column was declared: utility was not measured.</p>'
    u0 = ev.sites[sites[0]].utility
    labels = sites + ["all sites"]
    real = [ev.sites[s].utility.real_score for s in sites] + [ev.figures.get("utility.real_score")]
    syn = [ev.sites[s].utility.synthetic_score for s in sites] + [ev.figures.get("utility.synthetic_score")]
    chart = bars(labels, [("train real (TRTR)", real, REAL), ("train synthetic (TSTR)", syn, SYNTH)],
                 title=f"Utility: {u0.metric} on real holdout, target '{u0.target}'", width=max(360, 110 * len(labels)),
                 height=230, y_max=1.0, show_values=True, rotate_labels=False)
    return f'<div class="charts">{chart}</div>'


def _ledger_html(ledger: Mapping[str, Any] | None, verdict: Any) -> str:
    if not ledger:
        return '<p class="muted">No privacy ledger was attached to this report.</p>'
    eps = ledger_epsilons(ledger)
    limit = None
    v = _verdict_dict(verdict)
    for c in (v or {}).get("checks", []):
        if c["name"] == "epsilon_per_site":
            limit = _as_float(c["threshold"].split()[-1])
    finite = {s: e for s, e in eps.items() if math.isfinite(e)}
    chart = bars(list(eps), [("epsilon spent", [finite.get(s) for s in eps], PALETTE[2])],
                 title="Privacy budget spent per site (epsilon)", width=max(320, 100 * len(eps)), height=220,
                 rule=(limit, f"policy max {limit:g}") if limit and math.isfinite(limit) else None,
                 show_values=True, rotate_labels=False)
    parts = [f'<div class="charts">{chart}</div>']
    for site, led in ledger.items():
        entries = _entries(led)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_num(e.get(k))}</td>" for k in ("phase", "mechanism", "target"))
            + f"<td class='n'>{_num(_as_float(e.get('epsilon_after', e.get('epsilon'))))}</td></tr>" for e in entries)
        parts.append(f"<h3>{escape(site)}: epsilon {_num(eps[site])}</h3>")
        if rows:
            parts.append("<table><tr><th>phase</th><th>mechanism</th><th>what</th><th>epsilon after</th></tr>"
                         f"{rows}</table>")
    return "".join(parts)


def _site_html(name: str, s) -> str:
    d = s.disclosure
    h = d.dcr_histogram
    labels = [f"{a:.2g}" for a in h.edges[:-1]]
    colours = (REAL, SYNTH)
    dcr = bars(labels, [(lab, list(c), colours[i % 2]) for i, (lab, c) in enumerate(h.series)],
               title=f"Distance to closest record (DCR share {d.dcr_share:.2f})", width=420, height=220)
    assoc = s.fidelity.associations
    names = [m.column for m in s.marginals if any(m.column in (p.column_1, p.column_2) for p in assoc)]
    diffs = {(p.column_1, p.column_2): abs(p.real - p.synthetic) for p in assoc}
    heat = heatmap(names, diffs, title="Association difference |V real − V synthetic| (Cramér's V)", vmax=0.5) if names else ""
    marg = "".join(
        bars(list(m.labels), [("real", list(m.real), REAL), ("synthetic", list(m.synthetic), SYNTH)],
             title=f"{m.column} (missing {m.real_missing:.0%} / {m.synthetic_missing:.0%})", width=300, height=190)
        for m in s.marginals)
    notes = "".join(f"<li>{escape(n)}</li>" for n in d.notes)
    said = []
    names = {"dcr_share": "DCR share", "mia_auc": "membership-inference AUC", "singling_out_risk": "singling-out risk",
             "linkability_risk": "linkability risk", "inference_risk": "inference risk"}
    levels = [(names[name], value, c) for name, value, c in d.gated() if value is not None and c is not None]
    if levels:
        said.append(f"Scored against {levels[0][2].resplits} random re-splits of this site's rows ({s.n_holdout} "
                    "holdout rows; the same synthetic rows, a split they know nothing of), the figures read: "
                    + "; ".join(f"{what} {value:.3f} against {c.mean:.3f} &plusmn; {c.sd:.3f} "
                                f"({'%+.1f sd, ' % ((value - c.mean) / c.sd) if c.sd > 0 else ''}"
                                f"chance level {c.level:.3f})" for what, value, c in levels)
                    + ". The chance level is what 1 re-split in 100 reaches: a diagnostic, no threshold reads it "
                    "(it rises with memorisation).")
    elif d.mia_auc_null_sd:
        said.append(f"The membership-inference AUC, {d.mia_auc:.3f}, would read 0.5 &plusmn; {d.mia_auc_null_sd:.3f} "
                    f"were membership random ({(d.mia_auc - 0.5) / d.mia_auc_null_sd:+.1f} sd).")
    near = d.near_copies
    if near is not None:
        said.insert(0, f"Near copies: {near.hits} of {near.n_synthetic} synthetic rows (distinct) lie closer to a "
                       "training row than this site's training rows come to one another (t = "
                       f"{near.threshold:.3g}, of rank {near.rank} among {near.n_reference} leave-one-out distances): "
                       f"rate {near.rate:.3f} against {near.expected:.3f} for fresh rows (holdout rows here: "
                       f"{near.holdout_rate:.3f}), excess {near.excess:+.3f}, p = {near.p_value:.2g}.")
    spread = f"<p class='muted'>{' '.join(said)}</p>" if said else ""
    return (f'<h2>Site {escape(name)}</h2><div class="charts">{dcr}{heat}</div>{spread}'
            f"<h3>Per-column distributions, real vs synthetic (frequencies)</h3><div class='charts'>{marg}</div>"
            + (f"<ul class='muted'>{notes}</ul>" if notes else ""))


def write_report(
    evaluation: Evaluation,
    path_html: str | os.PathLike,
    *,
    ledger: Mapping[str, Any] | None = None,
    verdict: Any = None,
    title: str = "fedtab synthetic data evaluation",
) -> Path:
    """Write one self-contained HTML report (verdict, figures, utility, ledger, per-site plots)."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{escape(title)}</h1><p class='muted'>Generated {when}. Sites: "
        f"{escape(', '.join(evaluation.sites))}. Every figure was computed inside its site; only aggregates "
        "(scores, rates, binned frequencies with small cells suppressed) left it.</p>",
        "<h2>Release decision</h2>", _verdict_html(verdict),
        "<h2>Figures</h2>", _figures_html(evaluation),
        "<h2>Utility</h2>", _utility_html(evaluation),
        "<h2>Privacy ledger</h2>", _ledger_html(ledger, verdict),
    ]
    body += [_site_html(name, s) for name, s in evaluation.sites.items()]
    html = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    return atomic_write_text(path_html, html)

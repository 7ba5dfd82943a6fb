"""The public consortium report: what may be published after an evaluation (HTML + JSON).

It holds the release gate's decision, each site's verdict on each check (a bit each), the sampling
settings and the hash of the table the sites drew, the synthetic table's own statistics (computed
from synthetic rows only) and the sites' privacy ledgers in their public form. It holds no figure
computed from a site's rows: those are in each site's own report, written at the site
(``fedtab.federation.site_evaluation``). ``tests/test_leak_scan.py`` scans it for a planted canary.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fedtab.schema import TableSchema, atomic_write_text

PUBLIC_FORMAT = "fedtab.public-report/1"
TOP_LEVELS = 8

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;border-bottom:2px solid #eee;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums} .pass{color:#137333;font-weight:600}
.fail{color:#b3261e;font-weight:600} .banner{padding:12px 16px;border-radius:6px;font-size:18px;font-weight:700}
.released{background:#e6f4ea;color:#137333} .refused{background:#fce8e6;color:#b3261e} .muted{color:#666;font-size:12px}
"""

WHAT_LEFT = (
    "Each site drew the table itself from the model it trained (the model file checked against the one it "
    "recorded when training ended), scored it against its own training and holdout rows, and decided every "
    "check of the release policy at home. What left each site: one bit per check (passed or not), one bit "
    "for whether its checks had the policy's power to catch memorisation, and the hash of the synthetic table "
    "it drew. These bits are not differentially private: each evaluation is counted on the site's lasting "
    "ledger before its verdicts leave, capped by the site's max_evaluations, and once a table of a model "
    "failed a privacy check at a site, that site evaluates no other table of the model. The figures behind "
    "each verdict are in the site's own report, at the site.")


def public_ledgers(ledgers: Mapping[str, dict]) -> dict[str, dict]:
    """The ledgers as published: a DP ledger unchanged (its sample rates and steps follow from the site's
    DP row estimate); a non-DP ledger without sample rates and steps (they follow from its exact count)."""
    out = {}
    for site, led in ledgers.items():
        led = json.loads(json.dumps(led, default=str))
        if led.get("epsilon_budget") is None:
            for e in led.get("entries", []):
                e.pop("sample_rate", None)
                e.pop("steps", None)
            led["note"] = "non-DP job: exact statistics left this site during training; sample rates withheld"
        out[site] = led
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def table_statistics(table: pd.DataFrame, schema: TableSchema) -> dict[str, Any]:
    """Statistics of the synthetic table only: rows, and per column its missing share and, for numbers,
    mean, sd and the 5/50/95th percentiles, for categories the shares of the most frequent levels."""
    cols = {}
    for spec in schema.columns:
        if spec.name not in table.columns or spec.type == "id":
            continue
        s = table[spec.name]
        entry: dict[str, Any] = {"type": spec.type, "missing_share": float(s.isna().mean())}
        present = s.dropna()
        if spec.type == "numerical":
            x = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype=float)
            if x.size:
                p5, p50, p95 = np.percentile(x, [5, 50, 95])
                entry.update(mean=float(x.mean()), sd=float(x.std()), p5=float(p5), p50=float(p50), p95=float(p95))
        elif spec.type != "datetime":
            shares = present.astype(str).value_counts(normalize=True).head(TOP_LEVELS)
            entry["top_levels"] = {str(k): float(v) for k, v in shares.items()}
        cols[spec.name] = entry
    return {"rows": int(len(table)), "columns": cols}


def public_document(ev, *, verdict, ledger: Mapping[str, dict], table: pd.DataFrame, schema: TableSchema) -> dict:
    return {
        "format": PUBLIC_FORMAT,
        "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "released": bool(verdict.released),
        "checks": [{"name": c.name, "rule": c.threshold, "passed": bool(c.passed), "message": c.message}
                   for c in verdict.checks],
        "evaluation": ev.to_dict(),
        "what_left_each_site": WHAT_LEFT,
        "synthetic_table": table_statistics(table, schema),
        "ledgers": dict(ledger),
    }


def write_public_json(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """The public document (``public_document``) as JSON."""
    return atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def _fmt(v: Any) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{f:.4g}"


def write_public_report(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """The public document (``public_document``) as one self-contained HTML page."""
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>fedtab public consortium report</title>",
         f"<style>{_CSS}</style></head><body><h1>fedtab public consortium report</h1>",
         f"<p class='muted'>{escape(doc['time_utc'])} &middot; safe to publish: no figure computed from a "
         "site's rows; each site's figures are in its own report, at the site.</p>"]
    cls, word = ("released", "RELEASED") if doc["released"] else ("refused", "REFUSED")
    h.append(f"<div class='banner {cls}'>Release gate: {word}</div>")
    h.append("<h2>Release gate</h2><table><tr><th>check</th><th>rule</th><th>outcome</th><th>why</th></tr>")
    for c in doc["checks"]:
        ok = "<span class='pass'>pass</span>" if c["passed"] else "<span class='fail'>FAIL</span>"
        h.append(f"<tr><td>{escape(c['name'])}</td><td>{escape(c['rule'])}</td><td>{ok}</td>"
                 f"<td>{escape(c['message'])}</td></tr>")
    h.append("</table>")
    sites = doc["evaluation"]["sites"]
    names: list[str] = []
    for v in sites.values():
        names += [n for n in v["checks"] if n not in names]
    h.append("<h2>Each site's verdicts</h2><table><tr><th>site</th><th>evaluation</th><th>checks powered</th>"
             + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>")
    for s, v in sites.items():
        cells = "".join("<td class='pass'>pass</td>" if v["checks"].get(n) else "<td class='fail'>FAIL</td>"
                        for n in names)
        h.append(f"<tr><td>{escape(s)}</td><td>{v['evaluation']} of {v['max_evaluations']}</td>"
                 f"<td>{'yes' if v['powered'] else 'NO (policy rule applied)'}</td>{cells}</tr>")
    h.append(f"</table><p>{escape(WHAT_LEFT)}</p>")
    smp = doc["evaluation"]["sampling"]
    h.append("<h2>The synthetic table</h2>"
             f"<p>{doc['synthetic_table']['rows']} rows drawn with seed {smp['seed']}"
             f"{', numerical columns quantile-mapped' if smp['quantile_map'] else ''}; its own statistics "
             "(synthetic rows only):</p><table><tr><th>column</th><th>type</th><th>missing</th><th>mean</th>"
             "<th>sd</th><th>p5</th><th>p50</th><th>p95</th><th>most frequent levels</th></tr>")
    for c, e in doc["synthetic_table"]["columns"].items():
        levels = ", ".join(f"{escape(k)} {v:.1%}" for k, v in (e.get("top_levels") or {}).items())
        h.append(f"<tr><td>{escape(c)}</td><td>{escape(e['type'])}</td><td class='n'>{e['missing_share']:.1%}</td>"
                 + "".join(f"<td class='n'>{_fmt(e.get(k))}</td>" for k in ("mean", "sd", "p5", "p50", "p95"))
                 + f"<td>{levels}</td></tr>")
    h.append("</table><h2>Privacy ledgers</h2><table><tr><th>site</th><th>epsilon spent</th><th>budget</th>"
             "<th>delta</th><th>releases</th></tr>")
    for s, led in doc["ledgers"].items():
        h.append(f"<tr><td>{escape(s)}</td><td class='n'>{_fmt(led.get('epsilon'))}</td>"
                 f"<td class='n'>{_fmt(led.get('epsilon_budget'))}</td><td class='n'>{_fmt(led.get('delta'))}</td>"
                 f"<td class='n'>{len(led.get('entries', []))}</td></tr>")
    h.append("</table><p class='muted'>Every release of each site is listed in the JSON report and the audit "
             "record.</p></body></html>")
    return atomic_write_text(path, "\n".join(h) + "\n")

"""The HTML + JSON report: self-contained, holds every plot, and renders in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from evaluation import combine
from evaluation.report import ledger_epsilons, write_json, write_report
from fedtab.release import ReleasePolicy, decide
from tests.test_evaluation_data import copying_evaluation, independent_evaluation

LEDGER = {
    # The PrivacyLedger.to_dict() form, a bare list of entries, and a plain number are all accepted.
    "hospital_a": {"format": "fedtab.ledger/1", "site": "hospital_a", "epsilon": 2.5, "entries": [
        {"phase": "schema", "mechanism": "gaussian", "target": "category counts", "epsilon_after": 0.4},
        {"phase": "training", "mechanism": "subsampled_gaussian", "target": "dp-sgd", "epsilon_after": 2.5},
    ]},
    "hospital_b": [{"phase": "training", "epsilon": 1.0}, {"phase": "evaluation", "epsilon": 0.5}],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    ev = combine({"hospital_a": independent_evaluation(), "hospital_b": copying_evaluation()},
                 {"hospital_a": 460, "hospital_b": 460})
    verdict = decide(ReleasePolicy(), ev, ledger_epsilons(LEDGER))
    out = tmp_path_factory.mktemp("report")
    html = write_report(ev, out / "report.html", ledger=LEDGER, verdict=verdict, title="Heart disease, 2 sites")
    js = write_json(ev, out / "report.json", ledger=LEDGER, verdict=verdict)
    return ev, verdict, html, js


def test_ledger_forms_give_total_epsilon():
    assert ledger_epsilons(LEDGER) == {"hospital_a": 2.5, "hospital_b": 1.5}
    assert ledger_epsilons({"x": 3, "y": "inf"}) == {"x": 3.0, "y": float("inf")}


def test_html_is_self_contained_and_holds_every_plot(written):
    ev, verdict, html_path, _ = written
    html = html_path.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    # No network: the only URL is the SVG namespace identifier.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "Release gate: REFUSED" in html and "exact_copies" in html
    for title in ("Distance to closest record", "Association difference", "Utility: roc_auc",
                  "Privacy budget spent per site", "policy max 10"):
        assert title in html, title
    # One DCR histogram + heatmap per site, one distribution chart per column per site, utility, ledger.
    n_cols = len(ev.sites["hospital_a"].marginals)
    assert html.count("<svg") == 2 * (2 + n_cols) + 2
    for m in ev.sites["hospital_a"].marginals:
        assert f"<title>{m.column} (missing" in html
    # Each site's privacy figures beside their spread over random re-splits of its rows, and chance levels.
    d = ev.sites["hospital_a"].disclosure
    for what, value, c in (("DCR share", d.dcr_share, d.dcr_share_chance),
                           ("membership-inference AUC", d.mia_auc, d.mia_auc_chance),
                           ("inference risk", d.inference.value, d.inference_chance)):
        assert f"{what} {value:.3f} against {c.mean:.3f} &plusmn; {c.sd:.3f}" in html, what
        assert f"chance level {c.level:.3f})" in html, what
    assert not list(html_path.parent.glob(".*.tmp"))


def test_report_states_each_tested_figure_the_family_wise_method_the_near_copies_and_the_power(written):
    ev, verdict, html_path, json_path = written
    html = html_path.read_text(encoding="utf-8")
    assert "Holm's step-down procedure over 12 tests (every site x tested figure) at family-wise level 0.1" in html
    assert "memorised share caught (power)" in html and "REFUSED" in html
    near = ev.sites["hospital_b"].disclosure.near_copies
    assert (f"Near copies: {near.hits} of {near.n_synthetic} synthetic rows (distinct)" in html
            and f"excess {near.excess:+.3f}" in html)
    tests = json.loads(json_path.read_text())["verdict"]["tests"]
    assert tests["method"] == "holm" and len(tests["tests"]) == 12
    refused = {(t["check"], t["site"]) for t in tests["tests"] if t["refused"]}
    assert ("near_copies", "hospital_b") in refused and not any(s == "hospital_a" for _, s in refused)
    assert set(tests["power"]) == {"hospital_a", "hospital_b"}


def test_json_holds_every_figure(written):
    ev, verdict, _, json_path = written
    data = json.loads(json_path.read_text())
    assert data["format"] == "fedtab.evaluation/1"
    assert data["evaluation"]["figures"] == pytest.approx(dict(ev.figures))
    site = data["evaluation"]["sites"]["hospital_b"]
    assert site["figures"]["disclosure.exact_copy_rate"] == 1.0
    assert site["disclosure"]["dcr_histogram"]["edges"][0] == 0.0
    assert data["verdict"]["released"] is False and data["ledger"]["epsilon"]["hospital_b"] == 1.5


def _png_colours(path) -> int:
    """Distinct colours in a PNG (8-bit RGB/RGBA, non-interlaced: what Chromium writes), sampled rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, ctype = struct.unpack(">IIBB", header[:10])
    bpp = {2: 3, 6: 4}[ctype]
    raw, stride, prev, colours = zlib.decompress(idat), width * bpp, bytearray(width * bpp), set()
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 7 == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 3))
        prev = line
    return len(colours)


def test_report_renders_in_headless_chromium(written, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI: apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    _, _, html_path, _ = written
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", html_path.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert shot.exists() and shot.stat().st_size > 20_000
    # Not blank: text, bars of both colours, the verdict banner and the heatmap give many colours.
    assert _png_colours(shot) > 50
    keep = os.environ.get("FEDTAB_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)

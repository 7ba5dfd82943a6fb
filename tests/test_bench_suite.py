"""The anchors' benchmark suite in its smoke mode (what CI runs): every method in a subprocess, scored here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_suite_quick_scores_fedtab_and_records_missing_anchors_as_skipped(tmp_path):
    # No anchor environments here (as in CI): the synthcity and smartnoise anchors must be recorded as
    # skipped, not crash the run; fedtab and SDV's GaussianCopula (main environment) must be scored.
    env = {**os.environ, "FEDTAB_ANCHOR_VENVS": str(tmp_path / "no-venvs")}
    out = subprocess.run([sys.executable, "benchmarks/suite.py", "--dataset", "heart", "--quick", "--out",
                          str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "suite_heart_quick.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}

    fedtab = [r for r in rows.values() if r["family"] == "fedtab"]
    assert {(r["sites"], r["epsilon"]) for r in fedtab} == {(4, None), (1, None), (4, 1.0), (1, 1.0)}
    for r in fedtab + [rows["sdv-gaussiancopula"]]:
        assert r["status"] == "ok", r
        for k in ("quality", "column_shapes", "column_pair_trends", "tstr_auc", "trtr_auc", "detection_auc",
                  "dcr_share", "mia_auc"):
            assert math.isfinite(r[k]) and 0.0 <= r[k] <= 1.0, (r["key"], k, r[k])
        assert r["fit_seconds"] > 0 and r["peak_rss_mib"] > 0 and r["sample_rows_per_s"] > 0
    for r in fedtab:
        assert r["federation_overhead_seconds"] is not None
        if r["epsilon"] is not None:  # each site's ledger, preprocessing included, stays within the target
            assert 0.0 < r["epsilon_spent"] <= r["epsilon"] + 1e-6
    for key in ("synthcity-ddpm", "smartnoise-mst-eps1"):
        assert rows[key]["status"].startswith("skipped: no environment"), rows[key]

    md = (tmp_path / "suite_heart_quick.md").read_text()
    assert "python benchmarks/suite.py --dataset heart --quick" in md and "SMOKE RUN" in md
    assert md.count("| fedtab ctgan |") == 4

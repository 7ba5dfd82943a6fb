"""Consortium fidelity: the synthetic table scored against the union of the sites from summed counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation import combine
from evaluation._tables import kinds_of, to_plain
from evaluation.consortium import consortium_counts, consortium_quality
from evaluation.fidelity import quality_report
from evaluation.site import evaluate_site
from fedtab.datasets import heart_schema, load_heart_sites
from fedtab.release import ReleasePolicy, decide


@pytest.fixture(scope="module")
def heart():
    schema = heart_schema()
    sites = {k: to_plain(v, schema) for k, v in load_heart_sites().items()}
    pooled = pd.concat(sites.values(), ignore_index=True)
    # A stand-in for a perfect model of the union: resampled rows of all four hospitals.
    synthetic = pooled.sample(len(pooled), replace=True, random_state=3).reset_index(drop=True)
    return sites, pooled, synthetic, kinds_of(schema)


def test_summed_site_counts_give_the_same_score_as_the_pooled_rows(heart):
    sites, pooled, synthetic, kinds = heart
    split = consortium_quality([consortium_counts(s, synthetic, kinds) for s in sites.values()], synthetic, kinds)
    one = consortium_quality([consortium_counts(pooled, synthetic, kinds)], synthetic, kinds)
    assert split.quality == pytest.approx(one.quality, abs=1e-12)
    assert split.n_sites == 4 and split.n_rows == len(pooled)


def test_column_shapes_follow_sdmetrics_and_the_union_is_not_marked_down_for_site_differences(heart):
    sites, pooled, synthetic, kinds = heart
    per_site = []
    for rows in sites.values():
        ours = consortium_quality([consortium_counts(rows, synthetic, kinds)], synthetic, kinds)
        sdm_overall, sdm_shapes = quality_report(rows, synthetic, kinds)[:2]
        assert ours.column_shapes == pytest.approx(sdm_shapes, abs=0.01)
        per_site.append(sdm_overall)
    union = consortium_quality([consortium_counts(s, synthetic, kinds) for s in sites.values()], synthetic, kinds)
    assert union.column_shapes == pytest.approx(quality_report(pooled, synthetic, kinds)[1], abs=0.01)
    # Resampled real rows of the union: high against the union, not against each hospital.
    assert union.quality > 0.9 and max(per_site) < 0.8


def test_independent_columns_lose_on_pair_trends_not_on_shapes(heart):
    sites, pooled, synthetic, kinds = heart
    rng = np.random.default_rng(0)
    shuffled = pd.DataFrame({c: pooled[c].to_numpy()[rng.permutation(len(pooled))] for c in pooled.columns})
    union = consortium_quality([consortium_counts(s, shuffled, kinds) for s in sites.values()], shuffled, kinds)
    resampled = consortium_quality([consortium_counts(s, synthetic, kinds) for s in sites.values()], synthetic, kinds)
    assert union.column_shapes == pytest.approx(1.0, abs=1e-9)
    assert union.column_pair_trends < resampled.column_pair_trends - 0.03


def test_the_gate_reads_the_union_and_the_report_json_carries_no_counts(heart):
    sites, pooled, synthetic, kinds = heart
    schema = heart_schema()
    results = {}
    for name in ("cleveland", "hungary"):
        rows = sites[name]
        half = len(rows) // 2
        results[name] = evaluate_site(rows.iloc[:half], rows.iloc[half:], synthetic, schema, seed=0)
    ev = combine(results, {k: r.n_train for k, r in results.items()}, synthetic=synthetic, kinds=kinds)
    assert ev.consortium is not None and ev.figures["fidelity.consortium_quality"] == ev.consortium.quality
    check = next(c for c in decide(ReleasePolicy(), ev, {"cleveland": 1.0, "hungary": 1.0}).checks if c.name == "quality")
    assert check.value == pytest.approx(ev.consortium.quality) and "union" in check.message
    text = json.dumps(ev.to_dict())
    assert "consortium_quality" in text and '"pairs"' not in text and '"moments"' not in text
    # Without the synthetic table (or counts), the gate falls back to the per-site mean.
    plain = combine(results, {k: r.n_train for k, r in results.items()})
    check = next(c for c in decide(ReleasePolicy(), plain, {}).checks if c.name == "quality")
    assert check.value == pytest.approx(plain.figures["fidelity.quality"])

"""Evaluation figures on real data (UCI heart disease): what they say about sound and copying synthesizers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from evaluation import combine, evaluate_site
from evaluation._tables import kinds_of, to_plain
from evaluation.utility import evaluate_utility
from fedtab.errors import ConfigError, DataValidationError
from tests.test_evaluation_data import (
    HEART_SCHEMA, copying_evaluation, heart_splits, heart_table, independent_evaluation,
)


def test_independent_sample_scores_as_indistinguishable_and_private():
    f = independent_evaluation().figures()
    assert f["fidelity.quality"] > 0.8
    assert f["fidelity.detection_auc"] < 0.65
    assert 0.4 <= f["disclosure.dcr_share"] <= 0.6
    assert f["disclosure.exact_copy_rate"] == 0.0
    assert f["disclosure.mia_auc"] < 0.6
    assert f["disclosure.nndr_median"] > 0.5
    for risk in ("singling_out", "linkability", "inference"):
        assert f[f"disclosure.{risk}_risk"] < 0.15, risk
    # Real rows from the same population are as useful as the training rows.
    assert f["utility.synthetic_score"] > 0.8 and f["utility.ratio"] > 0.8


def test_inference_risk_attacks_every_row_and_reads_the_counts_as_n_attacks():
    """Every training row (460) and holdout row (230) is attacked; each side's successes are read as
    the expected count of 200 attacks on a random draw of its rows (a draw of the attacked training
    rows decided the risk at small sites). So any evaluation seed gives the same risk, and the interval
    is anonymeter's for 200 attacks per side."""
    from evaluation.disclosure import evaluate_disclosure

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    runs = [evaluate_disclosure(train, holdout, other, kinds_of(HEART_SCHEMA), target="disease", seed=s).inference
            for s in (0, 1)]
    assert (runs[0].value, runs[0].attack_rate, runs[0].control_rate) == \
        (runs[1].value, runs[1].attack_rate, runs[1].control_rate)
    inf = runs[0]
    assert inf.n_attacks == 200 and 0.0 <= inf.ci_low <= inf.value <= inf.ci_high
    # The attack rate is anonymeter's (Wilson) centre at 200 attacks of a success share of the 460 rows.
    share = (inf.attack_rate * (200 + 1.959964 ** 2) - 0.5 * 1.959964 ** 2) / 200
    assert share * 460 == pytest.approx(round(share * 460), abs=1e-6)


def test_dcr_share_is_the_exact_mean_over_every_equal_size_training_sample():
    """The hypergeometric figure equals the brute-force mean over all C(6, 3) training samples, ties
    counting one half (one query has a tie, one has no training row closer, one has every one closer)."""
    from itertools import combinations

    from evaluation.disclosure import _share_against_subsets, _scan_training

    rng = np.random.default_rng(0)
    train = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    queries = np.array([[2.2], [9.0], [0.5]])
    d_hold = np.array([0.2, 3.0, 5.0])  # query 0 ties with training row 2.0 (distance 0.2)
    scan = _scan_training(train, queries, d_hold, 3, rng)
    assert scan.closer.tolist() == [0, 0, 6] and scan.tied.tolist() == [1, 0, 0]
    exact = _share_against_subsets(scan.closer, scan.tied, len(train), 3)
    for q in range(len(queries)):
        outcomes = []
        for sample in combinations(range(len(train)), 3):
            d = np.abs(train[list(sample), 0] - queries[q, 0]).min()
            outcomes.append(1.0 if d < d_hold[q] - 1e-9 else 0.5 if abs(d - d_hold[q]) <= 1e-9 else 0.0)
        assert exact[q] == pytest.approx(np.mean(outcomes), abs=1e-12), q
    assert scan.first.tolist() == pytest.approx([0.2, 4.0, 0.5]) and scan.second.tolist() == pytest.approx([0.8, 5.0, 0.5])


def test_dcr_share_and_mia_do_not_depend_on_which_training_rows_are_drawn():
    """At a small site every training row is scored: the DCR share and the MIA AUC are the same for any
    evaluation seed (only the synthetic rows and the holdout decide them)."""
    from evaluation.disclosure import DisclosureOptions, evaluate_disclosure

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    train, holdout = train.iloc[:120], holdout.iloc[:30]
    runs = [evaluate_disclosure(train, holdout, other.iloc[:100], kinds_of(HEART_SCHEMA), seed=s,
                                options=DisclosureOptions(anonymeter=False)) for s in (0, 1, 2)]
    assert {r.dcr_share for r in runs} == {runs[0].dcr_share}
    assert {r.mia_auc for r in runs} == {runs[0].mia_auc}
    assert (runs[0].n_mia_members, runs[0].n_mia_non_members) == (120, 30)


def test_chance_levels_give_the_spread_a_table_leaning_nowhere_would_show():
    """The site's rows re-split at random (same sizes): an independent sample's figures sit inside that
    spread, copies of training rows far above it; a site above ``resplit_max_rows`` skips it."""
    from evaluation.disclosure import DisclosureOptions, evaluate_disclosure

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    kinds, opts = kinds_of(HEART_SCHEMA), DisclosureOptions(resplits=100)
    sound = evaluate_disclosure(train, holdout, other, kinds, target="disease", seed=0, options=opts)
    c = sound.dcr_share_chance
    assert c.resplits == 100 and 0.45 < c.mean < 0.55 and 0.005 < c.sd < 0.1 and c.level > c.mean + c.sd
    assert abs(sound.dcr_share - c.mean) < 3 * c.sd
    for figure, level in (("mia_auc", sound.mia_auc_chance), ("inference", sound.inference_chance),
                          ("singling_out", sound.singling_out_chance), ("linkability", sound.linkability_chance)):
        value = getattr(sound, figure) if figure == "mia_auc" else getattr(sound, figure).value
        assert level is not None and value <= level.level + 0.02, figure
    copies = train.sample(len(other), replace=True, random_state=0).reset_index(drop=True)
    leak = evaluate_disclosure(train, holdout, copies, kinds, target="disease", seed=0, options=opts)
    assert leak.dcr_share > leak.dcr_share_chance.mean + 5 * leak.dcr_share_chance.sd
    assert leak.dcr_share > leak.dcr_share_chance.level and leak.mia_auc > leak.mia_auc_chance.level
    assert leak.inference.value > leak.inference_chance.level
    big = evaluate_disclosure(train, holdout, other, kinds, seed=0,
                              options=replace(opts, anonymeter=False, resplit_max_rows=500))
    assert (big.dcr_share_chance, big.mia_auc_chance, big.inference_chance) == (None, None, None)
    assert big.dcr_share == sound.dcr_share  # the re-splits draw from their own generator


def test_chance_figures_at_the_real_split_are_the_reported_ones():
    """Each re-split only relabels the rows: at the real split (training rows first) the re-split
    figures are the reported DCR share, MIA AUC and inference risk."""
    from evaluation import chance
    from evaluation._tables import DistanceSpace, fill_categories
    from evaluation.disclosure import DisclosureOptions, _share_against_subsets, evaluate_disclosure
    from sklearn.metrics.pairwise import euclidean_distances

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    kinds = kinds_of(HEART_SCHEMA)
    r = evaluate_disclosure(train, holdout, other, kinds, target="disease", seed=0, options=DisclosureOptions(resplits=0))
    rows = pd.concat([train, holdout], ignore_index=True)
    real = np.zeros((1, len(rows)), dtype=bool)
    real[0, :len(train)] = True
    space = DistanceSpace(kinds).fit(rows)
    d = euclidean_distances(space.transform(other), space.transform(rows))
    assert chance.dcr_shares(d, real, _share_against_subsets)[0] == pytest.approx(r.dcr_share, abs=1e-12)
    assert chance.mia_aucs(d.min(axis=0), real)[0] == pytest.approx(r.mia_auc, abs=1e-12)
    cols = kinds.columns
    syn = fill_categories(other, kinds)[cols]
    success = np.concatenate([chance.inference_success(fill_categories(side, kinds)[cols], syn, secret="disease",
                                                       aux=[c for c in cols if c != "disease"], regression=False)
                              for side in (train, holdout)])  # each side in one batch, as the attack reads it
    assert chance.residual_risks(success, real, 200)[0] == pytest.approx(r.inference.value, abs=1e-12)
    # Re-splits keep the sizes.
    member = chance.resplits(len(train), len(holdout), 50, np.random.default_rng(0))
    assert set(member.sum(axis=1)) == {len(train)}


def test_singling_out_and_linkability_per_row_outcomes_match_anonymeter():
    import polars as pl
    from anonymeter.evaluators import LinkabilityEvaluator
    from anonymeter.evaluators import singling_out_evaluator as so

    from evaluation import chance
    from evaluation._tables import fill_categories

    train, _, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    kinds = kinds_of(HEART_SCHEMA)
    cols = kinds.columns
    rows, syn = fill_categories(train.iloc[:120], kinds)[cols], fill_categories(other, kinds)[cols]
    matches = chance.query_matches(rows, syn, n_attacks=40, n_cols=3, max_attempts=8000, seed=5)
    queries = so._generate_singling_out_queries(
        df=pl.DataFrame(so._safe_column_names(syn)).unique(maintain_order=True), n_attacks=40, n_cols=3,
        mode="multivariate", max_attempts=8000, rng=np.random.default_rng(5))
    counts = so._evaluate_queries(pl.DataFrame(so._safe_column_names(rows)), queries)
    assert matches.shape == (120, len(queries)) and list(matches.sum(axis=0)) == list(counts)
    aux = (cols[: len(cols) // 2], cols[len(cols) // 2:])
    linked = chance.link_success(rows, syn, aux)
    ev = LinkabilityEvaluator(rows, syn, aux_cols=aux, n_attacks=len(rows)).evaluate(n_jobs=1)
    assert linked.sum() == ev.results().n_success


def test_mia_null_sd_is_the_spread_of_the_auc_under_random_membership():
    from scipy.stats import rankdata

    from evaluation.disclosure import DisclosureOptions, evaluate_disclosure

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    train, holdout = train.iloc[:98], holdout.iloc[:25]  # Switzerland's sizes in the demo
    r = evaluate_disclosure(train, holdout, other, kinds_of(HEART_SCHEMA), seed=0,
                            options=DisclosureOptions(anonymeter=False, resplits=0))
    # 20,000 AUCs of random scores for 98 members and 25 non-members (Mann-Whitney: rank sums).
    ranks = rankdata(np.random.default_rng(0).normal(size=(20_000, 123)), axis=1)
    aucs = (ranks[:, :98].sum(axis=1) - 98 * 99 / 2) / (98 * 25)
    assert r.mia_auc_null_sd == pytest.approx(np.std(aucs), rel=0.03)
    assert r.mia_auc_null_sd == pytest.approx(0.065, abs=0.001)


def test_copied_training_rows_are_flagged_by_every_disclosure_figure():
    f = copying_evaluation().figures()
    assert f["disclosure.exact_copy_rate"] == 1.0
    assert f["disclosure.natural_copy_rate"] == pytest.approx(2 / 690)  # one pair of identical records among 690
    assert f["disclosure.nndr_median"] == 0.0
    assert f["disclosure.dcr_share"] > 0.65
    assert f["disclosure.mia_auc"] > 0.65  # half the members were copied
    assert f["disclosure.singling_out_risk"] > 0.15 or f["disclosure.linkability_risk"] > 0.15


def _leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        yield path, obj
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")


def test_site_result_holds_aggregates_only():
    ev = independent_evaluation()
    d = ev.to_dict()
    json.dumps(d)  # plain JSON, nothing else
    # No per-row array anywhere: every sequence is far shorter than the tables.
    longest = max(len(seq) for _, seq in _leaves(d))
    assert longest < min(ev.n_synthetic, ev.n_holdout) / 2
    train, _, _ = heart_splits()
    marg = {m.column: m for m in ev.marginals}
    # Numerical bins never show a real row's extreme value (percentile or declared-bound edges).
    chol = train["chol"].dropna()
    labels = " ".join(marg["chol"].labels)
    assert f"{chol.min():.3g}" not in labels.split("-") and f"{chol.max():.3g}" not in labels.split("-")
    assert marg["age"].labels[0].startswith("0-")  # declared bounds 0..100 are the edges
    # Categorical levels held by fewer than 5 training rows are pooled, not named.
    counts = train["restecg"].value_counts()
    for level, n in counts.items():
        assert (level in marg["restecg"].labels) == (n >= 5)
    # Frequencies sum to the non-missing share (minus suppressed small cells).
    m = marg["cp"]
    assert sum(m.real) == pytest.approx(1 - m.real_missing, abs=1e-3)


def test_timings_cover_every_component():
    names = dict(independent_evaluation().timings)
    assert set(names) == {"fidelity.quality_report", "fidelity.detection", "utility",
                          "disclosure.distances_mia", "disclosure.anonymeter", "marginals", "consortium_counts"}
    assert all(v >= 0 for v in names.values())


def test_utility_regression_and_multiclass_targets():
    # evaluate_site caps OpenMP threads itself; a direct caller of a component must (busy cores thrash).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        _utility_targets()


def _utility_targets():
    train, holdout, other = heart_splits()
    kinds = kinds_of(HEART_SCHEMA)
    tr, ho, ot = (to_plain(df, HEART_SCHEMA) for df in (train, holdout, other))
    reg = evaluate_utility(tr, ho, ot, kinds, "thalach", seed=0)
    assert reg.task == "regression" and reg.metric == "r2"
    assert 0.0 < reg.real_score < 1.0 and reg.synthetic_score > 0.0
    multi = evaluate_utility(tr, ho, ot, kinds, "cp", seed=0)
    assert multi.task == "multiclass" and multi.metric == "roc_auc_ovr_macro"
    assert 0.55 < multi.real_score < 1.0
    # A synthetic table with one class only is no better than a constant guess.
    one_class = ot.assign(disease="True")
    assert evaluate_utility(tr, ho, one_class, kinds, "disease", seed=0).synthetic_score == 0.5


def test_evaluate_site_reports_every_input_problem_at_once():
    train, holdout, other = heart_splits()
    with pytest.raises(DataValidationError) as e:
        evaluate_site(train.drop(columns=["age"]), holdout.iloc[:1], other, HEART_SCHEMA, target="nope")
    text = str(e.value)
    assert "['age']" in text and "1 row(s)" in text and "'nope'" in text
    assert len(e.value.problems) == 3


def test_combine_is_a_row_weighted_mean_and_keeps_sites():
    a, b = independent_evaluation(), copying_evaluation()
    ev = combine({"a": a, "b": b}, {"a": 300, "b": 100})
    for name, va in a.figures().items():
        vb = b.figures()[name]
        if va is None or vb is None:
            continue
        assert ev.figures[name] == pytest.approx((3 * va + vb) / 4), name
    assert ev.sites["b"] is b
    assert ev.worst("disclosure.mia_auc") == ("b", b.disclosure.mia_auc)
    # A site without a figure does not count for that figure.
    no_util = replace(b, utility=None)
    ev2 = combine({"a": a, "b": no_util}, {"a": 1, "b": 99})
    assert ev2.figures["utility.synthetic_score"] == pytest.approx(a.utility.synthetic_score)
    with pytest.raises(ConfigError, match=r"\['b'\]"):
        combine({"a": a, "b": b}, {"a": 1})


def test_typed_tables_with_datetime_and_id_columns():
    from fedtab.schema import ColumnSpec, TableSchema

    df = heart_table().iloc[:300]
    schema = TableSchema(columns=(
        ColumnSpec("patient", "id"), ColumnSpec("age", "numerical", "int"),
        ColumnSpec("seen", "datetime"), ColumnSpec("cp", "categorical"), ColumnSpec("sex", "boolean"),
    ))
    rng = np.random.default_rng(0)
    typed = pd.DataFrame({
        "patient": [f"p{i}" for i in range(len(df))], "age": df["age"].to_numpy(),
        "seen": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, len(df)), unit="D"),
        "cp": df["cp"].to_numpy(), "sex": df["sex"].to_numpy(),
    })
    plain = to_plain(typed, schema)
    assert list(plain.columns) == ["age", "seen", "cp", "sex"]  # the id column never takes part
    assert plain["seen"].dtype == np.float64 and plain["sex"].dropna().isin(["True", "False"]).all()


def test_disclosure_figures_do_not_depend_on_numpys_global_generator():
    from evaluation import evaluate_site

    train, holdout, other = heart_splits()
    figures = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)  # what earlier code left in numpy's global state
        f = evaluate_site(train, holdout, other, HEART_SCHEMA, target="disease", seed=0).figures()
        figures.append({k: v for k, v in f.items() if k.startswith("disclosure.") and "seconds" not in k})
    assert figures[0] == figures[1]


def test_detection_is_measured_when_a_column_is_missing_on_every_row():
    """A hospital that records no cholesterol, scored against a table that records none either: the
    classifier still runs (scikit-learn's binner fails on an all-missing column) and the figure is
    the one the other columns give."""
    from evaluation.fidelity import detection_auc

    train, _, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    kinds = kinds_of(HEART_SCHEMA)
    numerical = kinds.numerical[0]
    real, synth = train.iloc[:120].copy(), other.iloc[:120].copy()
    real[numerical], synth[numerical] = np.nan, np.nan
    auc = detection_auc(real, synth, kinds, seed=0)
    without = replace(kinds, numerical=tuple(c for c in kinds.numerical if c != numerical))
    assert np.isfinite(auc)
    assert auc == pytest.approx(detection_auc(real.drop(columns=numerical), synth.drop(columns=numerical), without, seed=0))


def _site_sized(seed: int = 0):
    """Switzerland's sizes from real rows: 98 training, 25 holdout rows, and a pool of other rows."""
    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits(seed))
    return train.iloc[:98].reset_index(drop=True), holdout.iloc[:25].reset_index(drop=True), other


def test_near_copy_check_refuses_planted_near_copies_and_passes_tables_that_never_saw_the_rows():
    """At Switzerland's sizes: near copies (one integer column +-1) of 20% of the training rows among
    resampled holdout rows stand out far beyond Holm's first level over 4 sites x 6 tests (0.1 / 24),
    while the DCR share dilutes them; the resampled holdout, and fresh rows, read as fresh rows."""
    from evaluation.disclosure import DisclosureOptions, evaluate_disclosure
    from evaluation.planting import planted_table

    kinds, opts = kinds_of(HEART_SCHEMA), DisclosureOptions(anonymeter=False, resplits=0)
    for seed in (0, 1, 2):
        train, holdout, other = _site_sized(seed)
        rng = np.random.default_rng(seed)
        planted = planted_table(train, holdout, 0.2, 98, rng, schema=HEART_SCHEMA)
        near = evaluate_disclosure(train, holdout, planted, kinds, seed=seed, options=opts)
        assert near.near_copies.p_value < 0.1 / 24 and near.near_copies.excess > 0.15, seed
        assert near.exact_copy_rate == 0.0 and near.dcr_share < 0.6  # no exact copy; the DCR share misses them
        for table in (holdout.iloc[rng.choice(25, size=98)], other.iloc[:98]):
            fresh = evaluate_disclosure(train, holdout, table.reset_index(drop=True), kinds, seed=seed, options=opts)
            assert fresh.near_copies.p_value > 0.05 and fresh.near_copies.excess < 0.02, seed
    # Every near copy counts once however often it is repeated; exact copies are near copies too.
    train, holdout, _ = _site_sized()
    copies = evaluate_disclosure(train, holdout, train.iloc[:20].reset_index(drop=True), kinds, seed=0, options=opts)
    repeated = evaluate_disclosure(train, holdout, pd.concat([train.iloc[:20]] * 3, ignore_index=True), kinds, seed=0,
                                   options=opts)
    assert copies.near_copies.hits == repeated.near_copies.hits == 20


def test_near_copy_p_value_is_exact_for_rows_exchangeable_with_the_reference():
    """How many of m fresh values fall below the k-th smallest of n reference values: simulated
    against the negative hypergeometric tail the p-value reads."""
    from evaluation.disclosure import near_copy_rank, near_copy_tail

    rng = np.random.default_rng(0)
    m, n, k = 60, 98, 3
    t = np.sort(rng.random((50_000, n)), axis=1)[:, k - 1]
    below = (rng.random((50_000, m)) < t[:, None]).sum(axis=1)
    tail = near_copy_tail(m, n, k)
    for c in (1, 3, 6, 9):
        assert np.mean(below >= c) == pytest.approx(tail[c], abs=0.004), c
    assert tail[0] == 1.0 and tail[m + 1] == 0.0 and np.all(np.diff(tail) <= 0)
    # k from the number of training rows alone: 2% of them, at least 3.
    assert (near_copy_rank(98, 0.02, 3), near_copy_rank(242, 0.02, 3), near_copy_rank(5000, 0.02, 3)) == (3, 5, 101)


def test_near_copy_power_reads_the_site_s_rows_only():
    """The power curve plants copies of the training rows into fresh rows: it is the same whatever
    synthetic table is scored, rises with the planted share, and at Switzerland's sizes catches 20%
    (at 0.1 / 24) in 90% of its plantings."""
    from evaluation.disclosure import DisclosureOptions, evaluate_disclosure

    train, holdout, other = _site_sized()
    kinds, opts = kinds_of(HEART_SCHEMA), DisclosureOptions(anonymeter=False, resplits=0)
    a = evaluate_disclosure(train, holdout, other.iloc[:98], kinds, seed=0, options=opts).near_copies
    b = evaluate_disclosure(train, holdout, train.iloc[:98], kinds, seed=0, options=opts).near_copies
    assert a.power == b.power and a.power_level == 0.9 and len(a.power) == len(opts.power_shares)
    p = [pt.p_value for pt in a.power]
    assert all(x >= y for x, y in zip(p, p[1:]))
    by_share = {pt.share: pt for pt in a.power}
    assert by_share[0.2].p_value < 0.1 / 24 and by_share[0.2].excess > 0.02
    assert by_share[0.01].p_value > 0.1 / 24


def test_exact_copies_leave_out_rows_a_holdout_row_shares_and_natural_twins_are_read_leave_one_out():
    """A table of resampled holdout rows copies no training row, even where a holdout row and a training
    row are identical records (a natural twin: resampled, it would read as copies); the natural rate is
    what the site's own rows show, each against the others."""
    from evaluation.disclosure import _exact_copies

    train, holdout, other = (to_plain(f, HEART_SCHEMA) for f in heart_splits())
    kinds = kinds_of(HEART_SCHEMA)
    train, holdout = train.iloc[:98].reset_index(drop=True), holdout.iloc[:25].reset_index(drop=True)
    twin = pd.concat([holdout, train.iloc[[0]]], ignore_index=True)  # training row 0 also held out
    resampled = twin.iloc[np.random.default_rng(0).choice(len(twin), size=98)].reset_index(drop=True)
    assert _exact_copies(train, twin, resampled, kinds) == (0.0, pytest.approx(1 / 124))
    # Copies of training rows no holdout row shares all count; natural: a pair among the training rows.
    paired = pd.concat([train, train.iloc[[5]]], ignore_index=True)
    exact, natural = _exact_copies(paired, holdout, train.iloc[1:21], kinds)
    assert exact == 1.0 and natural == pytest.approx(2 / 124)
    assert _exact_copies(train, holdout, other.iloc[:50], kinds) == (0.0, 0.0)

"""Column transformers and the table contract on small frames: modes, spans, missing values, serialisation."""

import json

import numpy as np
import pandas as pd
import pytest

from fedtab.errors import NotFittedError, SchemaError
from fedtab.privacy import PrivacyLedger
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform import (
    PHASE_DOMAIN, PHASE_HISTOGRAM, EncodingDP, EncodingPlan, TableTransformer, fit_federated, merge_statistics, phase_request,
    site_statistics, span_offsets,
)
from fedtab.transform.numerical import NumericalColumnTransformer, histogram_points

SCHEMA = TableSchema(columns=(
    ColumnSpec("pid", "id"),
    ColumnSpec("dose", "numerical", "float", precision=2),
    ColumnSpec("visits", "numerical", "int", nullable=True),
    ColumnSpec("ward", "categorical"),
    ColumnSpec("smoker", "boolean"),
    ColumnSpec("admitted", "datetime", datetime_format="%Y-%m-%d"),
))


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    frames = {}
    for i, n in enumerate((300, 200)):
        visits = pd.array(rng.poisson(3 + 5 * i, n), dtype="Int64")
        visits[rng.random(n) < 0.1] = pd.NA
        frames[f"s{i}"] = pd.DataFrame({
            "pid": [f"p{i}-{j}" for j in range(n)],
            "dose": np.round(np.where(rng.random(n) < 0.5, rng.normal(-5, 1, n), rng.normal(10, 2, n)), 2),
            "visits": visits,
            "ward": rng.choice(["a", "b", "c" if i else "a"], n).astype(object),
            "smoker": pd.array(rng.random(n) < 0.3, dtype="boolean"),
            "admitted": pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
        })
    return frames


def test_histogram_points_follow_the_histogram():
    pts = histogram_points(np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0]), 400)
    assert np.mean(pts < 1.0) == pytest.approx(0.75, abs=0.01) and pts.min() >= 0 and pts.max() <= 2


def test_mixture_from_a_histogram_keeps_each_bump_s_mass_and_place():
    edges = np.linspace(-10, 20, 301)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = 1000 * np.exp(-0.5 * (centres + 5) ** 2) + 1000 * np.exp(-0.5 * ((centres - 10) / 2) ** 2)
    col = NumericalColumnTransformer(ColumnSpec("x", "numerical", "float")).fit_from_histogram(
        edges, counts, lower=-10, upper=20)
    left = col.means_ < 2.5  # the bumps hold 1/3 and 2/3 of the mass (widths 1 and 2)
    assert col.weights_[left].sum() == pytest.approx(1 / 3, abs=0.01)
    assert np.average(col.means_[left], weights=col.weights_[left]) == pytest.approx(-5, abs=0.05)
    assert np.average(col.means_[~left], weights=col.weights_[~left]) == pytest.approx(10, abs=0.05)
    assert len(col.means_) <= 10


def test_round_trip_types_order_and_missing_values():
    frames = _frames()
    tt = fit_federated(frames, SCHEMA)
    full = pd.concat(frames.values(), ignore_index=True)
    x = tt.transform(full)
    back = tt.inverse_transform(x)
    assert x.dtype == np.float32 and x.shape == (len(full), tt.output_dim)
    assert list(back.columns) == ["dose", "visits", "ward", "smoker", "admitted"]  # id dropped, schema order
    assert [str(t) for t in back.dtypes] == ["float64", "Int64", "object", "boolean", "datetime64[ns]"]
    pd.testing.assert_series_equal(back["visits"], full["visits"], check_names=False)
    pd.testing.assert_series_equal(back["admitted"], full["admitted"])
    assert (back["ward"] == full["ward"]).all() and (back["smoker"] == full["smoker"]).all()
    assert np.abs(back["dose"] - full["dose"]).max() < 0.011
    roles = [(s.column, s.role) for s in tt.spans]
    assert ("visits", "missing") in roles and ("dose", "missing") not in roles


def test_spans_and_condition_spans_describe_the_matrix():
    tt = fit_federated(_frames(), SCHEMA)
    x = tt.transform(pd.concat(_frames().values(), ignore_index=True))
    offsets = span_offsets(tt.spans)
    for span, off in zip(tt.spans, offsets):
        block = x[:, off:off + span.dim]
        if span.activation == "softmax":
            assert np.all(block.sum(axis=1) == 1.0)
        else:
            assert np.all(np.abs(block) <= 1.0)
    conds = {c.column: c for c in tt.condition_spans}
    assert set(conds) == {"ward", "smoker"}
    ward = conds["ward"]
    assert np.allclose(x[:, ward.offset:ward.offset + ward.dim].mean(axis=0), ward.frequencies)
    assert ward.frequencies.sum() == pytest.approx(1.0)


def test_serialisation_is_json_plus_arrays():
    tt = fit_federated(_frames(), SCHEMA)
    d = tt.to_dict()
    config = json.loads(json.dumps(d["config"], allow_nan=False))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in d["arrays"].values())
    again = TableTransformer.from_dict({"config": config, "arrays": {k: v.copy() for k, v in d["arrays"].items()}})
    df = pd.concat(_frames(1).values(), ignore_index=True)
    assert np.array_equal(again.transform(df), tt.transform(df))
    assert again.spans == tt.spans


def test_phase_messages_are_flat_and_transportable():
    plan = EncodingPlan(SCHEMA)
    frames = _frames()
    merged = None
    for phase in plan.phases():
        req = phase_request(plan, phase, merged)
        stats = [site_statistics(df, plan, phase, req, ledger=PrivacyLedger(s, epsilon_budget=None)) for s, df in frames.items()]
        for msg in [req, *stats]:
            for key, value in msg.items():
                assert isinstance(key, str)
                ok = isinstance(value, (np.ndarray, float, int, str)) or (
                    isinstance(value, list) and all(isinstance(v, str) for v in value))
                assert ok, (key, type(value))
        merged = merge_statistics(plan, phase, stats)
    assert plan.phases() == (PHASE_DOMAIN, PHASE_HISTOGRAM)
    assert "pid/counts" not in merged  # id columns never leave the site


def test_unfitted_and_unknown_values_fail_clearly():
    with pytest.raises(NotFittedError):
        TableTransformer().transform(pd.DataFrame())
    tt = fit_federated(_frames(), SCHEMA)
    bad = pd.concat(_frames().values(), ignore_index=True)
    bad.loc[0, "ward"] = "zzz"
    with pytest.raises(SchemaError, match="'ward'.*'zzz'"):
        tt.transform(bad)


def test_a_point_mass_at_zero_or_the_floor_gets_its_own_cell_and_mode():
    from fedtab.transform.statistics import histogram_edges

    spec = ColumnSpec("gain", "numerical", "int", lower=0.0, upper=99_999.0)
    edges = histogram_edges(spec, 0.0, 99_999.0, 40)
    assert len(edges) == 41 and np.all(np.diff(edges) > 0) and list(edges[:2]) == [-0.5, 0.5]
    signed = histogram_edges(ColumnSpec("b", "numerical", "int", lower=-100.0, upper=900.0), -100.0, 900.0, 40)
    assert {-100.5, -99.5, -0.5, 0.5} <= set(signed)  # the floor and 0 each hold one integer
    rng = np.random.default_rng(0)
    gain = np.where(rng.random(4000) < 0.92, 0, rng.integers(1_000, 20_000, 4000))
    schema = TableSchema(columns=(spec,), name="t")
    tt = fit_federated({"s": pd.DataFrame({"gain": pd.array(gain, dtype="Int64")})}, schema,
                       dp=EncodingDP(epsilon=1.0, delta=1e-5))
    col = tt.columns_[0]
    zero = np.abs(col.means_) < 1.0
    assert zero.any() and col.weights_[zero].sum() > 0.85 and col.stds_[zero].max() < 1.0


def test_a_point_mass_does_not_take_the_modes_that_the_other_values_need():
    """Adult's capital gain: 0 in 92% of rows, the rest in separate clusters. Modes started at quantiles
    of the counts all sat on the point mass, and one mode of std ~22,500 held every other value."""
    from fedtab.transform.statistics import histogram_edges

    spec = ColumnSpec("gain", "numerical", "int", lower=0.0, upper=99_999.0)
    edges = histogram_edges(spec, 0.0, 99_999.0, 200)
    rng = np.random.default_rng(0)
    n = 30_000
    values = np.concatenate([np.zeros(int(0.92 * n)), rng.normal(3_000, 400, int(0.04 * n)),
                             rng.normal(15_000, 300, int(0.03 * n)), np.full(int(0.01 * n), 99_999.0)])
    counts = np.histogram(np.clip(values, 0, 99_999), edges)[0].astype(float)
    col = NumericalColumnTransformer(spec).fit_from_histogram(edges, counts, lower=0.0, upper=99_999.0)
    assert np.sum(np.abs(col.means_) < 1.0) == 1  # one mode for the point mass, not several copies
    for centre, share in ((0.0, 0.92), (3_000.0, 0.04), (15_000.0, 0.03), (99_999.0, 0.01)):
        near = np.abs(col.means_ - centre) < 1_000
        assert near.any() and col.stds_[near].max() < 1_000, (centre, col.means_, col.stds_)
        assert col.weights_[near].sum() == pytest.approx(share, abs=0.01)


def test_decoded_values_at_a_precision_never_read_minus_zero():
    from fedtab.transform.values import numeric_series

    out = numeric_series(np.array([-0.04, 0.04, -0.06, np.nan]), ColumnSpec("oldpeak", "numerical", "float", precision=1))
    assert out.astype(str).tolist() == ["0.0", "0.0", "-0.1", "nan"]


def test_under_dp_the_mixture_is_fitted_to_the_unclipped_counts_and_invents_no_tail_modes():
    from fedtab.transform.numerical import fit_mixture, fit_mixture_noisy

    rng = np.random.default_rng(0)
    # 735 values: 40% at exactly 0, the rest around 1.2 (ST depression-like), 40 cells over [-10, 10],
    # 0 in the middle of a cell (as the plan's grid-aware edges put it).
    x = np.r_[np.zeros(294), rng.normal(1.2, 0.8, 441)]
    edges = np.linspace(-10.25, 9.75, 41)
    exact = np.histogram(x, edges)[0].astype(float)
    outside = {"em": [], "ls": []}
    for seed in range(4):
        noisy = exact + np.random.default_rng(seed).normal(0, 57.0, exact.size)  # the heart demo's noise
        m, s, w = fit_mixture_noisy(edges, noisy, noise_sd=57.0, rows=735, max_modes=10, weight_threshold=0.005)
        outside["ls"].append(float(np.sum(w * _mass_beyond(m, s, -3.0, 5.0))))
        m, s, w = fit_mixture(edges, noisy, max_modes=10, weight_threshold=0.005, spread_point_masses=False)
        outside["em"].append(float(np.sum(w * _mass_beyond(m, s, -3.0, 5.0))))
    # EM on clipped counts puts a large share where no value lies; the least-squares fit far less.
    assert np.mean(outside["em"]) > 0.15 and np.mean(outside["ls"]) < 0.5 * np.mean(outside["em"])
    # With less noise the point mass gets its own narrow mode, holding about its cell's 44%.
    noisy = exact + np.random.default_rng(0).normal(0, 15.0, exact.size)
    m, s, w = fit_mixture_noisy(edges, noisy, noise_sd=15.0, rows=735, max_modes=10, weight_threshold=0.005)
    assert 0.3 < w[(np.abs(m) < 0.25) & (s < 0.25)].sum() < 0.6


def _mass_beyond(means, stds, lo, hi):
    from scipy.special import ndtr
    return ndtr((lo - means) / stds) + 1.0 - ndtr((hi - means) / stds)


def test_heaped_values_release_a_rounding_profile_and_generated_values_follow_it():
    from fedtab.transform.statistics import rounding_counts

    spec = ColumnSpec("bp", "numerical", "int", lower=50.0, upper=300.0)
    rng = np.random.default_rng(0)
    # Blood-pressure-like: 65% recorded as a multiple of 10, the rest to the unit.
    bp = np.where(rng.random(2000) < 0.65, np.round(rng.normal(130, 18, 2000), -1), np.round(rng.normal(130, 18, 2000)))
    profile = rounding_counts(bp, spec)
    assert profile.sum() == 2000 and profile[0] / 2000 > 0.65
    schema = TableSchema(columns=(spec,), name="t")
    plan = EncodingPlan(schema, dp=EncodingDP(epsilon=1.0, delta=1e-5))
    assert [c.name for c in plan.rounding_columns()] == ["bp"] and plan.releases() == 1
    # The profile is noised at twice the histogram's multiplier: it costs a quarter of a release.
    plain = EncodingPlan(schema, dp=plan.dp, rounding=False)
    assert plain.rounding_columns() == () and plan.noise_multiplier > plain.noise_multiplier
    assert plan.noise_multiplier < EncodingPlan(TableSchema(columns=(spec, ColumnSpec("y", "boolean")), name="t"),
                                                dp=plan.dp, rounding=False).noise_multiplier
    assert EncodingPlan(TableSchema(columns=(ColumnSpec("bp", "numerical", "int", lower=0.0, upper=30.0),), name="t"),
                        dp=plan.dp).rounding_columns() == ()  # one cell per value: the histogram shows heaping
    tt = fit_federated({"a": pd.DataFrame({"bp": pd.array(bp[:1000].astype(int), dtype="Int64")}),
                        "b": pd.DataFrame({"bp": pd.array(bp[1000:].astype(int), dtype="Int64")})}, schema,
                       dp=plan.dp)
    col = tt.columns_[0]
    smooth = np.clip(rng.normal(130, 18, 4000), 50, 300)
    out = col.apply_rounding(smooth, np.random.default_rng(1))
    assert abs(np.mean(out % 10 == 0) - profile[0] / 2000) < 0.08  # smooth values would give 0.10
    assert np.abs(out - smooth).max() <= 5.0 and out.min() >= 50 and out.max() <= 300
    again = NumericalColumnTransformer.from_dict(col.to_dict(), spec)  # kept in the model file
    assert np.array_equal(again.apply_rounding(smooth, np.random.default_rng(1)), out)


def test_under_dp_least_squares_only_where_the_noise_rivals_the_rows():
    from fedtab.privacy.mechanisms import norm_sub

    spec = ColumnSpec("x", "numerical", "float")
    edges = np.linspace(0.0, 40.0, 41)
    for rows, expect_ls in ((735, True), (26_000, False)):
        x = np.random.default_rng(0).normal(20, 3, rows)
        raw = np.histogram(x, edges)[0] + np.random.default_rng(1).normal(0, 57.0, 40)
        col = NumericalColumnTransformer(spec).fit_from_histogram(
            edges, norm_sub(raw, total=rows), lower=0.0, upper=40.0, noise_sd=57.0, rows=rows, raw_counts=raw)
        # Least squares keeps one mode for one bump; EM on norm-subbed counts splits it into several.
        assert (len(col.means_) == 1) == expect_ls, rows
        assert abs(np.average(col.means_, weights=col.weights_) - 20) < 1.5


def test_a_noisy_rounding_profile_without_heaping_rounds_nothing():
    col = NumericalColumnTransformer(ColumnSpec("age", "numerical", "int", lower=0.0, upper=120.0))
    natural = 735 * np.array([0.1, 0.1, 0.4, 0.4])
    noisy = natural + np.array([90.0, 300.0, -200.0, -190.0])  # within 2 sd (sd 120) but for one class
    col.fit_rounding(noisy, step=1.0, noise_sd=120.0)
    q = col.rounding_[0]
    assert q[1] > 0.1 and q[0] == 0.0  # only the multiples of 5 stand out of the noise
    col.fit_rounding(natural + np.array([90.0, 100.0, -100.0, -90.0]), step=1.0, noise_sd=120.0)
    assert np.allclose(col.rounding_[0], [0.0, 0.0, 0.0, 1.0])

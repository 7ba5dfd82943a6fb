"""Two-way tables in the encoding (``EncodingPlan.pairs`` / ``target``) and calibration onto them."""

import numpy as np
import pandas as pd
import pytest

import fedtab
from tests.conftest import non_dp_policy
from fedtab.errors import ConfigError
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform import EncodingDP, fit_federated
from fedtab.transform.calibration import calibrate
from fedtab.transform.pairs import coarse_edges
from fedtab.transform.plan import EncodingPlan, target_pairs
from fedtab.transform.table import TableTransformer

SCHEMA = TableSchema(columns=(
    ColumnSpec("id", "id"),
    ColumnSpec("age", "numerical", "int", lower=0.0, upper=99.0),
    ColumnSpec("town", "categorical", categories=("north", "south", "east")),
    ColumnSpec("sick", "categorical"),
), name="pairs")


def _sites(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    frames = {}
    for k, name in enumerate(("a", "b")):
        age = rng.integers(20, 90, n)
        sick = np.where(rng.random(n) < (age - 15) / 90, "yes", "no").astype(object)
        age = age.astype(float)
        age[rng.random(n) < 0.1] = np.nan
        frames[name] = pd.DataFrame({
            "id": np.arange(n) + k * n, "age": pd.array(age, dtype="Float64").astype("Int64"),
            "town": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]).astype(object),
            "sick": sick})
    return frames


def test_plan_validates_pairs_and_target():
    assert target_pairs(SCHEMA, "sick") == (("sick", "age"), ("sick", "town"))
    assert target_pairs(SCHEMA, None) == ()
    with pytest.raises(ConfigError, match="'nope'.*not an encoded column"):
        target_pairs(SCHEMA, "nope")
    with pytest.raises(ConfigError, match=r"\['id'\].*id columns are never encoded"):
        EncodingPlan(SCHEMA, pairs=(("id", "age"),))
    with pytest.raises(ConfigError, match="named twice"):
        EncodingPlan(SCHEMA, pairs=(("age", "town"), ("town", "age")))
    with pytest.raises(ConfigError, match="two different column"):
        EncodingPlan(SCHEMA, pairs=(("age", "age"),))
    plan = EncodingPlan(SCHEMA, pairs=(("sick", "age"),))
    assert plan.phases()[-1] == "pairs" and plan.releases("pairs") == 1
    assert EncodingPlan.from_dict(plan.to_dict()).pairs == (("sick", "age"),)
    assert "pairs" not in EncodingPlan(SCHEMA).phases()


def test_coarse_edges_keep_a_point_mass_in_one_cell_and_split_the_rest_evenly():
    edges = np.arange(101.0)
    counts = np.r_[[900.0], np.full(99, 1.0)]  # 90% of the mass in the first cell
    out = coarse_edges(edges, counts, cells=10)
    assert out[0] == 0 and out[-1] == 100 and out[1] == 1  # the point mass is a cell of its own
    assert np.all(np.diff(out) > 0) and set(out) <= set(edges)
    flat = coarse_edges(edges, np.ones(100), cells=10)
    assert np.allclose(np.diff(flat), 10)


def test_exact_pair_tables_are_the_pooled_crosstab_and_survive_serialisation():
    sites = _sites()
    tt = fit_federated(sites, SCHEMA, pairs=target_pairs(SCHEMA, "sick"))
    sick_age, sick_town = tt.pair_tables_
    pooled = pd.concat(sites.values(), ignore_index=True)
    # sick x town: categories of 'sick' are learned (sorted), no 'other' without DP; last cell missing.
    assert sick_town.a.categories == ("no", "yes") and sick_town.b.categories == ("north", "south", "east")
    table = sick_town.counts.reshape(sick_town.a.size, sick_town.b.size)
    expected = pd.crosstab(pooled["sick"], pooled["town"]).loc[["no", "yes"], ["north", "south", "east"]].to_numpy()
    assert np.array_equal(table[:2, :3], expected) and table[:, 3].sum() == 0 and table[2].sum() == 0
    # sick x age: the age cells partition the rows, missing ages in the last cell.
    age_table = sick_age.counts.reshape(sick_age.a.size, sick_age.b.size)
    assert age_table.sum() == len(pooled) and age_table[:, -1].sum() == pooled["age"].isna().sum()
    assert age_table[1, :-1].argmax() > age_table[0, :-1].argmax()  # the sick are older
    saved = tt.to_dict()
    again = TableTransformer.from_dict(saved).to_dict()
    assert again["config"] == saved["config"] and saved["arrays"].keys() == again["arrays"].keys()
    assert all(np.array_equal(saved["arrays"][k], again["arrays"][k]) for k in saved["arrays"])
    damaged = tt.to_dict()
    damaged["config"]["pairs"][0]["b"]["column"] = "town"  # a (sick, town) table twice, none of (sick, age)
    damaged["config"]["pairs"][0]["a"]["column"] = "age"
    with pytest.raises(ConfigError, match="pairs its plan does not name"):
        TableTransformer.from_dict(damaged)


def test_dp_pair_tables_are_charged_on_each_ledger_within_the_budget():
    sites = _sites()
    dp = EncodingDP(epsilon=1.0, delta=1e-5)
    ledgers = {s: PrivacyLedger(s, epsilon_budget=1.0, delta=1e-5) for s in sites}
    tt = fit_federated(sites, SCHEMA, dp=dp, ledgers=ledgers, pairs=target_pairs(SCHEMA, "sick"))
    for ledger in ledgers.values():
        pair_entries = [e for e in ledger.entries if e.phase == "encoding/pairs"]
        assert [e.target for e in pair_entries] == ["sick x age", "sick x town"]
        assert ledger.epsilon <= 1.0 + 1e-9
    assert all(t.noise_sd > 0 and t.counts.min() >= 0 for t in tt.pair_tables_)
    # Under DP 'sick' was learned through the DP set union: its table has an 'other' cell.
    assert tt.pair_tables_[0].a.other


def test_pairs_whose_tables_would_be_mostly_noise_are_not_measured_and_cost_nothing():
    sites = {k: v.head(50) for k, v in _sites().items()}  # 100 rows: cells of a few rows against noise sd ~45
    ledgers = {s: PrivacyLedger(s, epsilon_budget=0.3, delta=1e-5) for s in sites}
    tt = fit_federated(sites, SCHEMA, dp=EncodingDP(epsilon=0.3, delta=1e-5), ledgers=ledgers,
                       pairs=target_pairs(SCHEMA, "sick"))
    assert tt.pair_tables_ == []
    assert all(not [e for e in led.entries if e.phase == "encoding/pairs"] for led in ledgers.values())
    assert TableTransformer.from_dict(tt.to_dict()).pair_tables_ == []


def test_calibration_onto_a_pair_table_restores_the_relation_with_the_target():
    sites = _sites()
    tt = fit_federated(sites, SCHEMA, pairs=(("sick", "town"),))
    # Target relation: make 'sick' depend strongly on town in the agreed table.
    table = tt.pair_tables_[0]
    counts = table.counts.reshape(table.a.size, table.b.size).copy()
    counts[:2, :3] = [[900, 100, 500], [100, 900, 500]]
    tt.pair_tables_[0] = type(table)(table.a, table.b, counts.ravel(), table.noise_sd)
    rng = np.random.default_rng(3)
    m = 6000  # candidates where sick and town are independent
    decoded = {"age": rng.integers(20, 90, m).astype(float),
               "town": rng.choice(np.array(["north", "south", "east"], dtype=object), m),
               "sick": rng.choice(np.array(["no", "yes"], dtype=object), m)}
    out = calibrate(tt.columns_, decoded, 2000, np.random.default_rng(1), pair_tables=tt.pair_tables_)
    share = pd.crosstab(out["town"], out["sick"], normalize="index")["yes"]
    assert share["south"] > 0.75 and share["north"] < 0.25 and abs(share["east"] - 0.5) < 0.1
    plain = calibrate(tt.columns_, decoded, 2000, np.random.default_rng(1))
    assert abs(pd.crosstab(plain["town"], plain["sick"], normalize="index")["yes"]["south"] - 0.5) < 0.1


def test_synthesizer_target_releases_pairs_and_its_model_file_keeps_them(tmp_path):
    sites = {k: v.drop(columns=["id"]) for k, v in _sites(n=1500).items()}
    with pytest.raises(ConfigError, match="'nope'"):
        fedtab.FederatedSynthesizer("tvae", rounds=1, target="nope", holdout=0.0, site_policy=non_dp_policy()).fit(sites)
    synth = fedtab.FederatedSynthesizer("tvae", epsilon=4.0, rounds=1, local_epochs=1, batch_size=500,
                                        preprocessing_share=0.5, target="sick", holdout=0.0, seed=2,
                                        schema=SCHEMA.without("id")).fit(sites)
    assert [(t.a.column, t.b.column) for t in synth.transformer_.pair_tables_] == [("sick", "age"), ("sick", "town")]
    assert all(led.epsilon <= 4.0 + 1e-9 for led in synth.privacy_ledger.values())
    assert all(len([e for e in led.entries if e.phase == "encoding/pairs"]) == 2 for led in synth.privacy_ledger.values())
    path = tmp_path / "m.fedtab"
    synth.save(path)
    loaded = fedtab.load(path)
    pd.testing.assert_frame_equal(synth.sample(300, seed=4), loaded.sample(300, seed=4))
    kept = synth.sample(300, seed=4, relabel=False)  # the generator's target, raked onto the tables
    assert set(kept["sick"].dropna()) <= {"no", "yes", "<other>"} and not kept["sick"].equals(synth.sample(300, seed=4)["sick"])


def test_diffusion_with_a_target_is_conditioned_on_it_and_its_model_file_keeps_that(tmp_path):
    sites = {k: v.drop(columns=["id"]) for k, v in _sites(n=1500).items()}
    synth = fedtab.FederatedSynthesizer("diffusion", rounds=2, local_epochs=2, batch_size=500, target="sick",
                                        holdout=0.0, seed=2, model_options={"sampling_steps": 4},
                                        site_policy=non_dp_policy()).fit(sites)
    assert synth.job_.model_options == {"sampling_steps": 4, "condition_column": "sick"}
    path = tmp_path / "m.fedtab"
    synth.save(path)
    loaded = fedtab.load(path)
    assert loaded.job_.model_options == synth.job_.model_options
    rows = synth.sample(3000, seed=4)  # the model's own target (drawn first), raked onto the tables
    pd.testing.assert_frame_equal(rows, loaded.sample(3000, seed=4))
    pd.testing.assert_frame_equal(rows, synth.sample(3000, seed=4, relabel=False))
    share = (pd.concat(sites.values())["sick"] == "yes").mean()
    assert abs((rows["sick"] == "yes").mean() - share) < 0.03
    # A model that is not conditioned keeps the redraw as its default; an explicit option wins.
    plain = fedtab.FederatedSynthesizer("diffusion", rounds=1, local_epochs=1, batch_size=500, target="sick",
                                        holdout=0.0, model_options={"condition_column": None},
                                        site_policy=non_dp_policy()).fit(sites)
    assert plain.job_.model_options == {"condition_column": None}


def test_dp_tables_take_their_margins_from_the_one_way_histograms():
    sites = _sites()
    ledgers = {s: PrivacyLedger(s, epsilon_budget=0.5, delta=1e-5) for s in sites}
    tt = fit_federated(sites, SCHEMA, dp=EncodingDP(epsilon=0.5, delta=1e-5), ledgers=ledgers,
                       pairs=target_pairs(SCHEMA, "sick"))
    sick = next(c for c in tt.columns_ if c.spec.name == "sick")
    for table in tt.pair_tables_:
        margin = table.counts.reshape(table.a.size, table.b.size).sum(axis=1)
        share = margin / margin.sum()
        # 'sick' cells: its categories, 'other', missing; the one-way release has no missing slot here.
        one_way = np.append(sick.frequencies_, [0.0] * (table.a.size - len(sick.frequencies_)))
        assert np.allclose(share, one_way, atol=1e-6)


def test_relabelling_draws_the_target_from_the_tables():
    sites = _sites()
    tt = fit_federated(sites, SCHEMA, pairs=target_pairs(SCHEMA, "sick"))
    rng = np.random.default_rng(4)
    m = 6000  # candidates whose 'sick' ignores age entirely
    decoded = {"age": rng.integers(20, 90, m).astype(float),
               "town": rng.choice(np.array(["north", "south", "east"], dtype=object), m),
               "sick": rng.choice(np.array(["no", "yes"], dtype=object), m)}
    out = calibrate(tt.columns_, decoded, 2000, np.random.default_rng(1), pair_tables=tt.pair_tables_, relabel=True)
    frame = pd.DataFrame(out)
    young, old = frame[frame["age"] < 40], frame[frame["age"] >= 70]
    # Real rows: P(sick) rises from ~0.2 at 25 to ~0.8 at 80; relabelled rows follow, raw ones do not.
    assert (old["sick"] == "yes").mean() - (young["sick"] == "yes").mean() > 0.35
    again = calibrate(tt.columns_, decoded, 2000, np.random.default_rng(1), pair_tables=tt.pair_tables_, relabel=True)
    assert np.array_equal(out["sick"], again["sick"])
    with pytest.raises(ConfigError, match="all pair the target"):
        calibrate(tt.columns_, decoded, 2000, np.random.default_rng(1),
                  pair_tables=[tt.pair_tables_[0], type(tt.pair_tables_[1])(tt.pair_tables_[1].b, tt.pair_tables_[1].a,
                                                                             tt.pair_tables_[1].counts)], relabel=True)


def test_relabelling_only_draws_values_the_target_can_take():
    schema = TableSchema(columns=(ColumnSpec("age", "numerical", "int", lower=0.0, upper=99.0),
                                  ColumnSpec("sick", "categorical", categories=("no", "yes"), nullable=False)), name="t")
    sites = {k: v[["age", "sick"]].assign(age=v["age"].fillna(50)) for k, v in _sites(n=1500).items()}
    tt = fit_federated(sites, schema, dp=EncodingDP(epsilon=1.0, delta=1e-5), pairs=target_pairs(schema, "sick"))
    sick = next(c for c in tt.columns_ if c.spec.name == "sick")
    assert None not in sick.labels and tt.pair_tables_[0].a.size == 3  # the table still has a missing cell
    rng = np.random.default_rng(0)
    decoded = {"age": rng.integers(20, 90, 3000).astype(float),
               "sick": rng.choice(np.array(["no", "yes"], dtype=object), 3000)}
    out = calibrate(tt.columns_, decoded, 1000, np.random.default_rng(1), pair_tables=tt.pair_tables_, relabel=True)
    assert set(out["sick"]) <= {"no", "yes"}


def test_progress_says_how_many_target_tables_were_measured():
    sites = {k: v.drop(columns=["id"]).head(200) for k, v in _sites().items()}
    events = []
    # The target's categories declared: undeclared, at these sizes none of its values passes the domain
    # phase's threshold and the job stops there (tests/test_read_under_dp.py).
    declared = TableSchema(tuple(ColumnSpec("sick", "categorical", categories=("no", "yes")) if c.name == "sick"
                                 else c for c in SCHEMA.without("id").columns), name="pairs")
    fedtab.FederatedSynthesizer("tvae", epsilon=1.0, rounds=1, local_epochs=0.5, batch_size=100, target="sick",
                                holdout=0.0, progress=lambda e, info: events.append(info), schema=declared).fit(sites)
    tables = [i for i in events if "measured" in i]
    assert len(tables) == 1 and tables[0]["named"] == 2 and tables[0]["measured"] == 0
    assert "0 of 2 two-way tables measured" in tables[0]["name"] and "preprocessing_share" in tables[0]["name"]


def test_row_counts_read_off_every_histogram_track_the_sites_rows_under_dp():
    """FedAvg weights: the inverse-variance mean of every column's noisy total. At epsilon 0.5 the first
    column alone (age, ~40 cells) read the 123-row hospital as 1 row in some seeds."""
    from fedtab.datasets import heart_schema, load_heart_sites
    from fedtab.federation.encoding import run_encoding
    from fedtab.transform.statistics import site_statistics

    sites = load_heart_sites()
    plan = EncodingPlan(heart_schema(), dp=EncodingDP(epsilon=0.5, delta=1e-5), seed=0)
    errors = []
    for seed in range(5):
        ledgers = {s: PrivacyLedger(s, epsilon_budget=0.5, delta=1e-5) for s in sites}
        _, weights = run_encoding(plan, lambda phase, req: {
            s: site_statistics(df, plan, phase, req, ledger=ledgers[s]) for s, df in sites.items()})
        errors += [weights[s] - len(df) for s, df in sites.items()]
    # sigma ~ 29 per cell here: one 40-cell column's total has sd ~ 185, the combined estimate ~ 30.
    assert np.sqrt(np.mean(np.square(errors))) < 60
    exact = EncodingPlan(heart_schema(), seed=0)
    _, weights = run_encoding(exact, lambda phase, req: {
        s: site_statistics(df, exact, phase, req, ledger=PrivacyLedger(s, epsilon_budget=None)) for s, df in sites.items()})
    assert weights == pytest.approx({s: float(len(df)) for s, df in sites.items()}, abs=1e-9)

"""A site column (``site_column``): the generator conditioned on each row's site, each site's rows
calibrated onto its own marginals, each site evaluated on the rows labelled with its name."""

import numpy as np
import pandas as pd
import pytest
import torch

import fedtab
from tests.conftest import lenient_policy_file, non_dp_policy
from fedtab.errors import ConfigError
from fedtab.models.conditions import Conditions, RowIndex
from fedtab.models.ctgan import CTGAN, CTGANConfig, _LinearOverParts
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform.spans import ConditionSpan, SpanInfo

SPANS = [SpanInfo(1, "tanh"), SpanInfo(3, "softmax", "x"), SpanInfo(2, "softmax", "site")]
COND = [ConditionSpan("x", 1, 3, np.array([0.5, 0.3, 0.2])),
        ConditionSpan("site", 4, 2, np.array([0.25, 0.75]), pinned=True)]


def _rows(site: int, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(site)
    rows = torch.zeros(n, 6)
    rows[:, 0] = torch.rand(n, generator=g)
    rows[torch.arange(n), 1 + torch.randint(3, (n,), generator=g)] = 1.0
    rows[:, 4 + site] = 1.0
    return rows


def test_a_pinned_span_conditions_every_row_and_is_never_the_drawn_column():
    cond = Conditions(SPANS, COND)
    g = torch.Generator().manual_seed(0)
    cond.pin(1)
    batch = cond.from_frequencies(500, generator=g)
    assert (batch.column == 0).all()  # the only free column
    assert (batch.site == 1).all()
    assert torch.equal(batch.vector.sum(1), torch.full((500,), 2.0))  # the drawn condition and the site
    assert (batch.vector[:, 3 + 1] == 1).all()  # the site's slot (after x's 3)
    hot = cond.hot(batch)
    assert hot.shape == (500, 2) and (hot[:, 1] == 4).all()
    # Unpinned (sampling): the site is drawn from the span's frequencies.
    cond.pin(None)
    share = cond.from_frequencies(4000, generator=g).site.float().mean().item()
    assert share == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ConfigError, match="pinned category"):
        cond.pin(2)


def test_real_rows_carry_their_own_site_under_both_samplers():
    cond = Conditions(SPANS, COND)
    g = torch.Generator().manual_seed(1)
    rows = torch.cat([_rows(0), _rows(1)])
    batch = cond.from_rows(rows, generator=g)
    assert torch.equal(batch.site, rows[:, 4:6].argmax(1))
    idx, batch = RowIndex(cond, rows).sample(300, generator=g)
    assert torch.equal(batch.site, rows[idx, 4:6].argmax(1))
    assert torch.equal(batch.category, rows[idx, 1:4].argmax(1))  # training-by-sampling still holds


def test_two_hot_linear_matches_the_concatenated_one_hots():
    torch.manual_seed(0)
    weight = torch.randn(4, 3 + 5, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    x = torch.randn(6, 3, requires_grad=True)
    hot = torch.tensor([[0, 3], [1, 4], [2, 3], [0, 4], [1, 3], [2, 4]])
    out = _LinearOverParts.apply(weight, bias, hot, x)
    one_hot = torch.zeros(6, 5).scatter_(1, hot, 1.0)
    ref = torch.nn.functional.linear(torch.cat([x, one_hot], 1), weight, bias)
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (weight, bias, x), g)
    ref_grads = torch.autograd.grad(ref, (weight, bias, x), g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_ctgan_writes_each_generated_rows_site_from_its_condition():
    model = CTGAN(CTGANConfig(embedding_dim=8, generator_dim=(16,), discriminator_dim=(16,))).build(SPANS, COND, seed=0)
    g = torch.Generator().manual_seed(2)
    model.conditions.pin(0)
    gen = model.generate(model.conditions.from_frequencies(64, generator=g), generator=g)
    assert torch.equal(gen.rows[:, 4:6], torch.tensor([[1.0, 0.0]]).expand(64, 2))
    gen.rows.sum().backward()  # the overwrite keeps the graph intact
    model.conditions.pin(None)
    sampled = model.sample(2000, generator=g)
    assert set(np.unique(sampled[:, 4:6].argmax(1))) == {0, 1}
    assert sampled[:, 5].mean() == pytest.approx(0.75, abs=0.04)


# -- end to end ---------------------------------------------------------------------------------------
def _site_frames():
    rng = np.random.default_rng(0)
    frames = {}
    for name, p_a, mean in (("north", 0.9, 20.0), ("south", 0.1, 60.0), ("east", 0.5, 40.0)):
        n = 300
        frames[name] = pd.DataFrame({
            "kind": np.where(rng.random(n) < p_a, "a", "b"),
            "value": np.round(rng.normal(mean, 5.0, n), 1),
            "flag": np.where(rng.random(n) < 0.5, "yes", "no"),
        })
    return frames


SCHEMA = TableSchema((ColumnSpec("kind", "categorical", categories=("a", "b")),
                      ColumnSpec("value", "numerical", subtype="float", lower=0.0, upper=100.0, precision=1),
                      ColumnSpec("flag", "categorical", categories=("no", "yes"))))


@pytest.fixture(scope="module")
def non_dp_model():
    return fedtab.FederatedSynthesizer("ctgan", schema=SCHEMA, rounds=2, local_epochs=1.0, batch_size=100, seed=3,
                                       site_column="site", site_policy=non_dp_policy()).fit(_site_frames())


def test_sampled_rows_are_labelled_and_calibrated_per_site(non_dp_model):
    df = non_dp_model.sample(900, seed=0, quantile_map=True)
    assert list(df.columns) == ["kind", "value", "flag", "site"]
    assert df["site"].value_counts().to_dict() == {"north": 300, "south": 300, "east": 300}
    share_a = df.groupby("site")["kind"].apply(lambda s: (s == "a").mean())
    for site, drawn_with in (("north", 0.9), ("south", 0.1)):
        kind = {c.spec.name: c for c in non_dp_model.transformer_.site_columns_[site]}["kind"]
        own = float(kind.frequencies_[kind.labels.index("a")])  # the site's training rows (exact without DP)
        assert own == pytest.approx(drawn_with, abs=0.08)
        assert share_a[site] == pytest.approx(own, abs=0.04)  # each site's own share, not the union's ~0.5
    means = df.groupby("site")["value"].mean()
    assert means["north"] == pytest.approx(20.0, abs=2.0) and means["south"] == pytest.approx(60.0, abs=2.0)


def test_each_site_scores_the_rows_labelled_with_its_name(non_dp_model):
    frames = _site_frames()
    synthetic = non_dp_model.sample(600, seed=1, quantile_map=True)
    # Each site draws the same table itself (same model, rows, seed) and scores the rows labelled with it.
    ev = fedtab.evaluate(non_dp_model, frames, n=600, seed=1, quantile_map=True, policy=lenient_policy_file())
    for name in frames:
        site = ev.site_local[name].evaluation.sites[name]
        assert site.n_synthetic == int((synthetic["site"] == name).sum())
        assert "site" not in {m.column for m in site.marginals}  # the site column is left out of its figures


def test_the_model_file_keeps_the_site_marginals(non_dp_model, tmp_path):
    path = non_dp_model.save(tmp_path / "m.fedtab")
    loaded = fedtab.load(path)
    assert loaded.site_column == "site"
    assert set(loaded.transformer_.site_columns_) == {"north", "south", "east"}
    pd.testing.assert_frame_equal(loaded.sample(300, seed=5), non_dp_model.sample(300, seed=5))


def test_a_site_table_that_already_has_the_site_column_is_refused():
    frames = _site_frames()
    frames["east"] = frames["east"].assign(site="x")
    synth = fedtab.FederatedSynthesizer("ctgan", schema=SCHEMA, rounds=1, batch_size=100, site_column="site",
                                        site_policy=non_dp_policy())
    with pytest.raises(ConfigError, match="site 'east'.*already has a column 'site'"):
        synth.fit(frames)


def test_dp_site_shares_shrink_towards_the_union_within_the_noise():
    from fedtab.transform.categorical import CategoricalColumnTransformer
    from fedtab.transform.plan import F_CATEGORIES, F_COUNTS, F_MISSING, F_OTHER, wire_key
    from fedtab.transform.table import _site_categorical

    spec = ColumnSpec("c", "categorical", nullable=False, categories=("a", "b", "c"))
    union = CategoricalColumnTransformer(spec).fit_from_counts(["a", "b", "c"], [50.0, 30.0, 20.0], other=False)

    def release(counts):
        return {wire_key("c", F_COUNTS): np.array(counts), wire_key("c", F_CATEGORIES): ["a", "b", "c"],
                wire_key("c", F_OTHER): 0, wire_key("c", F_MISSING): 0.0}

    near = _site_categorical(union, release([140.0, 100.0, 60.0]), rows=300, noise_sd=10.0).frequencies_
    far = _site_categorical(union, release([15.0, 15.0, 270.0]), rows=300, noise_sd=10.0).frequencies_
    assert np.allclose(near, union.frequencies_)  # |d|^2 = 200 < 3 sigma^2 = 300: within the noise
    assert far[2] > 0.85  # a departure far beyond the noise is kept (shrunk a little)
    exact = _site_categorical(union, release([15.0, 15.0, 270.0]), rows=300, noise_sd=0.0).frequencies_
    assert np.allclose(exact, [0.05, 0.05, 0.9])  # without noise: the site's own shares


def test_the_run_configuration_names_the_site_column(tmp_path):
    from fedtab.config import config_from_dict

    base = {"sites": {"a": {"source": "a.csv"}}}
    assert config_from_dict({**base, "site_column": "hospital"}).site_column == "hospital"
    assert config_from_dict(base).site_column is None
    with pytest.raises(ConfigError, match="'site_column' must be a column name"):
        config_from_dict({**base, "site_column": 3})


def test_site_calibration_draws_more_candidates_within_a_cap(non_dp_model, monkeypatch):
    import fedtab.api as api

    assert non_dp_model._candidates(100) == api.SITE_CALIBRATION_OVERSAMPLE * 100
    monkeypatch.setattr(api, "MAX_CANDIDATES", 1000)
    assert non_dp_model._candidates(100) == 1000
    assert non_dp_model._candidates(1000) == api.CALIBRATION_OVERSAMPLE * 1000  # never fewer than without a site column


@pytest.mark.slow
def test_flower_simulation_gives_the_same_site_conditioned_model():
    # Without DP: under DP each run's noise is secret, so no two runs (on any transport) match.
    kw = dict(schema=SCHEMA, rounds=2, local_epochs=1.0, batch_size=100, seed=4, site_column="site",
              site_policy=non_dp_policy())
    a = fedtab.FederatedSynthesizer("ctgan", transport="inprocess", **kw).fit(_site_frames())
    b = fedtab.FederatedSynthesizer("ctgan", transport="flower", **kw).fit(_site_frames())
    assert all(np.array_equal(a.weights_[k], b.weights_[k]) for k in a.weights_)
    assert a.sample(200, seed=1).equals(b.sample(200, seed=1))
    assert set(a.sample(200, seed=1)["site"]) == {"north", "south", "east"}


def test_sites_read_from_files_get_the_site_column_too(tmp_path):
    paths = {}
    for name, frame in _site_frames().items():
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    synth = fedtab.FederatedSynthesizer("ctgan", schema=SCHEMA, rounds=1, batch_size=100, seed=0, site_column="site",
                                        site_policy=non_dp_policy()).fit({k: str(p) for k, p in paths.items()})
    assert set(synth.sample(90, seed=0)["site"]) == {"north", "south", "east"}


def test_the_report_says_which_synthetic_rows_each_site_scored(non_dp_model, tmp_path):
    from evaluation.report import _figures_html

    ev = fedtab.evaluate(non_dp_model, _site_frames(), n=300, seed=0, policy=lenient_policy_file())
    local = ev.site_local["north"].evaluation  # the site's own report
    assert local.sites["north"].synthetic_rows == "site = north"
    html = _figures_html(local)
    assert "synthetic rows scored" in html and "site = north" in html
    html = _figures_html(ev.site_local["south"].evaluation)
    assert "synthetic rows scored" in html and "site = south" in html


def test_a_pinned_span_alone_is_the_drawn_condition():
    spans = [SpanInfo(1, "tanh"), SpanInfo(2, "softmax", "site")]
    cond = Conditions(spans, [ConditionSpan("site", 1, 2, np.array([0.5, 0.5]), pinned=True)])
    cond.pin(1)
    batch = cond.from_frequencies(50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.category, batch.site) and (batch.site == 1).all()
    assert cond.hot(batch).dim() == 1 and torch.equal(batch.vector.sum(1), torch.ones(50))


def test_a_site_read_as_almost_no_rows_is_floored_at_its_count_s_noise():
    """A site's weight and share of the sampled rows: its row count read off its histograms, but under
    DP never below that estimate's noise sd (at epsilon 0.05 a 242-row hospital read as 1 row and its
    evaluation stopped on a table with one row labelled with it). Exact counts are kept as they are."""
    from fedtab.transform import EncodingDP, EncodingPlan
    from fedtab.transform.plan import F_COUNTS, F_MISSING, wire_key
    from fedtab.transform.statistics import histogram_rows, site_rows

    schema = TableSchema((ColumnSpec("kind", "categorical", categories=("a", "b", "c")),
                          ColumnSpec("flag", "boolean")))

    def release(per_cell):
        return {**{wire_key(c, F_COUNTS): np.full(k, per_cell) for c, k in (("kind", 3), ("flag", 2))},
                **{wire_key(c, F_MISSING): 0.0 for c in ("kind", "flag")}}

    dp = EncodingPlan(schema, dp=EncodingDP(epsilon=0.05, delta=1e-5))
    sd = dp.noise_multiplier / np.sqrt(1 / 4 + 1 / 3)
    assert sd > 100
    assert histogram_rows(dp, release(0.3)) == pytest.approx((0.9 / 4 + 0.6 / 3) / (1 / 4 + 1 / 3))  # inverse-variance
    assert site_rows(dp, release(0.3)) == pytest.approx(sd)
    assert site_rows(dp, release(1000.0)) == pytest.approx(histogram_rows(dp, release(1000.0)))
    exact = EncodingPlan(schema)
    assert site_rows(exact, release(0.3)) == 1.0
    assert site_rows(exact, release(5.0)) == pytest.approx(histogram_rows(exact, release(5.0)))

"""Acceptance: federated encoding of real tables (Heart: 4 real hospitals; Adult: 4 sites by age quartile).

TVD figure: ``binned_tvd`` (tests/test_transform_data.py) = total-variation distance between the
histograms of two columns, one cell per distinct value when a column has <= 50 of them, else 50
equal cells over the original column's range, missing values as their own cell.
"""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedtab.errors import PrivacyBudgetError
from fedtab.privacy import PrivacyLedger
from fedtab.privacy.accountant import RDP_ORDERS
from fedtab.transform import EncodingDP, fit_federated
from fedtab.transform.plan import ROUNDING_NOISE_FACTOR
from tests.test_transform_data import (
    ADULT_SCHEMA, HEART_SCHEMA, adult_table, binned_tvd, heart_table, split_adult, split_heart,
)

TVD_TOLERANCE = 0.02
DP_PRE = EncodingDP(epsilon=0.1, delta=1e-5)

CASES = {"heart": (heart_table, split_heart, HEART_SCHEMA), "adult": (adult_table, split_adult, ADULT_SCHEMA)}


@pytest.fixture(scope="module", params=sorted(CASES))
def non_dp(request):
    load, split, schema = CASES[request.param]
    table = load()
    sites = split(table)
    ledgers = {s: PrivacyLedger(s, epsilon_budget=None) for s in sites}
    federated = fit_federated(sites, schema, ledgers=ledgers)
    pooled = fit_federated({"pooled": table}, schema)
    return table, schema, federated, pooled, ledgers


def _same_categories(a: pd.Series, b: pd.Series) -> bool:
    return a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist()


def test_non_dp_round_trip_keeps_categories_and_numeric_distributions(non_dp):
    table, schema, federated, _, ledgers = non_dp
    back = federated.inverse_transform(federated.transform(table))
    assert list(back.columns) == schema.names
    for spec in schema.columns:
        if spec.type == "numerical":
            assert binned_tvd(table[spec.name], back[spec.name]) <= TVD_TOLERANCE, spec.name
            assert str(back[spec.name].dtype) == str(table[spec.name].dtype)
        else:
            assert _same_categories(table[spec.name], back[spec.name]), spec.name
    assert all(math.isinf(l.epsilon) and all(e.mechanism == "exact" for e in l.entries) for l in ledgers.values())


def test_federated_fit_matches_a_fit_on_the_pooled_table(non_dp):
    table, schema, federated, pooled, _ = non_dp
    fed_back = federated.inverse_transform(federated.transform(table))
    pooled_back = pooled.inverse_transform(pooled.transform(table))
    assert federated.spans == pooled.spans
    for f, p in zip(federated.columns_, pooled.columns_):
        if hasattr(f, "means_"):  # merged histograms equal the pooled one, so the mixtures agree
            assert np.allclose(f.means_, p.means_) and np.allclose(f.weights_, p.weights_)
        else:
            assert f.categories_ == p.categories_ and np.allclose(f.frequencies_, p.frequencies_)
    for spec in schema.columns:
        if spec.type == "numerical":
            assert binned_tvd(pooled_back[spec.name], fed_back[spec.name]) <= TVD_TOLERANCE, spec.name
        else:
            assert _same_categories(pooled_back[spec.name], fed_back[spec.name])


@pytest.fixture(scope="module")
def adult_dp():
    table = adult_table()
    sites = split_adult(table)
    ledgers = {s: PrivacyLedger(s, epsilon_budget=DP_PRE.epsilon, delta=DP_PRE.delta) for s in sites}
    return table, sites, ledgers, fit_federated(sites, ADULT_SCHEMA, dp=DP_PRE, ledgers=ledgers, seed=3)


def test_dp_fit_at_epsilon_0_1_encodes_and_decodes(adult_dp):
    table, _, _, tt = adult_dp
    x = tt.transform(table)
    back = tt.inverse_transform(x)
    assert x.shape == (len(table), tt.output_dim) and np.isfinite(x).all()
    assert list(back.columns) == ADULT_SCHEMA.names and len(back) == len(table)
    for col in tt.columns_:
        if hasattr(col, "means_"):  # decoded values stay inside the (DP) bounds
            v = back[col.spec.name].astype("float64")
            assert v.min() >= col.lower_ and v.max() <= col.upper_


def test_categories_below_the_threshold_at_every_site_are_absent(adult_dp):
    _, sites, _, tt = adult_dp
    plan = tt.plan_
    margin = 3 * plan.noise_multiplier  # a category this rare passes with probability < 0.14% per site
    n_rare = 0
    for col in tt.columns_:
        if not hasattr(col, "categories_") or col.spec.categories is not None:
            continue
        per_site = pd.DataFrame({s: df[col.spec.name].value_counts() for s, df in sites.items()}).fillna(0)
        rare = per_site.index[per_site.max(axis=1) < plan.threshold - margin]
        assert not set(rare) & set(col.categories_), col.spec.name
        assert col.has_other_
        n_rare += len(rare)
    assert n_rare > 30  # e.g. most occupations and countries: each site holds only ~1,500 rows
    # A real example: each hospital's own name is held by that hospital only (123..303 rows) and the
    # threshold at epsilon 0.1 is more than 3 noise sds above that (release chance < 0.2% per site).
    heart = heart_table()
    # Numerical bounds declared (public): at epsilon 0.1 no magnitude cell of the hospitals' summed counts
    # stands 4 noise sds above the noise, and a column without them is refused (test_secagg).
    bounded = dataclasses.replace(HEART_SCHEMA, columns=tuple(
        dataclasses.replace(c, lower=float(heart[c.name].min()), upper=float(heart[c.name].max()))
        if c.type == "numerical" and c.lower is None else c for c in HEART_SCHEMA.columns))
    th = fit_federated(split_heart(heart), bounded, dp=DP_PRE)
    site_col = th.columns_[[c.spec.name for c in th.columns_].index("site")]
    assert heart["site"].value_counts().max() < th.plan_.threshold - 3 * th.plan_.noise_multiplier
    assert site_col.categories_ == [] and site_col.has_other_
    assert set(th.inverse_transform(th.transform(heart))["site"]) == {"<other>"}


def test_frequent_categories_survive_when_the_budget_allows():
    table = adult_table()
    sites = split_adult(table)
    tt = fit_federated(sites, ADULT_SCHEMA, dp=EncodingDP(epsilon=4.0, delta=1e-5), seed=1)
    plan = tt.plan_
    for col in tt.columns_:
        if hasattr(col, "categories_"):
            per_site = pd.DataFrame({s: df[col.spec.name].value_counts() for s, df in sites.items()}).fillna(0)
            surely = per_site.index[per_site.max(axis=1) > plan.threshold + 5 * plan.noise_multiplier]
            never = per_site.index[per_site.max(axis=1) < plan.threshold - 5 * plan.noise_multiplier]
            assert set(surely) <= set(col.categories_) and not set(never) & set(col.categories_)
    assert len(tt.columns_[ADULT_SCHEMA.names.index("education")].categories_) >= 4


def test_ledger_epsilon_equals_an_independent_accountant_computation(adult_dp):
    _, _, ledgers, tt = adult_dp
    plan = tt.plan_
    releases, profiles = plan.releases(), len(plan.rounding_columns())
    assert profiles > 0  # Adult's age, fnlwgt, capital gain and loss, hours per week
    extra_delta = plan.threshold_delta * len(plan.threshold_columns())
    orders = list(RDP_ORDERS)
    rdp = opacus_rdp.compute_rdp(q=1.0, noise_multiplier=plan.noise_multiplier, steps=releases, orders=orders) \
        + opacus_rdp.compute_rdp(q=1.0, noise_multiplier=plan.noise_multiplier * ROUNDING_NOISE_FACTOR, steps=profiles,
                                 orders=orders)
    expected, _ = opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=DP_PRE.delta - extra_delta)
    for site, ledger in ledgers.items():
        assert len(ledger.entries) == releases + profiles
        assert ledger.epsilon == pytest.approx(expected, rel=1e-9), site
        assert ledger.epsilon <= DP_PRE.epsilon
        assert ledger.delta_spent == pytest.approx(extra_delta)


def test_a_site_without_enough_budget_refuses_before_releasing():
    table = heart_table()
    sites = split_heart(table)
    ledgers = {s: PrivacyLedger(s, epsilon_budget=0.1, delta=1e-5) for s in sites}
    ledgers["hungary"].spend(phase="earlier", mechanism="gaussian", noise_multiplier=50.0)
    with pytest.raises(PrivacyBudgetError, match="Site 'hungary': phase 'encoding/domain'"):
        fit_federated(sites, HEART_SCHEMA, dp=DP_PRE, ledgers=ledgers)
    assert len(ledgers["hungary"].entries) == 1

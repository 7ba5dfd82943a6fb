"""Ledger and accountant: epsilon equals Opacus' own computation, refusals record nothing, calibration is tight."""

import json
import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from fedtab.errors import ConfigError, PrivacyBudgetError
from fedtab.privacy import (
    GaussianEvent, PrivacyLedger, calibrate_noise_multiplier, compose_epsilon, noise_multiplier_for,
)
from fedtab.privacy.accountant import RDP_ORDERS, orders_for


def _opacus_curve(z, q, s):
    used = orders_for(q)  # orders not evaluated for an event count as infinite RDP
    values = dict(zip(used, opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=s, orders=list(used))))
    return np.array([values.get(o, np.inf) for o in RDP_ORDERS])


def opacus_epsilon(history, delta):
    """Independent computation straight from Opacus' RDP analysis functions."""
    rdp = sum(_opacus_curve(z, q, s) for z, q, s in history)
    return opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0]


def test_ledger_epsilon_equals_opacus_composition():
    ledger = PrivacyLedger("cleveland", epsilon_budget=5.0, delta=1e-5)
    ledger.spend(phase="encoding/domain", mechanism="thresholded_gaussian", noise_multiplier=20.0, delta_cost=2e-6)
    ledger.spend(phase="encoding/histogram", mechanism="gaussian", noise_multiplier=20.0)
    ledger.spend(phase="training", mechanism="subsampled_gaussian", noise_multiplier=1.1, sample_rate=0.02, steps=300)
    expected = opacus_epsilon([(20.0, 1.0, 1), (20.0, 1.0, 1), (1.1, 0.02, 300)], 1e-5 - 2e-6)
    assert ledger.epsilon == pytest.approx(expected, rel=1e-12)
    assert ledger.entries[-1].epsilon_after == pytest.approx(expected, rel=1e-12)
    # Opacus' own RDPAccountant (default orders, fractional ones included for the DP-SGD steps) agrees
    # within 1%: skipping fractional orders for subsampled steps only loosens the bound slightly.
    acc = RDPAccountant()
    acc.history = [(20.0, 1.0, 1), (20.0, 1.0, 1), (1.1, 0.02, 300)]
    reference = acc.get_epsilon(delta=1e-5 - 2e-6)
    assert reference <= expected <= reference * 1.01


def test_refused_spend_records_nothing_and_says_why():
    ledger = PrivacyLedger("hungary", epsilon_budget=0.5, delta=1e-5)
    ledger.spend(phase="encoding/histogram", mechanism="gaussian", noise_multiplier=20.0)
    before = (ledger.entries, ledger.epsilon)
    with pytest.raises(PrivacyBudgetError) as err:
        ledger.spend(phase="training", mechanism="subsampled_gaussian", noise_multiplier=0.8, sample_rate=0.1,
                     steps=1000)
    text = str(err.value)
    assert "hungary" in text and "'training'" in text and "budget 0.5" in text and "Nothing was released" in text
    would = float(text.split("would take epsilon to ")[1].split()[0])
    assert would > 0.5
    assert (ledger.entries, ledger.epsilon) == before


def test_non_dp_ledger_records_exact_releases_and_never_raises():
    ledger = PrivacyLedger("va", epsilon_budget=None)
    assert ledger.epsilon == 0.0
    ledger.spend(phase="encoding/domain", mechanism="exact", noise_multiplier=1.0, target="age")
    assert math.isinf(ledger.epsilon) and ledger.entries[0].noise_multiplier == 0.0
    dp = PrivacyLedger("va", epsilon_budget=10.0, delta=1e-5)
    with pytest.raises(PrivacyBudgetError, match="infinite epsilon"):
        dp.spend(phase="encoding/domain", mechanism="exact", noise_multiplier=0.0)
    assert dp.entries == ()


def test_ledger_round_trips_through_json():
    ledger = PrivacyLedger("switzerland", epsilon_budget=1.0, delta=1e-6)
    ledger.spend(phase="encoding/histogram", mechanism="gaussian", noise_multiplier=30.0, target="chol")
    again = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.entries == ledger.entries and again.epsilon == ledger.epsilon
    nondp = PrivacyLedger("x", epsilon_budget=None)
    nondp.spend(phase="p", mechanism="exact", noise_multiplier=0.0, sensitivity=math.inf)
    text = json.dumps(nondp.to_dict(), allow_nan=False)  # strict JSON: infinities are written as strings
    assert math.isinf(PrivacyLedger.from_dict(json.loads(text)).entries[0].sensitivity)


def test_calibrate_noise_multiplier_is_the_smallest_within_target():
    ledger = PrivacyLedger("site", epsilon_budget=3.0, delta=1e-5)
    ledger.spend(phase="encoding/histogram", mechanism="gaussian", noise_multiplier=15.0, steps=10)
    z = calibrate_noise_multiplier(ledger=ledger, sample_rate=0.01, steps=2000, target_epsilon=2.0)
    prior = ledger.events()
    reach = lambda m: compose_epsilon(prior + (GaussianEvent(m, 0.01, 2000),), delta=1e-5)  # noqa: E731
    assert reach(z) <= 2.0 < reach(0.99 * z)
    ledger.spend(phase="training", mechanism="subsampled_gaussian", noise_multiplier=z, sample_rate=0.01, steps=2000)
    assert ledger.epsilon <= 2.0
    with pytest.raises(ConfigError, match="exceeds site 'site''s budget"):
        calibrate_noise_multiplier(ledger=ledger, sample_rate=0.01, steps=10, target_epsilon=4.0)
    with pytest.raises(PrivacyBudgetError):
        noise_multiplier_for(target_epsilon=0.1, delta=1e-5, sample_rate=1.0, steps=1, prior=prior)


def test_bad_ledger_parameters():
    with pytest.raises(ConfigError, match="'epsilon_budget'"):
        PrivacyLedger("s", epsilon_budget=-1.0, delta=1e-5)
    with pytest.raises(ConfigError, match="'delta'"):
        PrivacyLedger("s", epsilon_budget=1.0)
    with pytest.raises(ConfigError, match="'mechanism'"):
        PrivacyLedger("s", epsilon_budget=None).spend(phase="p", mechanism="laplace", noise_multiplier=1.0)

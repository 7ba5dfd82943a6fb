"""Noise mechanisms: calibration meets its guarantee, the secret noise has the stated scale and no seed
replays it, thresholds hold."""

import numpy as np
import pytest
from scipy.stats import norm

from fedtab.errors import ConfigError
from fedtab.privacy.mechanisms import clip_counts, gaussian_delta, gaussian_sigma, laplace_scale, stability_threshold
from fedtab.privacy.secret import (
    SecretSource, _replace_source_for_tests, secret_source, seeded_sources_for_tests,
)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (1.0, 1e-6), (8.0, 1e-3)])
def test_gaussian_sigma_is_the_smallest_that_meets_delta(epsilon, delta):
    sigma = gaussian_sigma(epsilon, delta, 2.0)
    assert gaussian_delta(sigma, epsilon=epsilon, sensitivity=2.0) <= delta
    assert gaussian_delta(0.99 * sigma, epsilon=epsilon, sensitivity=2.0) > delta


def test_analytic_sigma_beats_the_classic_bound_where_it_holds():
    classic = np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5
    assert gaussian_sigma(0.5, 1e-5, 1.0) < classic


def test_secret_noise_has_the_stated_scale_and_never_repeats():
    src = secret_source("test")
    g = src.normal(200_000) * 3.0
    assert abs(g.std() - 3.0) < 0.03 and abs(g.mean()) < 0.03
    u = src.uniform(200_000)
    assert 0.0 < u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    d = src.discrete_gaussian(np.zeros(20_000, dtype=np.int64), 4.0)
    assert d.dtype == np.int64 and abs(d.std() - 4.0) < 0.1 and abs(d.mean()) < 0.1
    # Two sources (and two draws of one source) never share a stream: no seed, no state to replay.
    assert not np.array_equal(secret_source("test").normal(8), secret_source("test").normal(8))
    assert not np.array_equal(src.normal(8), src.normal(8))
    assert laplace_scale(0.5, 1.0) == 2.0


def test_a_secret_source_cannot_be_serialised():
    import pickle

    with pytest.raises(TypeError, match="cannot be serialised"):
        pickle.dumps(SecretSource())


def test_discrete_gaussian_refuses_fractional_counts():
    with pytest.raises(ValueError, match="whole-number"):
        secret_source().discrete_gaussian(np.array([1.5]), 2.0)


def test_only_the_test_seam_makes_noise_replayable():
    with _replace_source_for_tests(seeded_sources_for_tests(7)):
        a = secret_source("site/encode/histogram").discrete_gaussian(np.zeros(10, dtype=np.int64), 5.0)
        b = secret_source("site/encode/histogram").discrete_gaussian(np.zeros(10, dtype=np.int64), 5.0)
    assert np.array_equal(a, b)
    assert isinstance(secret_source("x"), SecretSource) and secret_source("x").secret


def test_stability_threshold_releases_a_single_record_with_probability_delta():
    tau = stability_threshold(sigma=10.0, delta=1e-3)
    assert tau == pytest.approx(1 + 10.0 * norm.isf(1e-3))
    noisy = 1.0 + np.random.default_rng(0).normal(0, 10.0, 1_000_000)
    assert (noisy > tau).mean() == pytest.approx(1e-3, rel=0.15)


def test_bad_parameters_are_refused_with_the_house_message():
    with pytest.raises(ConfigError, match=r"The 'sigma' parameter of stability_threshold must be a float in \(0, inf\)"):
        stability_threshold(sigma=-1, delta=1e-5)
    with pytest.raises(ConfigError, match="'delta'"):
        gaussian_sigma(1.0, 1.5, 1.0)
    assert clip_counts([-2.0, 3.0]).tolist() == [0.0, 3.0]

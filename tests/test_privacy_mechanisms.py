"""Noise mechanisms: calibration meets its guarantee, noise has the stated scale, thresholds hold."""

import numpy as np
import pytest
from scipy.stats import norm

from fedtab.errors import ConfigError
from fedtab.privacy.mechanisms import (
    clip_counts, gaussian_delta, gaussian_noise, gaussian_sigma, laplace_noise, laplace_scale, stability_threshold,
)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (1.0, 1e-6), (8.0, 1e-3)])
def test_gaussian_sigma_is_the_smallest_that_meets_delta(epsilon, delta):
    sigma = gaussian_sigma(epsilon, delta, 2.0)
    assert gaussian_delta(sigma, epsilon=epsilon, sensitivity=2.0) <= delta
    assert gaussian_delta(0.99 * sigma, epsilon=epsilon, sensitivity=2.0) > delta


def test_analytic_sigma_beats_the_classic_bound_where_it_holds():
    classic = np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5
    assert gaussian_sigma(0.5, 1e-5, 1.0) < classic


def test_noise_has_the_stated_scale_and_is_reproducible():
    zeros = np.zeros(200_000)
    g = gaussian_noise(zeros, sigma=3.0, rng=np.random.default_rng(1))
    lap = laplace_noise(zeros, scale=2.0, rng=np.random.default_rng(1))
    assert abs(g.std() - 3.0) < 0.03 and abs(g.mean()) < 0.03
    assert abs(np.abs(lap).mean() - 2.0) < 0.03  # E|Laplace(b)| = b
    assert np.array_equal(g, gaussian_noise(zeros, sigma=3.0, rng=np.random.default_rng(1)))
    assert laplace_scale(0.5, 1.0) == 2.0


def test_stability_threshold_releases_a_single_record_with_probability_delta():
    tau = stability_threshold(sigma=10.0, delta=1e-3)
    assert tau == pytest.approx(1 + 10.0 * norm.isf(1e-3))
    noisy = 1.0 + np.random.default_rng(0).normal(0, 10.0, 1_000_000)
    assert (noisy > tau).mean() == pytest.approx(1e-3, rel=0.15)


def test_bad_parameters_are_refused_with_the_house_message():
    with pytest.raises(ConfigError, match=r"The 'sigma' parameter of gaussian_noise must be a float in \(0, inf\)"):
        gaussian_noise([1.0], sigma=-1, rng=np.random.default_rng())
    with pytest.raises(ConfigError, match="'delta'"):
        gaussian_sigma(1.0, 1.5, 1.0)
    assert clip_counts([-2.0, 3.0]).tolist() == [0.0, 3.0]

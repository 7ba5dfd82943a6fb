"""Privacy: noise mechanisms (pure), the accountant, the per-site ledger, noise calibration."""

from fedtab.privacy.accountant import (
    GaussianEvent, calibrate_noise_multiplier, compose_epsilon, noise_multiplier_for,
)
from fedtab.privacy.ledger import LedgerEntry, PrivacyLedger
from fedtab.privacy.mechanisms import (
    gaussian_noise, gaussian_sigma, laplace_noise, laplace_scale, stability_threshold,
)

__all__ = [
    "GaussianEvent", "LedgerEntry", "PrivacyLedger", "calibrate_noise_multiplier", "compose_epsilon",
    "gaussian_noise", "gaussian_sigma", "laplace_noise", "laplace_scale", "noise_multiplier_for",
    "stability_threshold",
]

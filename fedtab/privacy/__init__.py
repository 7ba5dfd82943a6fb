"""Privacy: secret noise (one seam), noise calibration (pure), the accountant, the per-site ledger."""

from fedtab.privacy.accountant import (
    GaussianEvent, calibrate_noise_multiplier, compose_epsilon, noise_multiplier_for,
)
from fedtab.privacy.ledger import LedgerEntry, PrivacyLedger
from fedtab.privacy.mechanisms import gaussian_sigma, laplace_scale, stability_threshold
from fedtab.privacy.secret import SecretSource, secret_source

__all__ = [
    "GaussianEvent", "LedgerEntry", "PrivacyLedger", "SecretSource", "calibrate_noise_multiplier",
    "compose_epsilon", "gaussian_sigma", "laplace_scale", "noise_multiplier_for", "secret_source",
    "stability_threshold",
]

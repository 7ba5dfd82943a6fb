"""Checks that every model's unit tests share: it learns the toy marginals in the one training loop,
and DP training clips every real row (on the toy data set of ``tests.test_models_ctgan.make_dataset``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtab.privacy.dpsgd import DPSGDConfig
from fedtab.training.loop import LocalTrainer
from tests.test_models_ctgan import make_dataset


def check_learns_the_marginals(model, *, steps: int, category_tolerance: float, **trainer_options) -> None:
    data, _, _ = make_dataset(2000)
    trainer = LocalTrainer(model, data, batch_size=100, seed=0, **trainer_options)
    first = trainer.train(20).private_loss
    last = trainer.train(steps).private_loss
    assert last < first
    rows = model.sample(4000, generator=torch.Generator().manual_seed(2))
    assert abs(rows[:, 4].mean() - data[:, 4].mean()) < category_tolerance  # 20% category of column a
    assert np.abs(rows[:, 5:8].mean(0) - data[:, 5:8].mean(0)).max() < 0.08


def check_dp_clips_every_real_row(model) -> None:
    """The expected batch is the Poisson sample of real rows only: generated rows spend no budget."""
    data, _, _ = make_dataset(1000)
    dp = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=0.1, sample_rate=0.05)
    trainer = LocalTrainer(model, data, batch_size=50, dp=dp, seed=0)
    assert trainer._private.optimizer.expected_batch_size == pytest.approx(50)
    trainer.train(3)
    norms = trainer._private.per_sample_norms()
    assert norms.numel() > 0 and torch.all(norms > 0)
    assert all(torch.isfinite(v).all() for v in trainer.get_weights().values())

"""TVAE: config validation, spans respected, per-row separable loss, learning, DP-SGD through the one loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedtab.errors import ConfigError
from fedtab.models.registry import create_model
from fedtab.models.tvae import TVAE, TVAEConfig
from fedtab.training.loop import LocalTrainer, OptimizerConfig
from tests.model_checks import check_dp_clips_every_real_row, check_learns_the_marginals
from tests.test_models_ctgan import _one_thread, make_dataset  # noqa: F401

SMALL = TVAEConfig(embedding_dim=8, compress_dims=(32,), decompress_dims=(32,))


def built(seed: int = 0, config: TVAEConfig = SMALL) -> TVAE:
    _, spans, conds = make_dataset(10)
    return TVAE(config).build(spans, conds, seed=seed)


@pytest.mark.parametrize("kwargs", [dict(embedding_dim=0), dict(compress_dims=()), dict(decompress_dims=(8, -1)),
                                    dict(loss_factor=0.0), dict(min_sigma=1.5), dict(categorical="mode"),
                                    dict(learning_rate=0.0), dict(adam_betas=(0.9, 1.0)),
                                    dict(numeric_noise="yes")])
def test_config_rejects_bad_values_with_the_parameter_name(kwargs):
    with pytest.raises(ConfigError, match=list(kwargs)[0]):
        TVAEConfig(**kwargs)


def test_config_is_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        TVAEConfig(8)  # noqa
    with pytest.raises(AttributeError):
        SMALL.embedding_dim = 3  # type: ignore[misc]


def test_optimizer_options_carry_the_configured_adam_settings():
    opts = TVAE(TVAEConfig(learning_rate=3e-3, adam_betas=(0.8, 0.99))).optimizer_options()
    assert opts == {"private_lr": 3e-3, "public_lr": 3e-3, "betas": (0.8, 0.99)}
    # every key is a field the training loop's optimizer config knows
    assert set(opts) <= {f.name for f in dataclasses.fields(OptimizerConfig)}


def test_registered_unconditional_and_private_only():
    model = create_model("tvae", SMALL).build(make_dataset(10)[1], make_dataset(10)[2], seed=0)
    assert isinstance(model, TVAE)
    assert model.public_network() is None and model.conditions.n_columns == 0
    assert set(model.networks()) == {"vae"}


@pytest.mark.parametrize("categorical", ["sample", "argmax"])
def test_samples_respect_spans(categorical):
    model = built(config=TVAEConfig(embedding_dim=8, compress_dims=(32,), decompress_dims=(32,), categorical=categorical))
    rows = model.sample(500, generator=torch.Generator().manual_seed(1))
    assert rows.shape == (500, 8) and rows.dtype == np.float32
    assert np.all(np.abs(rows[:, 0]) <= 1.0)
    for off, dim in [(1, 2), (3, 2), (5, 3)]:
        block = rows[:, off: off + dim]
        assert set(np.unique(block)) <= {0.0, 1.0} and np.all(block.sum(axis=1) == 1.0)


def test_loss_of_a_row_does_not_depend_on_the_other_rows():
    data, _, _ = make_dataset(64)
    model, x = built(), torch.from_numpy(data)
    empty = model.conditions.empty(64)
    full = model.private_losses(x, empty, None, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(full[5], list(model.vae_.parameters()))
    # Changing other rows changes neither row 5's loss nor its gradient (same noise stream: same draws).
    y = x.clone()
    y[:5] = 1.0 - y[:5]
    again = model.private_losses(y, empty, None, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(full[5], again[5])
    assert full.shape == (64,) and torch.all(torch.isfinite(full))
    assert all(torch.isfinite(g).all() for g in grads)


def test_learns_the_marginals_in_the_one_loop():
    model = built(config=TVAEConfig(embedding_dim=16, compress_dims=(64,), decompress_dims=(64,)))
    check_learns_the_marginals(model, steps=250, category_tolerance=0.06)


def test_dp_training_clips_every_row_and_spends_no_fake_rows():
    # TVAE has no generated rows at all.
    check_dp_clips_every_real_row(built())


def test_same_seed_same_weights_and_samples():
    data, _, _ = make_dataset(500)
    out = []
    for _ in range(2):
        t = LocalTrainer(built(), data, batch_size=50, seed=4)
        t.train(5)
        out.append(t.model.sample(100, generator=torch.Generator().manual_seed(0)))
    assert np.array_equal(out[0], out[1])

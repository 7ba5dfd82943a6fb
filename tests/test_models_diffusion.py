"""Diffusion: config, schedule, strided sampler, spans respected, per-row loss, learning, DP-SGD in the one loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtab.errors import ConfigError
from fedtab.models.diffusion import DiffusionConfig, TabDiffusion, alpha_bars
from fedtab.models.registry import create_model
from fedtab.training.loop import OptimizerConfig
from fedtab.transform.spans import SpanInfo
from tests.model_checks import check_dp_clips_every_real_row, check_learns_the_marginals
from tests.test_models_ctgan import _one_thread, make_dataset  # noqa: F401

SMALL = DiffusionConfig(timesteps=100, sampling_steps=20, hidden_dims=(64, 64), time_embedding_dim=16)


def built(seed: int = 0, config: DiffusionConfig = SMALL) -> TabDiffusion:
    _, spans, conds = make_dataset(10)
    return TabDiffusion(config).build(spans, conds, seed=seed)


@pytest.mark.parametrize("kwargs,name", [
    (dict(timesteps=1), "timesteps"), (dict(sampling_steps=0), "sampling_steps"),
    (dict(timesteps=10, sampling_steps=20), "sampling_steps"), (dict(hidden_dims=(0,)), "hidden_dims"),
    (dict(schedule="quadratic"), "schedule"), (dict(numeric_scale=-1.0), "numeric_scale"),
    (dict(eta=2.0), "eta"), (dict(time_embedding_dim=15), "time_embedding_dim"), (dict(ce_weight=-1.0), "ce_weight"),
    (dict(learning_rate=-1e-3), "learning_rate"), (dict(adam_betas=(1.5, 0.9)), "adam_betas")])
def test_config_rejects_bad_values_with_the_parameter_name(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        DiffusionConfig(**kwargs)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_decreases_from_near_one_to_near_zero(schedule):
    abar = alpha_bars(1000, schedule)
    assert abar.shape == (1000,) and torch.all(abar[1:] < abar[:-1])
    assert abar[0] > 0.99 and abar[-1] < 1e-3


def test_sampler_strides_over_the_training_timesteps():
    model = built()
    ts = model.sampling_timesteps()
    assert len(ts) == 20 and ts[0] == 0 and ts[-1] == 99 and torch.all(ts[1:] > ts[:-1])


def test_registered_unconditional_and_private_only():
    _, spans, conds = make_dataset(10)
    model = create_model("diffusion", SMALL).build(spans, conds, seed=0)
    assert isinstance(model, TabDiffusion) and model.public_network() is None
    assert model.conditions.n_columns == 0 and set(model.networks()) == {"denoiser"}


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_respect_spans(eta):
    model = built(config=DiffusionConfig(timesteps=100, sampling_steps=10, hidden_dims=(32,),
                                         time_embedding_dim=16, eta=eta))
    rows = model.sample(700, generator=torch.Generator().manual_seed(1), chunk=256)  # several chunks
    assert rows.shape == (700, 8) and rows.dtype == np.float32
    assert np.all(np.abs(rows[:, 0]) <= 1.0)
    for off, dim in [(1, 2), (3, 2), (5, 3)]:
        block = rows[:, off: off + dim]
        assert set(np.unique(block)) <= {0.0, 1.0} and np.all(block.sum(axis=1) == 1.0)


def test_only_tanh_or_only_softmax_spans_work():
    for spans in ([SpanInfo(1, "tanh"), SpanInfo(1, "tanh")], [SpanInfo(3, "softmax"), SpanInfo(2, "softmax")]):
        model = TabDiffusion(SMALL).build(spans, [], seed=0)
        data = model.sample(50, generator=torch.Generator().manual_seed(0))
        losses = model.private_losses(torch.from_numpy(data), model.conditions.empty(50), None,
                                      generator=torch.Generator().manual_seed(1))
        assert losses.shape == (50,) and torch.all(torch.isfinite(losses)) and torch.all(losses >= 0)


def test_loss_of_a_row_does_not_depend_on_the_other_rows():
    data, _, _ = make_dataset(64)
    model, x = built(), torch.from_numpy(data)
    empty = model.conditions.empty(64)
    full = model.private_losses(x, empty, None, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:5] = 1.0 - y[:5]
    again = model.private_losses(y, empty, None, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(full[5:], again[5:])
    assert full.shape == (64,) and torch.all(torch.isfinite(full)) and torch.all(full >= 0)


def test_learns_the_marginals_in_the_one_loop():
    model = built(config=DiffusionConfig(timesteps=100, sampling_steps=25, hidden_dims=(64, 64), time_embedding_dim=16))
    check_learns_the_marginals(model, steps=300, category_tolerance=0.07, optimizer=OptimizerConfig(private_lr=2e-3))


def test_dp_training_clips_every_row_and_spends_no_fake_rows():
    check_dp_clips_every_real_row(built())


def test_same_seed_same_samples_other_seed_differs():
    model = built()
    a, b, c = (model.sample(200, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_conditioned_on_a_column_draws_it_from_the_agreed_frequencies_and_learns_the_rest_for_it():
    from fedtab.training.loop import LocalTrainer

    data, spans, conds = make_dataset(2000)
    b = data[:, 5:8].argmax(1)
    # Make column a depend on b: a = 1 for 80% of b = 2 rows, 5% of the others.
    rng = np.random.default_rng(1)
    a = (rng.random(len(b)) < np.where(b == 2, 0.8, 0.05)).astype(int)
    data[:, 3:5] = 0.0
    data[np.arange(len(a)), 3 + a] = 1.0
    cfg = DiffusionConfig(timesteps=100, sampling_steps=25, hidden_dims=(64, 64), time_embedding_dim=16,
                          condition_column="b")
    model = TabDiffusion(cfg).build(spans, conds, seed=0)
    rows = model.sample(4000, generator=torch.Generator().manual_seed(0))
    # Untrained: the condition already follows the agreed frequencies (0.5, 0.3, 0.2), exactly one-hot.
    assert np.abs(rows[:, 5:8].mean(0) - [0.5, 0.3, 0.2]).max() < 0.03 and np.all(rows[:, 5:8].sum(1) == 1)
    LocalTrainer(model, data, batch_size=100, seed=0, optimizer=OptimizerConfig(private_lr=2e-3)).train(400)
    rows = model.sample(4000, generator=torch.Generator().manual_seed(2))
    cond = rows[:, 5:8].argmax(1)
    share = [rows[cond == k, 4].mean() for k in range(3)]
    assert share[2] > 0.6 and max(share[0], share[1]) < 0.2, share
    # The clean condition is an input of the denoiser: another condition, another loss.
    x = torch.from_numpy(data[:64])
    flipped = x.clone()
    flipped[:, 5:8] = torch.roll(flipped[:, 5:8], 1, dims=1)
    empty = model.conditions.empty(64)
    loss = model.private_losses(x, empty, None, generator=torch.Generator().manual_seed(3))
    assert torch.all(torch.isfinite(loss)) and loss.shape == (64,)
    assert not torch.allclose(loss, model.private_losses(flipped, empty, None, generator=torch.Generator().manual_seed(3)))


def test_condition_column_must_be_a_categorical_column():
    _, spans, conds = make_dataset(10)
    with pytest.raises(ConfigError, match="'x' is not a categorical column.*'a', 'b'"):
        TabDiffusion(DiffusionConfig(condition_column="x")).build(spans, conds, seed=0)
    with pytest.raises(ConfigError, match="condition_column"):
        DiffusionConfig(condition_column="")

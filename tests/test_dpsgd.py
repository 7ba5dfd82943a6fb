"""DP-SGD wrapping: exact per-record clipping, noise scale, Poisson sampling, generator step isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedtab.errors import ConfigError
from fedtab.models.ctgan import Discriminator
from fedtab.privacy.secret import SeededSource, secret_source
from fedtab.privacy.dpsgd import DPSGDConfig, PrivateNetwork, poisson_sample
from fedtab.training.loop import LocalTrainer
from tests.test_models_ctgan import _one_thread, built, make_dataset  # noqa: F401


def _net(seed=0, width=16, in_dim=10):
    torch.manual_seed(seed)
    return Discriminator(in_dim, (width, width), slope=0.2, dropout=0.0)


def _clipped_reference(net, x, clip):
    """Sum over rows of each row's gradient clipped to norm ``clip``, one row at a time."""
    ref = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    norms = []
    for i in range(x.shape[0]):
        net.zero_grad()
        F.softplus(net(x[i : i + 1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        norms.append(norm.item())
        for n in ref:
            ref[n] += grads[n] * min(1.0, clip / (norm.item() + 1e-6))
    net.zero_grad(set_to_none=True)
    return ref, norms


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_optimizer_sees_exactly_the_clipped_per_row_sum_over_expected_batch(mode):
    net = _net()
    x = torch.randn(9, 10) * 4
    ref, norms = _clipped_reference(net, x, clip=0.3)
    assert sum(n > 0.3 for n in norms) >= 5  # most rows are really clipped
    cfg = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=0.3, sample_rate=0.1, grad_sample_mode=mode)
    private = PrivateNetwork(net, torch.optim.SGD(net.parameters(), lr=0.0), config=cfg,
                             expected_batch_size=4.5, noise_source=SeededSource(0))
    private.zero_grad()
    private.backward(F.softplus(net(x)))
    private.step()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n] / 4.5, rtol=1e-4, atol=1e-7)
    if mode == "ghost":
        np.testing.assert_allclose(private.per_sample_norms().numpy(), norms, rtol=1e-4)


def test_noise_std_is_noise_multiplier_times_clip_over_expected_batch():
    net = _net(width=256)
    cfg = DPSGDConfig(noise_multiplier=1.3, max_grad_norm=0.7, sample_rate=0.1)
    private = PrivateNetwork(net, torch.optim.SGD(net.parameters(), lr=0.0), config=cfg,
                             expected_batch_size=50.0, noise_source=secret_source("dp-sgd"))
    private.zero_grad()
    private.backward(0.0 * net(torch.randn(20, 10)))  # zero gradient: what remains is the noise
    private.step()
    grad = net.hidden[1].weight.grad
    assert abs(grad.mean().item()) < 1e-3 * 1.3 * 0.7
    assert grad.std().item() == pytest.approx(1.3 * 0.7 / 50.0, rel=0.02)


def test_poisson_sample_size_averages_q_times_n():
    g = secret_source("poisson")  # the production source: secret, so only its statistics are tested
    sizes = np.array([len(poisson_sample(1000, sample_rate=0.05, source=g)) for _ in range(2000)])
    assert sizes.mean() == pytest.approx(50.0, abs=4 * np.sqrt(1000 * 0.05 * 0.95 / 2000))
    assert sizes.std() == pytest.approx(np.sqrt(1000 * 0.05 * 0.95), rel=0.1)  # binomial, not fixed
    idx = poisson_sample(1000, sample_rate=0.05, source=g)
    assert torch.all(idx[1:] > idx[:-1])  # distinct rows


def test_public_phase_leaves_no_gradient_or_per_sample_state():
    net = _net()
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1)
    private = PrivateNetwork(net, torch.optim.SGD(net.parameters(), lr=0.1), config=cfg,
                             expected_batch_size=5.0, noise_source=SeededSource(0))
    private.zero_grad()
    private.backward(F.softplus(net(torch.randn(5, 10))))
    norms_before = [p._norm_sample.clone() for p in net.parameters()]
    fake = torch.randn(7, 10, requires_grad=True)
    with private.public_phase():
        F.softplus(-net(fake)).mean().backward()  # the generator's step goes through the network
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    for p, before in zip(net.parameters(), norms_before):
        assert torch.equal(p._norm_sample, before)  # no per-sample norms recorded for the 7 fake rows
        assert p.requires_grad
    private.step()  # still a well-formed DP step afterwards
    assert private.hooks.hooks_enabled


def test_trainer_under_dp_poisson_batch_and_expected_batch_size():
    data, spans, conds = make_dataset(2000)
    trainer = LocalTrainer(built(), data, batch_size=40, seed=0,
                           dp=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.02))
    stats = trainer.train(40)
    assert stats.sample_rate == 0.02
    assert stats.mean_real_rows == pytest.approx(40.0, abs=4 * np.sqrt(40 * 0.98 / 40))
    assert trainer._private.optimizer.expected_batch_size == pytest.approx(0.02 * 2000 + 40)
    weights = trainer.get_weights()
    assert not any("_module" in k for k in weights)
    assert set(weights) == set(built().state_dict())


def test_config_validation_names_the_parameter():
    with pytest.raises(ConfigError, match="'sample_rate' parameter of DPSGDConfig must be a float in \\(0, 1\\]"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.5)
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1, grad_sample_mode="ew")
    with pytest.raises(TypeError):
        DPSGDConfig(1.0, 1.0, 0.1)  # keyword-only

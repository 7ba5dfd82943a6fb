"""DP-SGD 'bk' (book-keeping) mode: exact per-row clipping in one backward, same noise path as Opacus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedtab.errors import ConfigError
from fedtab.privacy.secret import SeededSource, secret_source
from fedtab.privacy.dpsgd import DPSGDConfig, PrivateNetwork
from fedtab.training.loop import LocalTrainer
from tests.test_dpsgd import _clipped_reference, _net
from tests.test_models_ctgan import _one_thread, built, make_dataset  # noqa: F401


def _private(net, *, clip=0.3, noise=0.0, expected=4.5, mode="bk", lr=0.0):
    cfg = DPSGDConfig(noise_multiplier=noise, max_grad_norm=clip, sample_rate=0.1, grad_sample_mode=mode)
    return PrivateNetwork(net, torch.optim.SGD(net.parameters(), lr=lr), config=cfg, expected_batch_size=expected,
                          noise_source=SeededSource(0))


def test_bk_gives_the_clipped_per_row_sum_and_the_exact_norms():
    net = _net()
    x = torch.randn(9, 10) * 4
    _, norms = _clipped_reference(net, x, clip=1e9)
    clip = float(np.median(norms))  # about half the rows clipped, half not: both branches of the clip
    ref, _ = _clipped_reference(net, x, clip=clip)
    private = _private(net, clip=clip)
    private.zero_grad()
    private.backward(F.softplus(net(x)))
    private.step()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n] / 4.5, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(private.per_sample_norms().numpy(), norms, rtol=1e-4)


def test_bk_matches_ghost_with_dropout_and_noise():
    """Same seeds, dropout on, noise on: bk and Opacus' ghost clipping produce the same update."""
    x = torch.randn(30, 10) * 3
    grads = {}
    for mode in ("ghost", "bk"):
        torch.manual_seed(1)
        from fedtab.models.ctgan import Discriminator

        net = Discriminator(10, (16, 16), slope=0.2, dropout=0.5)
        private = _private(net, noise=1.1, expected=20.0, mode=mode)
        private.zero_grad()
        private.backward(F.softplus(net(x, generator=torch.Generator().manual_seed(3))))
        private.step()
        grads[mode] = {n: p.grad.clone() for n, p in net.named_parameters()}
    for n in grads["bk"]:
        torch.testing.assert_close(grads["bk"][n], grads["ghost"][n], rtol=1e-4, atol=1e-6)


def test_bk_public_phase_records_nothing_and_leaves_no_gradient():
    net = _net()
    private = _private(net, lr=0.1)
    private.zero_grad()
    fake = torch.randn(7, 10, requires_grad=True)
    with private.public_phase():
        F.softplus(-net(fake)).mean().backward()
    assert fake.grad is not None and all(p.grad is None for p in net.parameters())
    assert private.hooks.records == []
    private.backward(F.softplus(net(torch.randn(5, 10))))
    private.step()
    assert private.per_sample_norms().shape == (5,)


def test_bk_refuses_parameters_outside_linear_layers():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ConfigError, match="nn.Linear"):
        _private(net)


def test_trainer_under_bk_is_deterministic_given_its_randomness_and_secret_otherwise():
    """Everything but the secret randomness is fixed by the seed: with the same (test-only, seeded)
    source two trainers agree bit for bit; with the production source two runs differ."""
    data, _, _ = make_dataset(1000)
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.04, grad_sample_mode="bk")
    weights = []
    for secret in (SeededSource(1), SeededSource(1), None):
        trainer = LocalTrainer(built(), data, batch_size=40, seed=5, dp=dp, secret=secret)
        trainer.train(5)
        weights.append(trainer.get_weights())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k])
    assert not torch.equal(weights[0]["discriminator.out.weight"], weights[2]["discriminator.out.weight"])
    assert not torch.equal(weights[0]["discriminator.out.weight"], built().state_dict()["discriminator.out.weight"])

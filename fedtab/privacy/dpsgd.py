"""DP-SGD for the one network that reads real rows, through Opacus (per-record clipping + Gaussian noise).

The noise multiplier is calibrated elsewhere (the privacy ledger, from the target budget, the sample
rate and the number of steps); this module only applies it. What it guarantees per step, for the
accountant's (Poisson-subsampled Gaussian) assumption to hold:

* the real rows of a step are a Poisson sample of the site's rows with rate ``sample_rate``
  (``poisson_sample``), drawn from a secret source (``fedtab.privacy.secret``): a public Poisson
  draw would tell an attacker which rows each step used, and subsampling amplifies privacy only
  while the draw is unknown;
* every row's gradient is clipped to ``max_grad_norm`` and N(0, (noise_multiplier * max_grad_norm)^2)
  noise is added to the sum, which is then divided by the *expected* batch size (fixed, so the
  noise scale does not depend on how many rows the Poisson draw happened to pick). The noise comes
  from the secret source too (``_SecretNoise``: Opacus' secure-mode sum of four Gaussians, never
  from a ``torch.Generator`` that a seed could replay).

Fake rows. The discriminator's batch also holds a *fixed* number of generated rows. They go through the
same clipped path as real rows (each is its own "sample"): they depend only on the generator, on
condition frequencies already released under DP and on the seed, never on the site's rows, so adding
or removing one record still changes the clipped sum by at most ``max_grad_norm``. Their count must not
follow the Poisson batch size (it would then depend on the data). We prefer this to a separate,
unclipped gradient for the fake rows because it is one forward/backward (one Opacus step, exact
per-sample norms) and it clips real and fake terms alike, so clipping does not tilt the discriminator
towards one side of the loss.

Modes: ``"ghost"`` (default) uses Opacus' ghost clipping: per-row gradient norms of ``nn.Linear`` layers
from ``|activation| * |backprop|`` (exact for 2-D inputs), then a second backward of the
clip-weighted loss; no per-sample gradients are materialised. ``"hooks"`` materialises per-sample
gradients (exact too, but ~100 MB per step for CTGAN's discriminator at batch 500). ``"bk"``
(book-keeping, Bu et al. 2023) is ghost clipping without the second backward: forward hooks keep each
``nn.Linear``'s input ``a`` and output ``z``; one backward gives ``g = dloss/dz`` (the backprop chain
only, no weight gradients); row i's squared gradient norm is ``sum over layers |g_i|^2 (|a_i|^2 + 1)``
(exact for 2-D inputs; the 1 is the bias); the clipped sum is then ``(c * g)^T a`` per layer, one
matmul, the same work as a plain backward's weight gradient. A DP step then costs about a plain step
plus the row norms, instead of a plain step plus a second backward. Opacus' optimizer still adds the
noise and divides by the expected batch size. Networks whose only parameters are in ``nn.Linear``
layers (fedtab's discriminators) qualify. See ``benchmarks/bench_ctgan_adult.py`` for the timings.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from fedtab.errors import ConfigError
from fedtab.models.base import frozen
from fedtab.privacy.secret import SecretSource

GRAD_SAMPLE_MODES = ("ghost", "hooks", "bk")


@dataclass(frozen=True, kw_only=True)
class DPSGDConfig:
    """Per-site DP-SGD parameters. ``noise_multiplier`` comes from the ledger's calibration."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    grad_sample_mode: str = "ghost"
    # Expected real rows per step: sample_rate x the site's DP row estimate. It divides the noisy sum,
    # so it must not be the exact count (the update's noise scale would state it). None: sample_rate
    # x the rows the trainer holds, only where that count is public (unit tests, benchmarks).
    expected_rows: float | None = None

    def __post_init__(self):
        checks = [
            ("noise_multiplier", self.noise_multiplier, self.noise_multiplier >= 0, "a float in [0, inf)"),
            ("max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "a float in (0, inf)"),
            ("sample_rate", self.sample_rate, 0 < self.sample_rate <= 1, "a float in (0, 1]"),
            ("grad_sample_mode", self.grad_sample_mode, self.grad_sample_mode in GRAD_SAMPLE_MODES,
             f"one of {list(GRAD_SAMPLE_MODES)}"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"The '{name}' parameter of DPSGDConfig must be {expected}. Got {value!r} instead.")


def poisson_sample(n_rows: int, *, sample_rate: float, source: SecretSource) -> torch.Tensor:
    """Indices of a Poisson sample: each of ``n_rows`` rows is in independently with prob. ``sample_rate``
    (the draw comes from ``source``, a secret source in production)."""
    keep = torch.from_numpy(source.uniform(n_rows) < sample_rate)
    return torch.nonzero(keep).squeeze(1)


def secure_gaussian(source: SecretSource, n: int, std: float) -> np.ndarray:
    """``n`` N(0, std^2) draws as Opacus' secure mode makes them: four Gaussians summed and halved (same
    sd), which closes the floating-point attacks on one Gaussian draw (Opacus ``_generate_noise``)."""
    z = source.normal(4 * n).reshape(4, n).sum(axis=0)
    return z * (0.5 * float(std))


class _SecretNoise:
    """Mixin for Opacus' DP optimizers: the noise added to the clipped sum comes from ``noise_source``
    (one draw for all parameters per step) instead of ``torch.normal`` on a generator."""

    noise_source: SecretSource

    def add_noise(self):
        std = self.noise_multiplier * self.max_grad_norm
        params = list(self.params)
        sizes = [p.summed_grad.numel() for p in params]
        noise = torch.from_numpy(secure_gaussian(self.noise_source, sum(sizes), std)) if std > 0 else None
        offset = 0
        for p, k in zip(params, sizes):
            _check_processed_flag(p.summed_grad)
            if noise is not None:
                part = noise[offset:offset + k].view_as(p.summed_grad).to(p.summed_grad.dtype)
                p.grad = (p.summed_grad + part).view_as(p)
            else:
                p.grad = p.summed_grad.view_as(p)
            offset += k
            _mark_as_processed(p.summed_grad)


class _SecretDPOptimizer(_SecretNoise, DPOptimizer):
    pass


class _SecretDPOptimizerFastGradientClipping(_SecretNoise, DPOptimizerFastGradientClipping):
    pass


class PrivateNetwork:
    """A network trained by DP-SGD. Opacus' hooks are attached to ``module`` itself (not a copy), so the
    model keeps calling its own network and its parameter names keep no ``_module.`` prefix.

    ``optimizer`` is the plain optimizer over ``module``'s parameters; it is wrapped here.
    ``expected_batch_size`` is the expected number of rows per step: ``sample_rate * n_rows`` real
    rows plus the fixed number of fake rows.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        config: DPSGDConfig,
        expected_batch_size: float,
        noise_source: SecretSource,
    ):
        if expected_batch_size <= 0:
            raise ConfigError(f"The expected batch size of a DP-SGD step must be positive. Got "
                              f"{expected_batch_size!r} instead.")
        self.module, self.config = module, config
        common = dict(
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        if config.grad_sample_mode == "bk":
            self.hooks = _BookKeeping(module)
            self.optimizer = _SecretDPOptimizerFastGradientClipping(optimizer, **common)
        elif config.grad_sample_mode == "ghost":
            self.hooks = GradSampleModuleFastGradientClipping(
                module, loss_reduction="mean", max_grad_norm=config.max_grad_norm, use_ghost_clipping=True
            )
            self.optimizer = _SecretDPOptimizerFastGradientClipping(optimizer, **common)
        else:
            self.hooks = GradSampleModule(module, loss_reduction="mean")
            self.optimizer = _SecretDPOptimizer(optimizer, **common)
        self.optimizer.noise_source = noise_source

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.hooks, _BookKeeping):
            self.hooks.records = []  # a forward without a private backward must not leak into the next

    def backward(self, row_losses: torch.Tensor) -> None:
        """Backward of per-row losses (one forward pass produced them): fills the clipped sum."""
        with warnings.catch_warnings():
            # Opacus' hooks sit on the first Linear, whose input (the data) needs no gradient; torch then
            # warns that the hook sees output gradients only, which is all Opacus reads. Harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            if self.config.grad_sample_mode == "bk":
                self.hooks.clipped_sum(row_losses, max_grad_norm=self.config.max_grad_norm)
            elif self.config.grad_sample_mode == "ghost":
                DPTensorFastGradientClipping(self.hooks, self.optimizer, row_losses, "mean").backward()
            else:
                row_losses.mean().backward()

    def step(self) -> None:
        """Clip (hooks mode), add noise, divide by the expected batch size, update."""
        self.optimizer.step()

    def per_sample_norms(self) -> torch.Tensor:
        """Unclipped per-row gradient norms of the last backward (ghost and bk modes; for tests and
        debugging only: they are not private)."""
        return self.hooks.per_sample_gradient_norms

    @contextmanager
    def public_phase(self) -> Iterator[None]:
        """For the generator's step: the network is used, not trained. Hooks off (no activations,
        norms or per-sample gradients are recorded) and parameters frozen (no ``.grad`` either)."""
        self.hooks.disable_hooks()
        try:
            with frozen(self.module):
                yield
        finally:
            self.hooks.enable_hooks()

    def close(self) -> None:
        """Detach Opacus' hooks from the module (the module stays usable as a plain network)."""
        self.hooks.remove_hooks()


class _BookKeeping:
    """Forward hooks on every ``nn.Linear`` of a module, for exact per-row clipping in one backward
    (see the module docstring, mode ``"bk"``). Same switch names as Opacus' wrappers."""

    def __init__(self, module: nn.Module):
        self.layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
        owned = {id(p) for m in self.layers for p in m.parameters()}
        stray = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in owned]
        if stray:
            raise ConfigError(f"grad_sample_mode 'bk' needs a network whose parameters all sit in nn.Linear "
                              f"layers. Got other parameters {stray[:5]} instead; use 'ghost' or 'hooks'.")
        self.records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self.hooks_enabled = True
        self.per_sample_gradient_norms: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._record) for m in self.layers]

    def _record(self, layer: nn.Linear, inputs, output) -> None:
        if self.hooks_enabled and torch.is_grad_enabled():
            if inputs[0].dim() != 2:
                raise ConfigError("grad_sample_mode 'bk' needs 2-D (rows x features) inputs to nn.Linear.")
            self.records.append((layer, inputs[0].detach(), output))

    def clipped_sum(self, row_losses: torch.Tensor, *, max_grad_norm: float) -> None:
        """Set each parameter's ``.grad`` to the sum over rows of the row's gradient clipped to
        ``max_grad_norm`` (Opacus' factor ``min(1, C / (norm + 1e-6))``)."""
        records, self.records = self.records, []
        grads = torch.autograd.grad(row_losses.sum(), [z for _, _, z in records])
        sq = torch.zeros(row_losses.shape[0], dtype=row_losses.dtype)
        for (layer, a, _), g in zip(records, grads):
            g2 = (g * g).sum(1)
            sq += g2 * (a * a).sum(1) + (g2 if layer.bias is not None else 0.0)
        norms = sq.sqrt()
        self.per_sample_gradient_norms = norms
        coef = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for (layer, a, _), g in zip(records, grads):
            cg = g * coef[:, None]
            w = cg.t() @ a
            layer.weight.grad = w if layer.weight.grad is None else layer.weight.grad + w
            if layer.bias is not None:
                b = cg.sum(0)
                layer.bias.grad = b if layer.bias.grad is None else layer.bias.grad + b

    def disable_hooks(self) -> None:
        self.hooks_enabled = False

    def enable_hooks(self) -> None:
        self.hooks_enabled = True

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

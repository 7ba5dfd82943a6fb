"""The model contract: a model holds networks and losses only.

A model is DP-unaware and knows no sites, rounds or tables: it reads spans, builds its networks, and
gives the training loop (``fedtab.training``) two losses:

* ``generate(cond, *, generator)``: the public network's forward pass (a GAN's generator output).
* ``private_losses(real, real_cond, generated, *, generator)``: one loss per row of the batch that the
  *private network* sees (real rows, then the generated rows, detached). The private network is the only one that reads
  real rows (a GAN's discriminator; a VAE as a whole). Per-row losses are what per-record DP-SGD needs,
  and ``.mean()`` of them is the non-DP loss.
* ``public_loss(generated, *, generator)``: the scalar loss of the *public network* (a GAN's generator),
  which reaches the data only through the private network (post-processing under DP). ``None`` network
  means there is no public step.

Every random draw takes an explicit ``torch.Generator`` so the loop owns seeding. ``state_dict`` is a
flat ``name -> tensor`` dict of plain float tensors (safetensors-friendly, averageable by FedAvg).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from fedtab.errors import ModelFileError, NotFittedError
from fedtab.models.conditions import CondBatch, Conditions
from fedtab.transform.spans import ConditionSpan, SpanInfo


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Use ``module`` without training it: its trainable parameters get no ``.grad`` inside the block
    (a GAN's generator step reads the discriminator but must not update it)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


_INIT_LOCK = threading.Lock()


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Deterministic parameter initialisation: torch's global RNG forked, seeded with ``seed``, and left
    as it was afterwards. Under one lock: the in-process transport's sites build their models in
    parallel threads, and two builds at once drew each other's numbers and could deadlock inside
    torch (``manual_seed`` in one thread, ``get_rng_state`` in the other: a CI run hung on it)."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class GenerativeModel(ABC):
    """Base class of fedtab's synthesizer models (estimator style: ``__init__`` stores the config only)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    # --- building -------------------------------------------------------------------------------
    @abstractmethod
    def build(self, spans: list[SpanInfo], condition_spans: list[ConditionSpan], *, seed: int) -> "GenerativeModel":
        """Create the networks for these spans, initialised from ``seed``; returns ``self``.
        Sets ``spans_`` and ``conditions_`` (a ``Conditions`` over ``condition_spans``)."""

    @property
    def is_built(self) -> bool:
        return getattr(self, "conditions_", None) is not None

    def _check_built(self) -> None:
        if not self.is_built:
            raise NotFittedError(
                f"This {type(self).__name__} model is not built yet. Call 'build(spans, condition_spans, "
                "seed=...)' before training, sampling or loading weights."
            )

    @property
    def data_dim(self) -> int:
        """Width of an encoded row (sum of the span dims)."""
        self._check_built()
        return sum(s.dim for s in self.spans_)

    @property
    def conditions(self) -> Conditions:
        self._check_built()
        return self.conditions_

    # --- networks and losses ----------------------------------------------------------------------
    @abstractmethod
    def private_network(self) -> nn.Module:
        """The network that reads real rows: DP-SGD wraps exactly this one."""

    def public_network(self) -> nn.Module | None:
        """The network trained only through the private one (post-processing), or None."""
        return None

    def generate(self, cond: CondBatch, *, generator: torch.Generator) -> Any:
        """Forward pass of the public network for these conditions (with autograd), or None when the
        model has none. The result is opaque to the loop: it is passed to ``private_losses`` (which must
        detach it) and then to ``public_loss`` (one forward serves both steps)."""
        return None

    @abstractmethod
    def private_losses(
        self, real: torch.Tensor, real_cond: CondBatch, generated: Any, *, generator: torch.Generator
    ) -> torch.Tensor:
        """Per-row losses of the private network, one per real row then one per generated row.

        Each entry must depend on one row only (per-sample separable), so per-record clipping is exact;
        generated rows must not carry gradient back to the public network.
        """

    def public_loss(self, generated: Any, *, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of the public network for the output of ``generate``."""
        raise NotImplementedError(f"{type(self).__name__} has no public network.")

    # --- training settings ---------------------------------------------------------------------------
    def optimizer_options(self) -> dict[str, Any]:
        """Adam settings this model asks the training loop for, as ``OptimizerConfig`` fields (e.g.
        ``{"private_lr": 2e-3, "betas": (0.9, 0.999)}``); empty means the federation's defaults. A
        model whose loss has another scale than a GAN's (a VAE, a denoiser) needs its own step size."""
        return {}

    # --- sampling -----------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, n: int, *, generator: torch.Generator) -> np.ndarray:
        """``n`` encoded rows (float32), activations applied: tanh spans in [-1, 1], softmax spans one-hot."""

    # --- weights ------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """All networks by name; ``state_dict`` keys are ``"<network>.<parameter>"``. Subclasses name
        them (CTGAN: "generator", "discriminator")."""
        self._check_built()
        nets = {"private": self.private_network()}
        public = self.public_network()
        if public is not None:
            nets["public"] = public
        return nets

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``name -> tensor`` copy of every parameter and float buffer."""
        out: dict[str, torch.Tensor] = {}
        for net_name, net in self.networks().items():
            for key, value in net.state_dict().items():
                if value.is_floating_point():  # BatchNorm's int counter is unused (momentum is set)
                    out[f"{net_name}.{key}"] = value.detach().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights from ``state_dict()``'s format; every key must be present with the same shape."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = sorted(k for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
        if missing or unexpected or bad:
            raise ModelFileError(
                f"These weights do not fit this {type(self).__name__} model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {bad[:5]}. Build the model with the same spans "
                "and config as the one that produced the weights."
            )
        with torch.no_grad():
            for net_name, net in self.networks().items():
                targets = net.state_dict(keep_vars=True)
                for key, target in targets.items():
                    full = f"{net_name}.{key}"
                    if full in state:
                        target.copy_(state[full].to(target.device, target.dtype))

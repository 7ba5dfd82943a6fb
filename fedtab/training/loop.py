"""The one local training loop: a model, a site's encoded rows, optional DP-SGD. It knows no rounds or sites.

The federation calls ``set_weights(global)`` then ``train(steps)`` each round and reads ``get_weights()``;
optimizer moments and random generators stay local across calls. What may be public (data sampling
without DP, conditions, dropout, latent noise) comes from a ``torch.Generator`` seeded from ``seed``,
so without DP the same seed gives bitwise-identical weights on CPU, and ``state_dict`` (flat name ->
tensor: weights, optimizer moments, generator state, step count) resumes a run exactly. Under DP the
Poisson batch draw and the gradient noise come from a secret source (``fedtab.privacy.secret``:
operating-system entropy), which no seed reaches and no state dict holds: a DP run is reproducible
in everything except its secret randomness.

One step = one private step (the network that reads real rows, e.g. the discriminator, under DP-SGD
when ``dp`` is given) and one public step (e.g. the generator, trained only through the private network).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fedtab.errors import ConfigError, DataValidationError, Problem
from fedtab.models.base import GenerativeModel, frozen
from fedtab.models.conditions import RowIndex
from fedtab.privacy.dpsgd import DPSGDConfig, PrivateNetwork, poisson_sample
from fedtab.privacy.secret import SecretSource, secret_source


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adam settings for both networks (CTGAN's defaults)."""

    private_lr: float = 2e-4
    public_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 1e-6


@dataclass(frozen=True)
class StepInfo:
    """Passed to the progress callback after every step."""

    step: int  # steps done by this trainer so far, over all calls to train
    private_loss: float
    public_loss: float
    real_rows: int


@dataclass(frozen=True)
class TrainStats:
    """Summary of one call to ``train``."""

    steps: int
    sample_rate: float  # Poisson rate under DP; batch_size / rows otherwise
    mean_real_rows: float
    private_loss: float  # mean over the steps
    public_loss: float
    seconds: float


def _check_data(data: np.ndarray, width: int) -> None:
    if not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.ndim != 2:
        raise ConfigError(f"The 'data' parameter of LocalTrainer must be a 2-D float32 numpy array. Got "
                          f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')} "
                          "instead. Encode the table with the fitted transformer first.")
    problems = []
    if data.shape[1] != width:
        problems.append(Problem(None, f"encoded width is {data.shape[1]}", expected=f"{width} (the spans' total)"))
    if data.shape[0] == 0:
        problems.append(Problem(None, "no rows", expected="at least one row"))
    bad = int((~np.isfinite(data)).any(axis=1).sum()) if data.size else 0
    if bad:
        problems.append(Problem(None, "non-finite values (NaN or inf)", rows=bad, expected="finite floats"))
    if problems:
        raise DataValidationError("LocalTrainer data", problems)


class LocalTrainer:
    """Train ``model`` (already built) on one site's encoded rows.

    ``batch_size`` real rows and ``batch_size`` generated rows per step without DP. Under ``dp`` the
    private network sees a Poisson sample of the rows (rate ``dp.sample_rate``, so about
    ``sample_rate * rows``; choose ``batch_size`` close to that) plus ``batch_size`` generated rows.
    A model with no public network (``public_network() is None``: TVAE, diffusion) has no generated
    rows and no public step; its ``private_losses`` get ``generated=None``. Without DP, ``training_by_sampling`` uses CTGAN's
    log-frequency sampling of rows by condition category.
    """

    def __init__(
        self,
        model: GenerativeModel,
        data: np.ndarray,
        *,
        batch_size: int,
        dp: DPSGDConfig | None = None,
        seed: int,
        device: str = "cpu",
        optimizer: OptimizerConfig = OptimizerConfig(),
        training_by_sampling: bool = True,
        secret: SecretSource | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"The 'batch_size' parameter of LocalTrainer must be a positive int. Got {batch_size!r} instead.")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"The 'seed' parameter of LocalTrainer must be a non-negative int. Got {seed!r} instead.")
        if device != "cpu":
            raise ConfigError(f"The 'device' parameter of LocalTrainer must be 'cpu' in this version (the seeded "
                              f"generators and batched gathers run on CPU). Got {device!r} instead.")
        _check_data(data, model.data_dim)
        self.model, self.batch_size, self.dp, self.seed = model, batch_size, dp, int(seed)
        self.data = torch.from_numpy(np.ascontiguousarray(data))
        self.n_rows = self.data.shape[0]
        s_sampling = int(np.random.SeedSequence(self.seed).spawn(2)[0].generate_state(1, np.uint64)[0])
        self._rng = torch.Generator().manual_seed(s_sampling)
        # Under DP: the Poisson draws and the gradient noise (secret: never seeded, never stored).
        self._secret = (secret if secret is not None else secret_source("dp-sgd")) if dp is not None else None

        self._private_net = model.private_network()
        self._public_net = model.public_network()
        # fused: one kernel per step for all of a network's parameters (CPU since torch 2.4) where the
        # default loops over them: about half the optimizer time of a CTGAN step on Adult.
        adam = dict(betas=optimizer.betas, weight_decay=optimizer.weight_decay, fused=True)
        self._private_opt = torch.optim.Adam(self._private_net.parameters(), lr=optimizer.private_lr, **adam)
        self._public_opt = (torch.optim.Adam(self._public_net.parameters(), lr=optimizer.public_lr, **adam)
                            if self._public_net is not None else None)
        self._index: RowIndex | None = None
        self._private: PrivateNetwork | None = None
        if dp is not None:
            # The private network sees Poisson(real) + batch_size generated rows (a fixed count: it must
            # not follow the Poisson draw), so the expected batch is sample_rate * rows + batch_size.
            # A model without a public network (TVAE, diffusion) generates nothing: real rows only.
            fake_rows = batch_size if self._public_net is not None else 0
            self._private = PrivateNetwork(
                self._private_net, self._private_opt, config=dp,
                expected_batch_size=(dp.sample_rate * self.n_rows if dp.expected_rows is None else dp.expected_rows)
                + fake_rows, noise_source=self._secret,
            )
        elif training_by_sampling and model.conditions.n_columns:
            self._index = RowIndex(model.conditions, self.data)
        self.steps_done = 0

    @property
    def sample_rate(self) -> float:
        return self.dp.sample_rate if self.dp is not None else min(1.0, self.batch_size / self.n_rows)

    # --- one step ---------------------------------------------------------------------------------
    def _batches(self):
        """Real rows, their conditions, and the generator's conditions for this step."""
        g, cond = self._rng, self.model.conditions
        if self.dp is not None:
            real = self.data[poisson_sample(self.n_rows, sample_rate=self.dp.sample_rate, source=self._secret)]
            # Generator conditions from the (DP) frequencies, never copied from the real rows: the fake
            # rows then carry no information about the site's records.
            return real, cond.from_rows(real, generator=g), cond.from_frequencies(self.batch_size, generator=g)
        if self._index is not None:
            idx, real_cond = self._index.sample(self.batch_size, generator=g)
            real = self.data.index_select(0, idx)
        else:
            real = self.data.index_select(0, torch.randint(self.n_rows, (self.batch_size,), generator=g))
            real_cond = cond.from_rows(real, generator=g)
        return real, real_cond, real_cond  # non-DP: fake rows share the real conditions (CTGAN)

    def _step(self) -> StepInfo:
        g, model = self._rng, self.model
        real, real_cond, gen_cond = self._batches()
        # One generator forward serves both steps: detached for the private step, then back-propagated
        # through the (just updated) private network for the public step.
        generated = model.generate(gen_cond, generator=g)
        if self._private is not None:
            self._private.zero_grad()
            losses = model.private_losses(real, real_cond, generated, generator=g)
            self._private.backward(losses)
            self._private.step()
        else:
            self._private_opt.zero_grad(set_to_none=True)
            losses = model.private_losses(real, real_cond, generated, generator=g)
            losses.mean().backward()
            self._private_opt.step()
        public_loss = float("nan")
        if self._public_net is not None:
            # The public network learns only through the private one: freeze it (and under DP switch
            # Opacus' hooks off) so this step leaves no gradient or per-sample state on it.
            phase = self._private.public_phase() if self._private is not None else frozen(self._private_net)
            with phase:
                self._public_opt.zero_grad(set_to_none=True)
                loss = model.public_loss(generated, generator=g)
                loss.backward()
                self._public_opt.step()
            public_loss = loss.item()
        self.steps_done += 1
        return StepInfo(self.steps_done, losses.detach().mean().item(), public_loss, real.shape[0])

    def train(self, steps: int, *, callback: Callable[[StepInfo], None] | None = None) -> TrainStats:
        """Run ``steps`` steps; ``callback`` (if given) receives a ``StepInfo`` after each."""
        if not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"The 'steps' parameter of LocalTrainer.train must be a non-negative int. Got {steps!r} instead.")
        for net in self.model.networks().values():
            net.train()
        start, infos = time.perf_counter(), []
        for _ in range(steps):
            info = self._step()
            infos.append(info)
            if callback is not None:
                callback(info)
        mean = (lambda xs: float(np.mean(xs)) if xs else float("nan"))
        return TrainStats(
            steps=steps, sample_rate=self.sample_rate, mean_real_rows=mean([i.real_rows for i in infos]),
            private_loss=mean([i.private_loss for i in infos]), public_loss=mean([i.public_loss for i in infos]),
            seconds=time.perf_counter() - start,
        )

    # --- weights and state --------------------------------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        """The model's weights (flat name -> tensor, no Opacus prefixes): what FedAvg averages."""
        return self.model.state_dict()

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load (e.g. global) weights; optimizer moments and generators stay as they are."""
        self.model.load_state_dict(weights)

    def _optimizers(self):
        yield "private", self._private_opt, self._private_net
        if self._public_opt is not None:
            yield "public", self._public_opt, self._public_net

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume exactly: weights, Adam moments, generator states, step count."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for tag, opt, net in self._optimizers():
            names = {id(p): n for n, p in net.named_parameters()}
            for p, st in opt.state.items():
                for k, v in st.items():
                    out[f"optim.{tag}.{names[id(p)]}.{k}"] = torch.as_tensor(v).detach().clone()
        out["rng.sampling"] = self._rng.get_state()  # public randomness only: the secret source has no state to save
        out["trainer.steps"] = torch.tensor(self.steps_done, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Resume from ``state_dict()`` (a trainer built with the same model config, data and settings)."""
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        for tag, opt, net in self._optimizers():
            params = dict(net.named_parameters())
            prefix = f"optim.{tag}."
            opt.state.clear()
            for key, value in state.items():
                if key.startswith(prefix):
                    pname, stat = key[len(prefix):].rsplit(".", 1)
                    opt.state[params[pname]][stat] = value.clone()
        self._rng.set_state(state["rng.sampling"])
        self.steps_done = int(state["trainer.steps"])

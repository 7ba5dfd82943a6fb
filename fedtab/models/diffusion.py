"""Tabular diffusion in the style of TabDDPM (Kotelnikov et al., 2023): networks and losses only.

Gaussian diffusion on the tanh spans (scaled scalars), multinomial diffusion (Hoogeboom et al., 2021)
on every softmax span (categories, Gaussian-mixture modes, missing indicators), one MLP denoiser with
a sinusoidal timestep embedding that predicts the Gaussian noise and the logits of each span's clean
category. The denoiser reads real rows: it is the *private network*; there is no public network.

Per-row loss, one timestep per row (drawn from the caller's generator), so it depends on that row
alone and per-record DP-SGD clipping is exact:

    mean_j (eps_j - eps_hat_j)^2                                          (tanh columns)
  + mean_spans KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))               (softmax spans; t = 0: -log x0_hat[x_0])
  + ce_weight * mean_spans -log x0_hat[x_0]                              (every t)

The cross-entropy term trains x0_hat to be p(x0 | x_t) at every timestep: the KL alone gives a weak
signal at most timesteps (two nearby posteriors), and on Adult (4 sites, 30 epochs) the model then
learned little of how the target depends on the other columns (TSTR ROC-AUC 0.65; 0.88 with the
term). ``p(x_{t-1} | x_t)`` is the exact mixture of posteriors under that x0_hat (``_reverse``).

Sampling runs ``sampling_steps`` denoising steps (default 6; on Adult's federated model, one thread:
4 steps 14,000 rows/s, raw quality 0.849; 6 steps 11,000 rows/s, 0.895; 10 steps 5,700 rows/s, 0.905;
30 steps scored as 10; TSTR 0.87-0.88 throughout) on an evenly strided subsequence of the training
timesteps (the schedule is re-spaced: alpha'_k = abar(t_k) / abar(t_{k-1})), DDIM updates for the
tanh columns (``eta`` = 0 deterministic, 1 ancestral) and posterior draws for the spans, all rows of a
chunk in one batched forward pass per step.

Differences from TabDDPM, and why: numerical values arrive mode-normalised by fedtab's encoder (a
value within its Gaussian-mixture mode, ``(v - mean_k) / (4 std_k)``) rather than quantile-transformed
(which needs the raw rows, not federatable); ``numeric_scale`` = 4 restores unit spread within a mode,
and the mode itself is diffused as a categorical.

Class conditioning (``condition_column``; set from a declared categorical ``target`` by
``fedtab.federation.training.resolve_model_options``), as TabDDPM conditions on the label: that
column's span is never noised, the denoiser reads it clean at every timestep and its loss leaves it
out; sampling draws it first from the agreed (under DP, noisy) frequencies, then denoises the rest of
the row for it. Measured on Adult (4 sites, non-DP, 60 epochs, the generator's own rows, with the
encoding of commit 2a1be58): TSTR ROC-AUC 0.889 unconditioned, 0.893 conditioned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedtab.errors import ConfigError
from fedtab.models.base import GenerativeModel, seeded_init
from fedtab.models.conditions import CondBatch, Conditions
from fedtab.models.ctgan import SpanLayout
from fedtab.models.tvae import _check_adam, _check_dims, _check_positive_int, optimizer_options
from fedtab.transform.spans import ACTIVATIONS, ConditionSpan, SpanInfo, span_offsets

SCHEDULES = ("cosine", "linear")
_NEG = -1e9  # padded slots of the span block: finite, so no NaN from (-inf) - (-inf)


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Diffusion and denoiser settings. ``sampling_steps`` <= ``timesteps`` (strided sampler)."""

    timesteps: int = 1000
    sampling_steps: int = 6
    schedule: str = "cosine"
    hidden_dims: tuple[int, ...] = (256, 256)
    time_embedding_dim: int = 128
    numeric_scale: float = 4.0
    eta: float = 0.0
    ce_weight: float = 1.0
    learning_rate: float = 1e-3
    adam_betas: tuple[float, float] = (0.5, 0.9)
    condition_column: str | None = None

    def __post_init__(self):
        for name in ("timesteps", "sampling_steps", "time_embedding_dim"):
            _check_positive_int("DiffusionConfig", name, getattr(self, name))
        if self.time_embedding_dim % 2:
            raise ConfigError(f"The 'time_embedding_dim' parameter of DiffusionConfig must be an even int. "
                              f"Got {self.time_embedding_dim!r} instead.")
        if self.timesteps < 2 or self.sampling_steps > self.timesteps:
            raise ConfigError(f"DiffusionConfig needs 2 <= timesteps and sampling_steps <= timesteps. Got "
                              f"timesteps={self.timesteps!r}, sampling_steps={self.sampling_steps!r} instead.")
        _check_dims("DiffusionConfig", "hidden_dims", self.hidden_dims)
        _check_adam("DiffusionConfig", self.learning_rate, self.adam_betas)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"The 'schedule' parameter of DiffusionConfig must be one of {list(SCHEDULES)}. "
                              f"Got {self.schedule!r} instead.")
        if not (isinstance(self.numeric_scale, (int, float)) and self.numeric_scale > 0):
            raise ConfigError(f"The 'numeric_scale' parameter of DiffusionConfig must be a float in (0, inf). "
                              f"Got {self.numeric_scale!r} instead.")
        if not (isinstance(self.ce_weight, (int, float)) and self.ce_weight >= 0):
            raise ConfigError(f"The 'ce_weight' parameter of DiffusionConfig must be a float in [0, inf). "
                              f"Got {self.ce_weight!r} instead.")
        if self.condition_column is not None and not (isinstance(self.condition_column, str) and self.condition_column):
            raise ConfigError(f"The 'condition_column' parameter of DiffusionConfig must be a column name or None. "
                              f"Got {self.condition_column!r} instead.")
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ConfigError(f"The 'eta' parameter of DiffusionConfig must be a float in [0, 1]. "
                              f"Got {self.eta!r} instead.")


def alpha_bars(timesteps: int, schedule: str) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s) for t = 0 .. T-1 (float64)."""
    if schedule == "linear":
        betas = torch.linspace(1e-4 * 1000 / timesteps, 0.02 * 1000 / timesteps, timesteps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)
    s = 0.008
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (rows,) -> (rows, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Denoiser(nn.Module):
    """TabDDPM's MLPDiffusion: proj(x) + MLP(sinusoid(t)), then (Linear, ReLU) layers, linear head.
    Only ``nn.Linear`` holds parameters (Opacus ghost clipping computes exact per-row norms)."""

    def __init__(self, data_dim: int, dims: tuple[int, ...], t_dim: int):
        super().__init__()
        self.t_dim = t_dim
        self.time = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.proj = nn.Linear(data_dim, t_dim)
        layers, d = [], t_dim
        for h in dims:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.proj(x) + self.time(timestep_embedding(t, self.t_dim))))


class TabDiffusion(GenerativeModel):
    """Gaussian + multinomial diffusion over spans. Private network: the denoiser; optionally
    conditioned on one categorical column (``DiffusionConfig.condition_column``)."""

    name = "diffusion"
    config_class = DiffusionConfig

    def build(self, spans: list[SpanInfo], condition_spans: list[ConditionSpan], *, seed: int) -> "TabDiffusion":
        bad = [s for s in spans if s.activation not in ACTIVATIONS or s.dim < 1]
        if not spans or bad:
            raise ConfigError(f"TabDiffusion needs a non-empty list of spans with activation in {ACTIVATIONS} "
                              f"and dim >= 1. Got {bad or spans!r} instead.")
        cfg = self.config
        lay = self.layout_ = SpanLayout(spans)
        self.conditions_ = Conditions(spans, [])  # unconditional: uniform rows, no training-by-sampling
        self.spans_ = list(spans)
        self.n_num_ = len(lay.tanh_cols)
        self._soft_cols = lay.pad_index[lay.pad_mask]  # encoded columns of the spans, span by span
        n_soft = len(self._soft_cols)
        # Flat soft column j -> padded slot (for an exact per-span log-softmax); padding reads a dummy.
        flat = torch.full(lay.pad_mask.shape, n_soft, dtype=torch.long)
        flat[lay.pad_mask] = torch.arange(n_soft)
        self._slot_index = flat
        dims = lay.pad_mask.sum(dim=1)
        self._span_id = torch.repeat_interleave(torch.arange(lay.n_soft), dims)
        self._starts = torch.cumsum(dims, 0) - dims
        self._ends = torch.cumsum(dims, 0) - 1
        self._start_of = self._starts[self._span_id]  # each flat column's span start
        self._pos = (torch.arange(n_soft) - self._starts[self._span_id]).float()  # position within its span
        self._kmax1 = (dims - 1).float()
        self._kinv = 1.0 / dims[self._span_id].float()
        self._member = F.one_hot(self._span_id, lay.n_soft).float() if n_soft else torch.zeros(0, 0)
        self._abar = alpha_bars(cfg.timesteps, cfg.schedule).float()
        self._set_condition(spans, condition_spans)
        with seeded_init(seed):
            self.denoiser_ = Denoiser(lay.dim, cfg.hidden_dims, cfg.time_embedding_dim)
        return self

    def _set_condition(self, spans: list[SpanInfo], condition_spans: list[ConditionSpan]) -> None:
        """``condition_column``: its category span is never noised (the denoiser reads it clean at every
        step, as TabDDPM's class label) and sampling draws it first from the agreed frequencies."""
        name = self.config.condition_column
        self._cond_cols = torch.zeros(0, dtype=torch.long)  # flat soft columns of the condition span
        self._span_weight = torch.full((self.layout_.n_soft,), 1.0 / max(1, self.layout_.n_soft))  # loss: mean over spans
        if name is None:
            return
        cond = [c for c in condition_spans if c.column == name]
        if not cond:
            raise ConfigError(f"DiffusionConfig.condition_column {name!r} is not a categorical column of the "
                              f"encoded table (categorical columns: {[c.column for c in condition_spans]}).")
        cond = cond[0]
        soft = [i for i, s in enumerate(spans) if s.activation == "softmax"]
        starts = span_offsets(spans)
        span_k = next(k for k, i in enumerate(soft) if starts[i] == cond.offset)
        self._cond_cols = torch.arange(int(self._starts[span_k]), int(self._ends[span_k]) + 1)
        freq = np.clip(np.asarray(cond.frequencies, dtype=np.float64), 0.0, None)
        self._cond_freq = torch.as_tensor(freq if freq.sum() > 0 else np.ones_like(freq)).float()
        self._span_weight[span_k] = 0.0
        self._span_weight /= self._span_weight.sum().clamp_min(1e-12)  # mean over the other spans

    def private_network(self) -> nn.Module:
        self._check_built()
        return self.denoiser_

    def networks(self) -> dict[str, nn.Module]:
        self._check_built()
        return {"denoiser": self.denoiser_}

    def optimizer_options(self) -> dict:
        return optimizer_options(self.config)

    # --- span blocks (flat: the softmax spans' columns side by side, no padding) -------------------
    def _per_column(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, spans) -> (rows, flat soft columns): each span's value on each of its columns.
        ``index_select``: 25% faster sampling than advanced indexing (Adult model, one thread)."""
        return x.index_select(1, self._span_id)

    def _segsum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-span sums (rows, spans) of flat soft columns: one small matrix product."""
        return x @ self._member

    def _q_probs(self, x: torch.Tensor, abar) -> torch.Tensor:
        """abar * x + (1 - abar) / K, column-wise (``abar``: a float or a (rows, 1) column)."""
        return abar * x + (1 - abar) * self._kinv

    def _posterior(self, x_t: torch.Tensor, x0: torch.Tensor, alpha, abar_prev, *, normalise: bool = True):
        """q(x_{t-1} | x_t, x_0) per span for one-hot ``x_t`` and a distribution ``x0`` (flat); the
        sampler's draw takes it unnormalised (one pass less per step)."""
        p = self._q_probs(x_t, alpha) * self._q_probs(x0, abar_prev)
        return p / self._per_column(self._segsum(p).clamp_min(1e-30)) if normalise else p

    def _reverse(self, x_t: torch.Tensor, x0_hat: torch.Tensor, abar, abar_prev, *, normalise: bool = True):
        """p(x_{t-1} | x_t) = sum_x0 q(x_{t-1} | x_t, x0) p(x0 | x_t) for a predicted distribution
        ``x0_hat`` = p(x0 | x_t) (the cross-entropy term trains it to be that). The posterior is linear
        in x0 up to its normaliser q(x_t | x0), so weighting x0_hat by 1 / q(x_t | x0) makes the plug-in
        exact; plugging x0_hat in directly (Hoogeboom et al.) over-weights x0 = x_t by up to
        1 + K abar / (1 - abar), which keeps the starting noise and pulls the marginals towards uniform."""
        w = x0_hat / self._q_probs(x_t, abar)
        w = w / self._per_column(self._segsum(w))
        return self._posterior(x_t, w, abar / abar_prev, abar_prev, normalise=normalise)

    def _draw(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One category per span from (unnormalised) flat probabilities by inverse CDF -> flat one-hot.
        One uniform per span; the chosen position is the count of within-span CDF values below it."""
        cum = torch.cumsum(probs, dim=1)
        within = cum - (cum - probs).index_select(1, self._start_of)
        total = within.index_select(1, self._ends)  # (rows, spans)
        u = torch.rand(total.shape, generator=generator) * total
        count = self._segsum((within < self._per_column(u)).to(probs.dtype))
        chosen = torch.minimum(count, self._kmax1)
        return (self._pos == self._per_column(chosen)).to(probs.dtype)

    def _net(self, x_num: torch.Tensor, x_cat: torch.Tensor, t: torch.Tensor):
        """Denoiser on [scaled tanh values | flat one-hot spans]: (eps_hat, flat soft logits)."""
        out = self.denoiser_(torch.cat([x_num, x_cat], dim=1), t)
        return out[:, : self.n_num_], out[:, self.n_num_:]

    def _log_softmax(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-span log-softmax of flat logits (through the padded block: exact for any logit range)."""
        lay = self.layout_
        ext = torch.cat([flat, torch.zeros(flat.shape[0], 1)], dim=1)
        block = ext[:, self._slot_index].masked_fill(~lay.pad_mask, _NEG)
        return torch.log_softmax(block, dim=2)[:, lay.pad_mask]

    # --- loss ---------------------------------------------------------------------------------------
    def private_losses(
        self, real: torch.Tensor, real_cond: CondBatch, generated=None, *, generator: torch.Generator
    ) -> torch.Tensor:
        """One loss per real row at one timestep drawn per row."""
        lay, n = self.layout_, real.shape[0]
        t = torch.randint(self.config.timesteps, (n,), generator=generator)
        abar = self._abar[t][:, None]
        x_num = real[:, lay.tanh_cols] * self.config.numeric_scale
        eps = torch.randn(x_num.shape, generator=generator)
        x_num_t = abar.sqrt() * x_num + (1 - abar).sqrt() * eps
        x0_cat = real[:, self._soft_cols]
        x_cat_t = self._draw(self._q_probs(x0_cat, abar), generator) if lay.n_soft else x0_cat
        if len(self._cond_cols):
            x_cat_t[:, self._cond_cols] = x0_cat[:, self._cond_cols]
        eps_hat, logits = self._net(x_num_t, x_cat_t, t)
        loss = torch.zeros(n)
        if self.n_num_:
            loss = loss + ((eps - eps_hat) ** 2).mean(dim=1)
        if lay.n_soft:
            log_x0_hat = self._log_softmax(logits)
            nll = -self._segsum(x0_cat * log_x0_hat)  # (rows, spans)
            abar_prev = torch.where(t[:, None] > 0, self._abar[(t - 1).clamp(min=0)][:, None], torch.ones_like(abar))
            alpha = abar / abar_prev
            q = self._posterior(x_cat_t, x0_cat, alpha, abar_prev)
            p = self._reverse(x_cat_t, log_x0_hat.exp(), abar, abar_prev)
            kl = self._segsum(q * (torch.log(q.clamp_min(1e-30)) - torch.log(p.clamp_min(1e-30))))
            w = self._span_weight
            loss = loss + torch.where((t == 0)[:, None], nll, kl) @ w + self.config.ce_weight * (nll @ w)
        return loss

    # --- sampling -------------------------------------------------------------------------------------
    def sampling_timesteps(self) -> torch.Tensor:
        """The strided training timesteps the sampler visits, increasing (0 and T-1 included)."""
        cfg = self.config
        ts = torch.linspace(0, cfg.timesteps - 1, cfg.sampling_steps, dtype=torch.float64).round().long()
        return torch.unique(ts)

    @torch.inference_mode()
    def sample(self, n: int, *, generator: torch.Generator, chunk: int = 16_384) -> np.ndarray:
        """``n`` rows: tanh columns in [-1, 1], one-hot spans; ``sampling_steps`` steps per chunk."""
        self._check_built()
        was_training = self.denoiser_.training
        self.denoiser_.eval()
        try:
            out = [self._sample_chunk(min(chunk, n - s), generator) for s in range(0, n, chunk)]
        finally:
            self.denoiser_.train(was_training)
        if not out:
            return np.zeros((0, self.layout_.dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def _sample_chunk(self, m: int, generator: torch.Generator) -> torch.Tensor:
        lay, cfg = self.layout_, self.config
        ts = self.sampling_timesteps()
        x_num = torch.randn(m, self.n_num_, generator=generator)
        x_cat = self._draw(self._kinv.expand(m, -1), generator) if lay.n_soft else torch.zeros(m, 0)
        if len(self._cond_cols):
            label = torch.multinomial(self._cond_freq, m, replacement=True, generator=generator)
            y = F.one_hot(label, len(self._cond_cols)).float()
            x_cat[:, self._cond_cols] = y
        for k in range(len(ts) - 1, -1, -1):
            abar = float(self._abar[ts[k]])
            abar_prev = float(self._abar[ts[k - 1]]) if k > 0 else 1.0
            eps_hat, logits = self._net(x_num, x_cat, ts[k : k + 1])  # one timestep embedding per step
            if self.n_num_:
                x0 = ((x_num - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)).clamp_(-cfg.numeric_scale,
                                                                                      cfg.numeric_scale)
                eps = (x_num - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
                sigma = cfg.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
                x_num = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
                if sigma > 0:
                    x_num = x_num + sigma * torch.randn(x_num.shape, generator=generator)
            if lay.n_soft:
                # Per-span softmax against the row's max (cheaper than a padded block); exp's argument is
                # floored at -80 so a span far below the row's max keeps tiny but non-zero weights.
                e = torch.exp((logits - logits.amax(dim=1, keepdim=True)).clamp_(min=-80.0))
                x0_hat = e / self._per_column(self._segsum(e))
                probs = x0_hat if k == 0 else self._reverse(x_cat, x0_hat, abar, abar_prev, normalise=False)
                x_cat = self._draw(probs, generator)
                if len(self._cond_cols):
                    x_cat[:, self._cond_cols] = y
        num = (x_num / cfg.numeric_scale).clamp(-1.0, 1.0)
        return torch.cat([num, x_cat], dim=1)[:, lay.inverse]

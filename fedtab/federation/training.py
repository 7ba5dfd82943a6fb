"""Phase 3 glue: what the coordinator sends to set training up, and one site's local round.

The site calibrates its own DP-SGD noise multiplier: from what its ledger already holds (the
encoding spends), its Poisson sample rate ``batch_size / rows`` (rows: its DP row estimate under
DP) and the total number of local steps
over all rounds, so that everything together composes to the job's epsilon. Each round spends its
steps on the ledger *before* training; the ledger refuses a round that would pass the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedtab.modelfile import encoding_sha256
from fedtab.models.registry import create_model, get_model_class, is_measured, measured_module
from fedtab.privacy.accountant import calibrate_noise_multiplier
from fedtab.privacy.dpsgd import DPSGDConfig
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.privacy.secret import secret_source
from fedtab.training.loop import LocalTrainer, OptimizerConfig
from fedtab.transform.table import TableTransformer

TRAINING_PHASE = "training"
# Book-keeping clipping: exact per-row clipping in one backward (fedtab.privacy.dpsgd), ~1.2x a plain
# step where Opacus' ghost clipping (a second backward) costs ~2x.
GRAD_SAMPLE_MODE = "bk"
# Adam for a federated round. Each round starts a fresh trainer (moments reset: a site keeps no state
# between rounds, so every transport computes the same update), and a benchmark budget of 10-30 epochs
# is short for CTGAN's 2e-4: a larger step reaches a better model in the same number of epochs.
# On Adult (4 sites, 10 epochs) 1e-3 lifted TSTR ROC-AUC from 0.54 to 0.75 at the same quality score
# (benchmarks/bench_ctgan_adult.py).
# A model may ask for other Adam settings (``GenerativeModel.optimizer_options``: TVAE, diffusion).
OPTIMIZER = OptimizerConfig(private_lr=1e-3, public_lr=1e-3)


def resolve_model_options(job, transformer: TableTransformer) -> dict[str, Any]:
    """The job's model options with what the declared ``target`` implies filled in: a model whose
    config has ``condition_column`` (diffusion) is conditioned on a categorical target, as TabDDPM
    conditions on the class label (see ``fedtab.models.diffusion``). An option the user set is kept
    (``condition_column = None`` turns it off). Pure: the coordinator's
    setup and the saved model file carry the result, so a loaded model needs no target."""
    if is_measured(job.model):
        return measured_module(job.model).model_options(job.model_options)
    options = dict(job.model_options)
    target = job.target
    fields = {f.name for f in dataclasses.fields(get_model_class(job.model).config_class)}
    if (target is not None and "condition_column" in fields and "condition_column" not in options
            and any(c.column == target for c in transformer.condition_spans)):
        options["condition_column"] = target
    return options


def setup_body(job, transformer: TableTransformer, *, plan_rows: float | None = None) -> dict[str, Any]:
    """What the coordinator sends to set training up. ``plan_rows``: the public rows a site every site plans
    its training for (``site_training_plan``), where the coordinator knows only the sites' summed rows."""
    enc = transformer.to_dict()
    public = {} if plan_rows is None else {"plan_rows": float(plan_rows)}
    return {**public,
        "transformer": enc,
        "transformer_hash": encoding_sha256(enc),
        "model": job.model, "model_options": resolve_model_options(job, transformer), "seed": job.seed,
        "epsilon": job.privacy.epsilon, "rounds": job.training.rounds, "local_epochs": job.training.local_epochs,
        "batch_size": job.training.batch_size, "max_grad_norm": job.training.max_grad_norm,
    }


def model_config(name: str, options: dict[str, Any]):
    """The model's config dataclass from plain options (TOML lists become tuples)."""
    cls = get_model_class(name).config_class
    if not options:
        return cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        from fedtab.errors import ConfigError

        raise ConfigError(f"Unknown option(s) {unknown} for model '{name}'; allowed: {sorted(fields)}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def build_model(setup: dict[str, Any], transformer: TableTransformer):
    model = create_model(setup["model"], model_config(setup["model"], setup["model_options"]))
    return model.build(transformer.spans, transformer.condition_spans, seed=int(setup["seed"]))


def initial_weights(setup: dict[str, Any]) -> dict[str, np.ndarray]:
    """The round-0 global model: built from the job's seed on the coordinator (no data involved)."""
    model = build_model(setup, TableTransformer.from_dict(setup["transformer"]))
    return {k: v.numpy() for k, v in model.state_dict().items()}


def steps_per_round(setup: dict[str, Any], n_rows: float) -> int:
    """``local_epochs x rows / batch`` rounded to the nearest whole step (at least one): a round trains
    the stated epochs to within half a step (rounding up made Adult's 6,512-row sites train 1.075
    epochs per stated epoch at batch 500)."""
    return max(1, int(math.floor(float(setup["local_epochs"]) * n_rows / int(setup["batch_size"]) + 0.5)))


def site_training_plan(setup: dict[str, Any], *, n_rows: float, ledger: PrivacyLedger) -> dict[str, Any]:
    """Noise multiplier, sample rate, steps and expected real rows per step for one site (public once
    sent back). Under DP ``n_rows`` is the site's DP row estimate, never its exact count: the sample
    rate, the steps and the expected batch (which divides the noisy gradient sum) all follow from it.
    The accounting stays exact whatever the estimate: each row is in a step's batch with probability
    ``sample_rate``, which is all the subsampled Gaussian's analysis uses.

    With ``setup["plan_rows"]`` (the coordinator's public rows a site, an equal share of the securely
    summed histograms' row estimate: ``fedtab.federation.secure_encoding``) every site trains to one
    public plan: the sample rate, steps and noise multiplier follow from ``plan_rows``, so the site's
    setup and round replies and its ledger hold nothing of its own size; only the expected batch, which
    stays at the site, is ``sample_rate x n_rows``. Each site still passes over its rows the stated
    epochs a round (steps x sample rate)."""
    n_rows = max(1.0, float(n_rows))
    plan_rows = max(1.0, float(setup.get("plan_rows") or n_rows))
    steps = steps_per_round(setup, plan_rows)
    sample_rate = min(1.0, int(setup["batch_size"]) / plan_rows)
    z = 0.0
    if ledger.is_dp:
        z = calibrate_noise_multiplier(ledger=ledger, sample_rate=sample_rate, steps=steps * int(setup["rounds"]),
                                       target_epsilon=float(setup["epsilon"]))
    return {"noise_multiplier": z, "sample_rate": sample_rate, "steps_per_round": steps,
            "expected_rows": sample_rate * n_rows}


def encode_rows(setup: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    transformer = TableTransformer.from_dict(setup["transformer"])
    return transformer.transform(frame, rng=np.random.default_rng(int(setup["seed"])))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, then restore. Local training uses one thread: the float sums of
    a matrix product depend on how it is split across threads, and a site must compute the same
    update whichever transport (in-process, Flower worker process) or machine runs it. On small
    tabular networks one thread is also the fastest on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def site_category(transformer: TableTransformer, site: str | None) -> int | None:
    """The site's category in the site column (``EncodingPlan.site_column``), or None without one."""
    column = transformer.plan_.site_column
    if column is None:
        return None
    names = list(transformer.schema[column].categories)
    if site not in names:
        from fedtab.errors import ConfigError

        raise ConfigError(f"Site {site!r} is not a category of the site column '{column}' ({names}): the "
                          "coordinator declares the site names it trains with; name this site as it does.")
    return names.index(site)


def train_one_round(setup: dict[str, Any], data: np.ndarray, weights: dict[str, np.ndarray], *,
                    round_index: int, ledger: PrivacyLedger, seed: int, site: str | None = None) -> dict[str, Any]:
    """Load the global weights, spend this round on the ledger, train locally, return the update.
    With a site column, the model's conditions are pinned to ``site``'s own category."""
    transformer = TableTransformer.from_dict(setup["transformer"])
    model = build_model(setup, transformer)
    model.conditions.pin(site_category(transformer, site))
    dp = None
    steps = int(setup["steps_per_round"])
    if ledger.is_dp:
        dp = DPSGDConfig(noise_multiplier=float(setup["noise_multiplier"]),
                         max_grad_norm=float(setup["max_grad_norm"]), sample_rate=float(setup["sample_rate"]),
                         grad_sample_mode=GRAD_SAMPLE_MODE, expected_rows=float(setup["expected_rows"]))
        ledger.spend(phase=f"{TRAINING_PHASE}/round {round_index + 1}", mechanism="subsampled_gaussian",
                     noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate, steps=steps,
                     target=f"{setup['model']} DP-SGD on the network that reads rows")
    else:
        ledger.spend(phase=f"{TRAINING_PHASE}/round {round_index + 1}", mechanism="exact",
                     noise_multiplier=0.0, steps=steps, target="non-DP training")
    with torch_threads(1):
        trainer = LocalTrainer(model, data, batch_size=int(setup["batch_size"]), dp=dp, seed=seed,
                               optimizer=dataclasses.replace(OPTIMIZER, **model.optimizer_options()),
                               secret=secret_source(f"{site}/train/{round_index}") if dp is not None else None)
        trainer.set_weights({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        stats = trainer.train(steps)
    out = {k: v.detach().numpy() for k, v in trainer.get_weights().items()}
    # A model without a public network (TVAE, diffusion) has no public loss: left out of the round's
    # losses (the progress bar and the model file's history showed 'public nan'). Under DP the private
    # loss stays at the site too: it is a mean over the site's rows that no noise covers (outside the
    # ledger); the public loss reads generated rows through the noised network only.
    losses = {k: v for k, v in (("private", stats.private_loss), ("public", stats.public_loss))
              if math.isfinite(v) and not (k == "private" and ledger.is_dp)}
    return {"weights": out, "losses": losses,
            "epsilon": ledger.epsilon if ledger.is_dp else float("inf"), "steps": stats.steps}


def model_from_weights(name: str, options: dict, transformer: TableTransformer, weights: dict[str, np.ndarray], *,
                       seed: int):
    if is_measured(name):
        return measured_module(name).MODEL.from_weights(transformer, weights, options)
    model = build_model({"model": name, "model_options": options, "seed": seed}, transformer)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return model


def sample_encoded(model, n: int, *, seed: int) -> np.ndarray:
    with torch_threads(1):  # same samples from the same model file on any machine
        return model.sample(n, generator=torch.Generator().manual_seed(int(seed)))


def update_bounds(setup: dict[str, Any], transformer: TableTransformer, *, rows: float) -> dict[str, float]:
    """How far one round of a site with about ``rows`` rows (its DP row estimate: public) can move each
    trained parameter: its network's learning rate x Adam's step bound over the round's steps
    (``fedtab.federation.aggregation.adam_step_bound``), from the job's settings alone. The steps are
    those of twice the rows, plus one: the estimate's noise cannot make an honest site's round longer.
    Under one public plan (``setup["plan_rows"]``: ``site_training_plan``) every site runs exactly its steps."""
    from fedtab.federation.aggregation import adam_step_bound

    model = build_model(setup, transformer)
    opt = dataclasses.replace(OPTIMIZER, **model.optimizer_options())
    steps = (steps_per_round(setup, float(setup["plan_rows"])) if setup.get("plan_rows")
             else steps_per_round(setup, 2.0 * max(float(rows), 1.0)) + 1)
    factor = adam_step_bound(opt.betas, steps)
    rates = {id(model.private_network()): opt.private_lr}
    if model.public_network() is not None:
        rates[id(model.public_network())] = opt.public_lr
    out: dict[str, float] = {}
    for net_name, net in model.networks().items():
        lr = rates.get(id(net))
        if lr is None:
            continue
        out.update({f"{net_name}.{p}": float(lr) * factor for p, _ in net.named_parameters()})
    return out

"""Empirical DP audits of fedtab's two mechanisms, for ``tests/test_dp_attacks.py`` and
``benchmarks/bench_dp_audit.py``.

Each audit runs the real mechanism many times on a table D and on D' = D plus one canary record, has an
attacker compute statistics from every output, and turns how well they tell D from D' into a lower
bound on epsilon (``fedtab.privacy.audit.empirical_epsilon``), to compare with the epsilon the ledger
or accountant claims. Variants: ``secret`` (production: the secret source), ``noise/10`` (the same
mechanism with a tenth of the noise: a calibration bug) and ``seeded`` (noise from a seed that the
attacker knows: the public job seed of each run, as fedtab did before the secret source). The attacker
always computes every statistic (the raw output and the output less the replayed seeded noise): a real
mechanism must survive both, the broken ones must be caught by one.

* ``encoding``: ``site_statistics`` of the histogram phase over a 50-row table of three declared
  columns; the statistic is the sum of the released noisy counts in the canary's cells.
* ``dpsgd``: ``PrivateNetwork`` (bk clipping) with ``poisson_sample`` on ``nn.Linear(4, 1)`` whose
  per-row loss is ``-(w . x)``: a row's gradient is ``-x``. D holds zero rows (zero gradients), the
  canary is ``100 e_1`` (clipped to norm C); ``T`` steps of SGD at learning rate 1 from w = 0. The
  statistic is the final ``w_1``, a sum of T Poisson-subsampled Gaussian releases of the canary.
"""

from __future__ import annotations

import contextlib
import functools
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedtab.privacy.accountant import GaussianEvent, compose_epsilon
from fedtab.privacy.audit import AuditResult, empirical_epsilon
from fedtab.privacy.dpsgd import DPSGDConfig, PrivateNetwork, poisson_sample, secure_gaussian
from fedtab.privacy.ledger import PrivacyLedger
from fedtab.privacy.secret import (
    SecretSource, SeededSource, _replace_source_for_tests, secret_source, seeded_sources_for_tests,
)
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform.plan import F_COUNTS, F_MISSING, PHASE_HISTOGRAM, EncodingDP, EncodingPlan, wire_key
from fedtab.transform.statistics import phase_request, site_statistics
from fedtab.validation import validate_table

VARIANTS = ("secret", "noise/10", "seeded")
DELTA = 1e-5


class TenthNoiseSource(SecretSource):
    """A broken source: the secret source's noise at a tenth of the scale asked for (a calibration bug)."""

    def normal(self, n: int) -> np.ndarray:
        return super().normal(n) / 10.0

    def discrete_gaussian(self, counts: np.ndarray, sigma: float) -> np.ndarray:
        return super().discrete_gaussian(counts, sigma / 10.0)


@dataclass(frozen=True)
class AuditRun:
    mechanism: str
    variant: str
    claimed_epsilon: float
    result: AuditResult
    runs_per_side: int
    seconds: float

    @property
    def flagged(self) -> bool:
        """The audit proves (at its confidence) more epsilon than the ledger claims."""
        return self.result.epsilon_lower > self.claimed_epsilon


@contextlib.contextmanager
def _variant_source(variant: str, seed: int):
    """Inside: ``secret_source`` as the variant makes it (``seeded``: replayable from the run's seed)."""
    if variant == "seeded":
        with _replace_source_for_tests(seeded_sources_for_tests(seed)):
            yield
    else:
        yield


# -- encoding --------------------------------------------------------------------------------------
ENCODING_LABEL = f"encoding/{PHASE_HISTOGRAM}"  # site_statistics' own label when given no source
ENCODING_SCHEMA = TableSchema(columns=(
    ColumnSpec("age", "numerical", subtype="int", nullable=False, lower=0.0, upper=30.0),
    ColumnSpec("colour", "categorical", nullable=False, categories=("red", "green", "blue")),
    ColumnSpec("smoker", "boolean", nullable=False),
))
ENCODING_CANARY = {"age": "30", "colour": "blue", "smoker": "True"}


@dataclass(frozen=True)
class EncodingCase:
    without: pd.DataFrame
    with_canary: pd.DataFrame
    plan: EncodingPlan
    request: dict
    cells: tuple[tuple[str, int], ...]  # (column, index of the canary's cell in its count vector)


@functools.lru_cache(maxsize=1)
def encoding_case(rows: int = 50) -> EncodingCase:
    rng = np.random.default_rng(7)
    raw = pd.DataFrame({"age": rng.integers(0, 26, rows).astype(str),
                        "colour": rng.choice(["red", "green"], rows),
                        "smoker": rng.choice(["False", "True"], rows, p=[0.8, 0.2])})
    without = validate_table(raw, ENCODING_SCHEMA, source="D")
    with_canary = validate_table(pd.concat([raw, pd.DataFrame([ENCODING_CANARY])], ignore_index=True),
                                 ENCODING_SCHEMA, source="D'")
    plan = EncodingPlan(ENCODING_SCHEMA, dp=EncodingDP(epsilon=1.0, delta=DELTA))
    request = phase_request(plan, PHASE_HISTOGRAM)
    # The age grid fits in the plan's cells: one cell per year (cell 30 holds the canary's 30).
    cells = (("age", 30), ("colour", 2), ("smoker", 1))
    return EncodingCase(without, with_canary, plan, request, cells)


def _encoding_vectors(release: dict, case: EncodingCase) -> list[np.ndarray]:
    return [np.append(np.asarray(release[wire_key(c.name, F_COUNTS)]), release[wire_key(c.name, F_MISSING)])
            for c in case.plan.columns]


def _encoding_run(frame: pd.DataFrame, case: EncodingCase, variant: str, seed: int) -> tuple[list[float], float]:
    """One release of the histogram phase; the attacker's statistics and the ledger's epsilon."""
    ledger = PrivacyLedger("audit", epsilon_budget=case.plan.dp.epsilon, delta=case.plan.dp.delta)
    with _variant_source(variant, seed):
        noise = TenthNoiseSource() if variant == "noise/10" else None  # None: the production default
        release = site_statistics(frame, case.plan, PHASE_HISTOGRAM, case.request, ledger=ledger, noise=noise)
    vectors = _encoding_vectors(release, case)
    # The replay: the seeded derivation from the (public) job seed, drawn in the site's order.
    replay = SeededSource([seed, zlib.crc32(ENCODING_LABEL.encode())])
    replayed = [replay.discrete_gaussian(np.zeros(v.size), case.plan.noise_multiplier) for v in vectors]
    index = {c.name: i for i, c in enumerate(case.plan.columns)}
    raw = sum(float(vectors[index[c]][k]) for c, k in case.cells)
    less_replay = sum(float(vectors[index[c]][k] - replayed[index[c]][k]) for c, k in case.cells)
    return [raw, less_replay], ledger.epsilon


def encoding_audit(variant: str, *, runs: int, confidence: float = 0.95) -> AuditRun:
    """Audit the histogram phase's release under ``variant`` with ``runs`` runs on each side."""
    case = encoding_case()
    t0 = time.perf_counter()
    stats, claimed = {}, set()
    for side, frame, offset in (("without", case.without, 0), ("with", case.with_canary, runs)):
        out = []
        for i in range(runs):
            s, eps = _encoding_run(frame, case, variant, seed=offset + i)  # every run its own public seed
            out.append(s)
            claimed.add(round(eps, 12))
        stats[side] = np.array(out)
    (claimed_eps,) = claimed
    result = empirical_epsilon(stats["without"], stats["with"], delta=case.plan.dp.delta, confidence=confidence)
    return AuditRun("encoding histogram", variant, claimed_eps, result, runs, time.perf_counter() - t0)


# -- DP-SGD ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SGDCase:
    noise_multiplier: float = 2.5
    sample_rate: float = 0.5
    steps: int = 3
    max_grad_norm: float = 1.0
    dim: int = 4
    rows: int = 9  # zero rows in D
    label: str = "audit/train/0"

    @property
    def expected_batch(self) -> float:
        """Public: the sample rate times D' 's size (the same on both sides)."""
        return self.sample_rate * (self.rows + 1)

    @property
    def claimed_epsilon(self) -> float:
        return compose_epsilon([GaussianEvent(self.noise_multiplier, self.sample_rate, self.steps)], delta=DELTA)


class _SGDRunner:
    """One network and its PrivateNetwork, reused across runs (weights reset to 0, a new source each run)."""

    def __init__(self, case: SGDCase, data: torch.Tensor):
        self.case, self.data = case, data
        self.net = nn.Linear(case.dim, 1, bias=False)
        config = DPSGDConfig(noise_multiplier=case.noise_multiplier, max_grad_norm=case.max_grad_norm,
                             sample_rate=case.sample_rate, grad_sample_mode="bk")
        self.private = PrivateNetwork(self.net, torch.optim.SGD(self.net.parameters(), lr=1.0), config=config,
                                      expected_batch_size=case.expected_batch, noise_source=SecretSource())

    def run(self, source: SecretSource) -> float:
        with torch.no_grad():
            self.net.weight.zero_()
        self.private.optimizer.noise_source = source
        for _ in range(self.case.steps):
            batch = self.data[poisson_sample(len(self.data), sample_rate=self.case.sample_rate, source=source)]
            self.net.zero_grad()
            self.private.zero_grad()
            self.private.backward(-self.net(batch).squeeze(1))
            self.private.step()
        return float(self.net.weight.detach()[0, 0])


def sgd_data(case: SGDCase, *, canary: bool) -> torch.Tensor:
    x = torch.zeros(case.rows + int(canary), case.dim)
    if canary:
        x[-1, 0] = 100.0
    return x


def replayed_sgd_w1(case: SGDCase, seed: int) -> float:
    """``B w_1`` as D' would give it if its noise and Poisson draws came from the seeded derivation of
    the run's public seed (the attacker re-draws both, in the site's order)."""
    src = SeededSource([seed, zlib.crc32(case.label.encode())])
    total = 0.0
    for _ in range(case.steps):
        in_batch = src.uniform(case.rows + 1)[-1] < case.sample_rate  # the canary is D' 's last row
        noise = secure_gaussian(src, case.dim, case.noise_multiplier * case.max_grad_norm)
        total += case.max_grad_norm * float(in_batch) - float(noise[0])
    return total


def dpsgd_audit(variant: str, *, runs: int, confidence: float = 0.95, case: SGDCase = SGDCase()) -> AuditRun:
    t0 = time.perf_counter()
    stats = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        for side, canary, offset in (("without", False, 0), ("with", True, runs)):
            runner = _SGDRunner(case, sgd_data(case, canary=canary))
            out = []
            for i in range(runs):
                seed = offset + i
                with _variant_source(variant, seed):
                    source = TenthNoiseSource() if variant == "noise/10" else secret_source(case.label)
                w1 = runner.run(source)
                out.append([w1, abs(case.expected_batch * w1 - replayed_sgd_w1(case, seed))])
            stats[side] = np.array(out)
    finally:
        torch.set_num_threads(before)
    result = empirical_epsilon(stats["without"], stats["with"], delta=DELTA, confidence=confidence)
    return AuditRun("DP-SGD", variant, case.claimed_epsilon, result, runs, time.perf_counter() - t0)

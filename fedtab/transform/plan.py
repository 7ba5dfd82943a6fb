"""The encoding plan: what every site computes in each phase, and how the preprocessing budget is split.

A plan is public: the coordinator sends it (``to_dict``) to every site before phase 1. It fixes the
columns encoded (id columns never are), the phases, the histogram resolution and, under DP, one
noise multiplier shared by every release, calibrated with the accountant so that all of a site's
preprocessing releases together compose to ``EncodingDP.epsilon`` at ``EncodingDP.delta``.

Phases (each: coordinator request -> ``site_statistics`` -> ``merge_statistics``):

``domain``     only for columns whose domain is not declared in the schema. Numerical/datetime
               columns without both bounds: non-DP, exact min and max; DP, a noisy histogram over
               fixed power-of-two magnitude cells (public layout) from which the coordinator reads
               coarse bounds. Categorical columns without declared categories: non-DP, the exact
               category set; DP, a stability-based histogram (DP set union): a category is sent only
               if its noisy count passes :func:`~fedtab.privacy.mechanisms.stability_threshold`.
``histogram``  every encoded column: counts over the now-public layout (numerical bins, or
               categories + an 'other' cell + a missing cell), Gaussian-noised under DP.
``pairs``      only when the plan names column ``pairs``: one two-way table per pair over coarse cells
               read off the merged histograms (``fedtab.transform.pairs``), Gaussian-noised under DP.

Budget split: ``R`` releases per site (one per column and phase, one per pair, and one row count the
site keeps for its own delta rule); each is a Gaussian mechanism with
L2 sensitivity 1 (a record moves one count by one) and the same noise multiplier ``z``; ``z`` is the
smallest for which R such releases compose to ``epsilon`` at ``delta * (1 - threshold_delta_share)``
(Opacus RDP), together with the histogram phase's rounding profiles (``rounding``), each at
``ROUNDING_NOISE_FACTOR * z``. The rest of delta pays for the thresholds of the DP set unions, split evenly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fedtab.errors import ConfigError
from fedtab.privacy.accountant import noise_multiplier_for
from fedtab.privacy.mechanisms import stability_threshold
from fedtab.schema import ColumnSpec, TableSchema

PHASE_DOMAIN = "domain"
PHASE_HISTOGRAM = "histogram"
PHASE_PAIRS = "pairs"
PHASES = (PHASE_DOMAIN, PHASE_HISTOGRAM, PHASE_PAIRS)
LEDGER_PHASE_PREFIX = "encoding/"
# Under DP each site also spends one release on a private estimate of its row count, which it keeps
# (the delta rule of its policy: delta < 1 / (10 x rows)); the plan budgets for it.
ROW_COUNT_RELEASES = 1
PLAN_FORMAT = "fedtab.encoding_plan/1"

# Wire keys: flat "<column>/<field>" so a message maps 1:1 onto a Flower RecordDict
# (numpy arrays -> ArrayRecord, scalars/strings/lists of strings -> ConfigRecord).
KEY_PHASE = "phase"
KEY_N_SITES = "n_sites"
F_MIN, F_MAX = "min", "max"
F_LOWER, F_UPPER = "lower", "upper"
F_COUNTS = "counts"
F_KEYS = "keys"
F_EDGES = "edges"
F_CATEGORIES = "categories"
F_OTHER = "other"
F_MISSING = "missing"
F_NOISE_SD = "noise_sd"
F_RAW = "raw_counts"  # merged statistics only: the summed noisy cells before norm-sub
F_ROUNDING = "rounding"
# A value's rounding class: a multiple of 10, of 5 (not 10), of 2 (not 10) grid steps, or none of them;
# ROUNDING_STEPS[i] is the rounding that class i stands for.
ROUNDING_STEPS = (10, 5, 2, 1)


def rounding_classes(k: np.ndarray) -> np.ndarray:
    """The rounding class (index into ``ROUNDING_STEPS``) of each whole number of grid steps ``k``."""
    k = np.asarray(k, dtype=np.int64)
    return np.select([k % 10 == 0, k % 5 == 0, k % 2 == 0], [0, 1, 2], default=3)


# ROUNDING_MIX[i, j]: the share of values rounded to multiples of ROUNDING_STEPS[j] that land in class i
# (multiples of 5 are multiples of 10 half the time; unrounded values land 0.1 / 0.1 / 0.4 / 0.4).
ROUNDING_MIX = np.stack([np.bincount(rounding_classes(step * np.arange(10)), minlength=len(ROUNDING_STEPS)) / 10.0
                         for step in ROUNDING_STEPS], axis=1)
# A rounding profile is noised at this multiple of the plan's noise multiplier: 4 counts of every
# value need less precision than a histogram's cells, and at 2x four profiles cost as much budget as
# one histogram (Adult at epsilon 1, 5 profiles at 1x: CTGAN quality 0.824 -> 0.815, TSTR 0.879 -> 0.867).
ROUNDING_NOISE_FACTOR = 2.0

BOOLEAN_CATEGORIES = ("False", "True")
DEFAULT_BINS = 200
DEFAULT_DP_BINS = 40


def wire_key(column: str, field_name: str) -> str:
    return f"{column}/{field_name}"


@dataclass(frozen=True)
class EncodingDP:
    """Preprocessing privacy budget of each site: all encoding releases together are (epsilon, delta)-DP."""

    epsilon: float
    delta: float
    threshold_delta_share: float = 0.5

    def __post_init__(self):
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) \
                or not (0 < self.epsilon < math.inf):
            raise ConfigError(f"The 'epsilon' parameter of EncodingDP must be a float in (0, inf). Got {self.epsilon!r} instead.")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not (0 < self.delta < 1):
            raise ConfigError(f"The 'delta' parameter of EncodingDP must be a float in (0, 1). Got {self.delta!r} instead.")
        if not (0 < self.threshold_delta_share < 1):
            raise ConfigError("The 'threshold_delta_share' parameter of EncodingDP must be a float in (0, 1). "
                              f"Got {self.threshold_delta_share!r} instead.")


def grid_step(spec: ColumnSpec) -> float | None:
    """Spacing of the values a column can hold (1 for integers, 10^-precision), None if continuous."""
    if spec.is_integer:
        return 1.0
    if spec.type == "numerical" and spec.precision is not None:
        return 10.0 ** -spec.precision
    if spec.type == "datetime" and spec.datetime_format and not any(t in spec.datetime_format for t in ("%H", "%M", "%S")):
        return 1.0
    return None


@dataclass(frozen=True)
class EncodingPlan:
    """Public description of the federated encoding (see module docstring).

    ``bins``: histogram cells per numerical column (None: 200 without DP, 40 under DP, where fewer
    cells mean less noise per cell). Integer columns (and floats with a ``precision``) whose grid
    fits in ``bins`` cells get one cell per representable value.
    ``other_label``: what the 'other' bucket (categories dropped by the DP threshold) decodes to.
    ``pairs``: column pairs whose two-way tables are released too (for the sampler's calibration);
    :func:`target_pairs` gives a target column against every other one.
    ``rounding`` (None: under DP only, where cells are coarse; the non-DP figures were measured
    without it): numerical columns on a grid (integers, fixed precision) too fine for one cell per
    value also release how their values round (4 counts: multiples of 10, 5, 2 grid steps, other) in
    the histogram phase, and decoded values are rounded to match (``NumericalColumnTransformer``).
    Measured values often heap on round numbers: 65% of the heart hospitals' blood pressures are
    multiples of 10, and that alone told real from smooth synthetic values at ROC-AUC 0.83.
    ``site_column``: a categorical column whose value at each site is that site's name (added by the
    site, declared categories = the site names); the models condition on it (``ConditionSpan.pinned``).
    """

    schema: TableSchema
    dp: EncodingDP | None = None
    bins: int | None = None
    max_modes: int = 10
    weight_threshold: float = 0.005
    other_label: str = "<other>"
    seed: int = 0
    pairs: tuple[tuple[str, str], ...] = ()
    rounding: bool | None = None
    site_column: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "pairs", tuple(tuple(p) for p in self.pairs))
        encoded = {c.name for c in self.columns}
        seen = set()
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(c, str) for c in pair):
                raise ConfigError(f"The 'pairs' parameter of EncodingPlan must hold pairs of two different column "
                                  f"names. Got {pair!r} instead.")
            bad = [c for c in pair if c not in encoded]
            if bad:
                raise ConfigError(f"The pair {list(pair)} names column(s) {bad} that are not encoded columns of the "
                                  f"schema ({sorted(encoded)[:10]}); id columns are never encoded.")
            if frozenset(pair) in seen:
                raise ConfigError(f"The pair {list(pair)} is named twice in 'pairs'.")
            seen.add(frozenset(pair))
        if self.bins is not None and (isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2):
            raise ConfigError(f"The 'bins' parameter of EncodingPlan must be an int >= 2 or None. Got {self.bins!r} instead.")
        if not isinstance(self.max_modes, int) or self.max_modes < 1:
            raise ConfigError(f"The 'max_modes' parameter of EncodingPlan must be an int >= 1. Got {self.max_modes!r} instead.")
        if not (0 <= self.weight_threshold < 1):
            raise ConfigError("The 'weight_threshold' parameter of EncodingPlan must be a float in [0, 1). "
                              f"Got {self.weight_threshold!r} instead.")
        if not self.columns:
            raise ConfigError("EncodingPlan: the schema has no column to encode (id columns are never encoded).")
        if self.site_column is not None:
            spec = next((c for c in self.columns if c.name == self.site_column), None)
            if spec is None or spec.type != "categorical" or not spec.categories:
                raise ConfigError(f"The 'site_column' parameter of EncodingPlan must name a categorical column with "
                                  f"declared categories (the site names). Got {self.site_column!r}"
                                  f"{'' if spec is None else f' of type {spec.type!r}, categories {spec.categories!r}'} instead.")

    # -- columns and phases ------------------------------------------------------------------
    @property
    def columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.schema.columns if c.type != "id")

    @property
    def n_bins(self) -> int:
        if self.bins is not None:
            return self.bins
        return DEFAULT_DP_BINS if self.dp is not None else DEFAULT_BINS

    @staticmethod
    def needs_domain(spec: ColumnSpec) -> bool:
        """True when the column's domain must be learned from the sites (a privacy spend under DP)."""
        if spec.type in ("numerical", "datetime"):
            return spec.lower is None or spec.upper is None
        if spec.type == "categorical":
            return spec.categories is None
        return False

    @staticmethod
    def categories_of(spec: ColumnSpec) -> tuple[str, ...] | None:
        if spec.type == "boolean":
            return BOOLEAN_CATEGORIES
        return spec.categories

    def domain_columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if self.needs_domain(c))

    def phases(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if (p != PHASE_DOMAIN or self.domain_columns()) and (p != PHASE_PAIRS or self.pairs))

    def rounding_columns(self) -> tuple[ColumnSpec, ...]:
        """Numerical columns that release a rounding profile (see ``rounding``)."""
        if not (self.dp is not None if self.rounding is None else self.rounding):
            return ()
        out = []
        for c in self.columns:
            step = grid_step(c)
            if c.type != "numerical" or step is None:
                continue
            if c.lower is None or c.upper is None or round((c.upper - c.lower) / step) + 1 > self.n_bins:
                out.append(c)
        return tuple(out)

    def releases(self, phase: str | None = None) -> int:
        """Number of Gaussian releases per site at the plan's noise multiplier in ``phase`` (all phases
        when None); the histogram phase's rounding profiles come on top, at ``ROUNDING_NOISE_FACTOR`` x."""
        n_dom, n_hist, n_pairs = len(self.domain_columns()), len(self.columns), len(self.pairs)
        return {PHASE_DOMAIN: n_dom, PHASE_HISTOGRAM: n_hist, PHASE_PAIRS: n_pairs,
                None: n_dom + n_hist + n_pairs}[phase]

    def threshold_columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.domain_columns() if c.type == "categorical")

    def uses_other(self, spec: ColumnSpec) -> bool:
        """An 'other' bucket exists only where a DP threshold may have dropped categories."""
        return self.dp is not None and spec.type == "categorical" and spec.categories is None

    # -- DP calibration (cached_property works on a frozen dataclass: it writes __dict__ directly) ---
    @property
    def threshold_delta(self) -> float:
        """Delta charged per thresholded release (DP set union of one column)."""
        n = len(self.threshold_columns())
        return 0.0 if self.dp is None or n == 0 else self.dp.delta * self.dp.threshold_delta_share / n

    @property
    def accounting_delta(self) -> float:
        return self.dp.delta - self.threshold_delta * len(self.threshold_columns())

    @cached_property
    def noise_multiplier(self) -> float:
        """Noise multiplier z of every release (sigma = z, since each count has sensitivity 1); 0 without DP."""
        if self.dp is None:
            return 0.0
        # One more release than the phases hold: the site's private row count (its delta rule).
        return noise_multiplier_for(target_epsilon=self.dp.epsilon, delta=self.accounting_delta,
                                    sample_rate=1.0, steps=self.releases() + ROW_COUNT_RELEASES,
                                    scaled=((ROUNDING_NOISE_FACTOR, len(self.rounding_columns())),))

    @property
    def threshold(self) -> float:
        """Noisy count a category must exceed at a site to be released (DP set union); 0 without DP."""
        if self.dp is None or not self.threshold_columns():
            return 0.0
        return stability_threshold(sigma=self.noise_multiplier, delta=self.threshold_delta)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        dp = None if self.dp is None else {"epsilon": self.dp.epsilon, "delta": self.dp.delta,
                                           "threshold_delta_share": self.dp.threshold_delta_share}
        return {"format": PLAN_FORMAT, "schema": self.schema.to_dict(), "dp": dp, "bins": self.bins,
                "max_modes": self.max_modes, "weight_threshold": self.weight_threshold,
                "other_label": self.other_label, "seed": self.seed, "pairs": [list(p) for p in self.pairs],
                "rounding": self.rounding, "site_column": self.site_column}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncodingPlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ConfigError(f"Not an encoding plan: expected a dict with format {PLAN_FORMAT!r}.")
        dp = None if data["dp"] is None else EncodingDP(**data["dp"])
        return cls(schema=TableSchema.from_dict(data["schema"], source="encoding plan"), dp=dp,
                   bins=data["bins"], max_modes=data["max_modes"], weight_threshold=data["weight_threshold"],
                   other_label=data["other_label"], seed=data["seed"],
                   pairs=tuple(tuple(p) for p in data.get("pairs", [])),
                   rounding=data.get("rounding", False),  # plans written before it had none
                   site_column=data.get("site_column"))


def target_pairs(schema: TableSchema, target: str | None) -> tuple[tuple[str, str], ...]:
    """``(target, c)`` for every other encoded column ``c`` (empty when ``target`` is None)."""
    if target is None:
        return ()
    encoded = [c.name for c in schema.columns if c.type != "id"]
    if target not in encoded:
        raise ConfigError(f"The target column '{target}' is not an encoded column of the schema "
                          f"({encoded[:10]}{'...' if len(encoded) > 10 else ''}). Name one of them, or none.")
    return tuple((target, c) for c in encoded if c != target)

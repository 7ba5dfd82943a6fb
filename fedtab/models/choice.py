"""The model ``FederatedSynthesizer`` and ``fedtab train`` use when none is named (``model="auto"``).

The choice reads only what is public before any site is asked: whether the job is DP, the declared
schema's column kinds and count. It is made the same way for every table (never tuned to one) and comes
with the reason, which the API keeps (``FederatedSynthesizer.model_choice_``) and the CLI prints.

Today it picks the marginal-based model ("mst") for every table whose columns it can model (all
kinds fedtab reads: categorical, boolean, numerical, datetime; id columns are regenerated), because of
fedtab's models it measured best on the tables all of them were run on, DP or not (``benchmarks/bench_mst.py``, 3 seeds, 4 sites):
quality / TSTR at epsilon 1 heart 0.746 / 0.622 and Adult 0.870 / 0.823 against CTGAN's 0.569 / 0.428
and 0.751 / 0.802; without DP heart 0.899 / 0.862 and Adult 0.922 / 0.879 against TVAE's 0.831 / 0.858
and 0.866 / 0.880. A table with more columns than ``MST_MAX_COLUMNS`` goes to CTGAN (the pair scores
grow with the square of the columns).

The encoding's share of each site's epsilon (``preprocessing_share``), when a job leaves it unset, is
chosen the same way (``preprocessing_share_for``): 0.3 for the marginal model with a declared target
(sampling draws the target again from the target's two-way tables the encoding measures; at 0.1 they
stayed under the noise: ``benchmarks/bench_mst.py``, epsilon 1, 4 sites, 3 seeds, TSTR at 0.3 against
0.1: Adult 0.813 against 0.634, Fair 0.672 against 0.505, heart 0.628 against 0.691 and breast cancer
0.721 against 0.733 (sd 0.09-0.16 on those two); quality at 0.3 as high or higher on all four: 0.745 /
0.726, 0.859 / 0.845, 0.943 / 0.931, 0.643 / 0.643), else 0.1, the share every model had before.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
MST_MAX_COLUMNS = 100
WHY_MST = ("of fedtab's models it measured best on heart and Adult, with DP and without (benchmarks/bench_mst.py: "
           "quality / TSTR at epsilon 1 on 4 sites, heart 0.746 / 0.622 and Adult 0.870 / 0.823, against "
           "CTGAN's 0.569 / 0.428 and 0.751 / 0.802), and across 7 tables it fits in 6-45 s "
           "(benchmarks/bench_tables.py)")


DEFAULT_PREPROCESSING_SHARE = 0.1
TARGET_PREPROCESSING_SHARE = 0.3


def preprocessing_share_for(model: str, *, target: str | None) -> float:
    """The encoding's share of epsilon for a job that sets none (see the module docstring): more for a
    model trained by measurement with a declared target (sampling draws the target again from the two-way
    tables the encoding measures)."""
    from fedtab.models.registry import is_measured

    return TARGET_PREPROCESSING_SHARE if is_measured(model) and target is not None else DEFAULT_PREPROCESSING_SHARE


@dataclass(frozen=True)
class ModelChoice:
    model: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "reason": self.reason}


def choose_model(*, dp: bool, schema=None) -> ModelChoice:
    """The model for a job named "auto" (see the module docstring)."""
    n_columns = None if schema is None else sum(1 for c in schema.columns if c.type != "id")
    budget = "under DP" if dp else "without DP"
    if n_columns is not None and n_columns > MST_MAX_COLUMNS:
        return ModelChoice("ctgan", f"{n_columns} columns: more than the marginal model's {MST_MAX_COLUMNS} "
                                    "(its pair scores grow with the square of the columns); CTGAN instead")
    size = "" if n_columns is None else f"{n_columns} columns, "
    return ModelChoice("mst", f"{size}{budget}: the marginal-based model, since {WHY_MST}")

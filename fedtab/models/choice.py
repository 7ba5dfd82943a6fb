"""The model ``FederatedSynthesizer`` and ``fedtab train`` use when none is named (``model="auto"``).

The choice reads only what is public before any site is asked: whether the job is DP, the declared
schema's column kinds and count. It is made the same way for every table (never tuned to one) and comes
with the reason, which the API keeps (``FederatedSynthesizer.model_choice_``) and the CLI prints.

Today it picks the marginal-based model ("mst") for every table whose columns it can model (all
kinds fedtab reads: categorical, boolean, numerical, datetime; id columns are regenerated), because it
measured best on every benchmark table, DP or not (``benchmarks/bench_mst.py``, 3 seeds, 4 sites):
quality / TSTR at epsilon 1 heart 0.746 / 0.622 and Adult 0.870 / 0.823 against CTGAN's 0.569 / 0.428
and 0.751 / 0.802; without DP heart 0.899 / 0.862 and Adult 0.922 / 0.879 against TVAE's 0.831 / 0.858
and 0.866 / 0.880. A table with more columns than ``MST_MAX_COLUMNS`` goes to CTGAN (the pair scores
grow with the square of the columns).
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
MST_MAX_COLUMNS = 100
WHY_MST = ("it measured best on every benchmark table, with DP and without (benchmarks/bench_mst.py: "
           "quality / TSTR at epsilon 1 on 4 sites, heart 0.746 / 0.622 and Adult 0.870 / 0.823, against "
           "CTGAN's 0.569 / 0.428 and 0.751 / 0.802)")


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

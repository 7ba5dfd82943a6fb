"""One-hot encoding of categorical and boolean columns, fitted from merged (noisy) counts.

The one-hot block is ``[categories..., other?, missing?]``:

* ``other`` exists only under DP for a column whose domain was learned (not declared): it holds the
  categories the DP threshold withheld, which the coordinator never saw. It decodes to the plan's
  ``other_label`` (default ``"<other>"``). We chose an explicit label over mapping to the most
  frequent kept category (that would inflate it) or to missing (that would fake missingness);
  MST's domain compression can decode its merged bucket back to real values only because its domain
  is public, which a learned domain under DP is not.
* ``missing`` exists for nullable columns that have missing values. For categorical columns it is a
  slot of the same one-hot (not a separate indicator span) so every row has exactly one hot slot and
  CTGAN can condition on "missing" like on any category.

``frequencies_`` (over the whole block) are the merged counts clipped at 0 and normalised; they feed
the column's :class:`~fedtab.transform.spans.ConditionSpan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtab.errors import SchemaError, check_is_fitted
from fedtab.schema import ColumnSpec
from fedtab.transform.numerical import has_missing_slot
from fedtab.transform.spans import SpanInfo


class CategoricalColumnTransformer:
    """One categorical or boolean column. ``fit_from_counts`` returns self; learned attrs end in ``_``."""

    def __init__(self, spec: ColumnSpec, *, other_label: str = "<other>"):
        self.spec = spec
        self.other_label = other_label

    def fit_from_counts(self, categories, counts, *, other: bool, missing: float = 0.0, noise_sd: float = 0.0):
        """``counts`` has one entry per category, plus one for 'other' when ``other`` is true."""
        self.categories_ = [str(c) for c in categories]
        self.has_other_ = bool(other)
        self.has_missing_ = has_missing_slot(self.spec, missing=missing, noise_sd=noise_sd)
        counts = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
        if self.has_missing_:
            counts = np.append(counts, max(float(missing), 0.0))
        if counts.size == 0:
            # Nothing survived the DP threshold and there is no 'other' bucket: keep one slot so the
            # block is never empty (it only happens with a declared-empty domain, which the schema forbids).
            self.has_other_, counts = True, np.ones(1)
        total = counts.sum()
        self.frequencies_ = counts / total if total > 0 else np.full(counts.size, 1.0 / counts.size)
        return self

    @property
    def output_dim(self) -> int:
        check_is_fitted(self, "frequencies_")
        return len(self.categories_) + int(self.has_other_) + int(self.has_missing_)

    @property
    def spans(self) -> list[SpanInfo]:
        return [SpanInfo(self.output_dim, "softmax", self.spec.name, "category")]

    def transform(self, values: np.ndarray) -> np.ndarray:
        """object array of str/None -> float32 one-hot block."""
        check_is_fitted(self, "frequencies_")
        n_cat = len(self.categories_)
        index = {c: i for i, c in enumerate(self.categories_)}
        other_slot = n_cat if self.has_other_ else None
        missing_slot = n_cat + int(self.has_other_) if self.has_missing_ else None
        # Without a missing slot (no significant missingness was released) a missing value goes to
        # 'other' if there is one, else to the most frequent category: the encoding stays one-hot.
        fallback = other_slot if other_slot is not None else int(np.argmax(self.frequencies_[:max(n_cat, 1)]))
        slots = np.empty(len(values), dtype=np.int64)
        unknown = set()
        for i, v in enumerate(values):
            if v is None:
                slots[i] = missing_slot if missing_slot is not None else fallback
            elif v in index:
                slots[i] = index[v]
            elif other_slot is not None:
                slots[i] = other_slot
            else:
                unknown.add(v)
        if unknown:
            raise SchemaError(
                f"Column '{self.spec.name}': value(s) {sorted(unknown)[:5]} were not in the domain the transformer "
                f"was fitted on ({self.categories_[:10]}{'...' if n_cat > 10 else ''}). Declare them in the schema's "
                "'categories' or fit the transformer on data that holds them."
            )
        out = np.zeros((len(values), self.output_dim), dtype=np.float32)
        out[np.arange(len(values)), slots] = 1.0
        return out

    @property
    def labels(self) -> list:
        """What each slot decodes to, in slot order (``frequencies_`` has one entry per label)."""
        check_is_fitted(self, "frequencies_")
        return list(self.categories_) + ([self.other_label] if self.has_other_ else []) \
            + ([None] if self.has_missing_ else [])

    def inverse_transform(self, block: np.ndarray) -> np.ndarray:
        """one-hot (or softmax) block -> object array of str/None."""
        table = np.array(self.labels, dtype=object)
        return table[np.argmax(block, axis=1)]

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "frequencies_")
        return {"kind": "categorical", "column": self.spec.name, "other_label": self.other_label,
                "categories": list(self.categories_), "has_other": int(self.has_other_),
                "has_missing": int(self.has_missing_), "frequencies": self.frequencies_}

    @classmethod
    def from_dict(cls, data: dict[str, Any], spec: ColumnSpec) -> "CategoricalColumnTransformer":
        self = cls(spec, other_label=str(data["other_label"]))
        self.categories_ = [str(c) for c in data["categories"]]
        self.has_other_ = bool(data["has_other"])
        self.has_missing_ = bool(data["has_missing"])
        self.frequencies_ = np.asarray(data["frequencies"], dtype=np.float64)
        return self

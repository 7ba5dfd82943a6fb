"""CTGAN-style condition vectors over the condition spans, fully batched (no Python loop over rows).

A condition picks one condition column per row and one of its categories; the condition vector is the
one-hot of that (column, category) pair in the concatenation of all condition spans. Three ways to draw
conditions, all seeded by an explicit ``torch.Generator``:

* ``from_frequencies``: column uniform, category from the spans' frequencies (merged across sites and
  noisy under DP: data-independent at the site). Used for generator steps, fake rows and sampling.
* ``from_rows``: column uniform, category read off the row itself. Under DP the discriminator's real rows
  are a Poisson sample and their conditions come from the rows, so the accountant's assumption
  (a uniform, independent sample of the site's rows) holds.
* ``RowIndex``: CTGAN's training-by-sampling (rows picked by category, log-frequency); non-DP only,
  because picking rows by category is not a Poisson sample.

A **pinned** span (``ConditionSpan.pinned``: the site column) is never the drawn column: every row is
conditioned on it as well, through a second hot entry. At a site (``pin``) it is that site's own
category, for generated and real rows alike, so each site trains the generator's slice for its own
rows; when sampling (nothing pinned) it is drawn from the span's frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedtab.errors import ConfigError
from fedtab.transform.spans import ConditionSpan, SpanInfo, span_offsets


@dataclass(frozen=True)
class CondBatch:
    """A batch of conditions: the one-hot ``vector`` (rows x condition width) and, per row, the chosen
    condition ``column`` and ``category`` (index within that column), both int64; ``site``: each row's
    category of the pinned span (None without one)."""

    vector: torch.Tensor
    column: torch.Tensor
    category: torch.Tensor
    site: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.vector.shape[0]


def _cdf(weights: torch.Tensor) -> torch.Tensor:
    """Row-wise cumulative distribution of non-negative weights (columns x max_dim); padding has weight 0."""
    cdf = torch.cumsum(weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-300), dim=1)
    cdf[:, -1] = 1.0
    return cdf


def _draw(cdf: torch.Tensor, column: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One category per row from ``cdf[column]`` by inverse CDF (cheaper than ``torch.multinomial``).
    Zero-weight categories (padding, absent categories) have a zero-width interval and are never drawn."""
    u = torch.rand(column.shape[0], 1, generator=generator, dtype=torch.float64)
    return torch.searchsorted(cdf[column], u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


class Conditions:
    """The condition spans of a model, laid out for batched gathers."""

    def __init__(self, spans: list[SpanInfo], condition_spans: list[ConditionSpan]):
        by_offset = {off: s for off, s in zip(span_offsets(spans), spans)}
        for c in condition_spans:
            span = by_offset.get(c.offset)
            if span is None or span.activation != "softmax" or span.dim != c.dim:
                raise ConfigError(
                    f"Condition span '{c.column}' (offset {c.offset}, dim {c.dim}) must coincide with a "
                    f"softmax span of the encoded row. Got {span!r} at that offset instead."
                )
            freq = np.asarray(c.frequencies, dtype=np.float64)
            if freq.shape != (c.dim,) or not np.all(freq >= 0) or freq.sum() <= 0:
                raise ConfigError(
                    f"The frequencies of condition span '{c.column}' must be {c.dim} non-negative numbers "
                    f"with a positive sum. Got {freq!r} instead."
                )
        pinned = [j for j, c in enumerate(condition_spans) if c.pinned]
        if len(pinned) > 1:
            raise ConfigError(f"At most one condition span may be pinned (the site column). Got "
                              f"{[condition_spans[j].column for j in pinned]} instead.")
        self.spans = list(condition_spans)
        self.n_columns = len(self.spans)
        self.pinned: int | None = pinned[0] if pinned else None
        # The columns a condition is drawn from: all but the pinned one (which every row carries anyway).
        self.free = torch.tensor([j for j in range(self.n_columns) if j != self.pinned] or pinned, dtype=torch.long)
        # The pinned span is the only condition column: the drawn condition is the site itself (one hot).
        self.site_only = self.pinned is not None and self.n_columns == 1
        self.site: int | None = None
        self.dim = sum(c.dim for c in self.spans)
        dims = [c.dim for c in self.spans]
        self.max_dim = max(dims, default=1)
        self.dims = torch.tensor(dims, dtype=torch.long)
        self.row_offsets = torch.tensor([c.offset for c in self.spans], dtype=torch.long)
        self.cond_offsets = torch.tensor(np.cumsum([0] + dims[:-1]) if dims else [], dtype=torch.long)
        arange = torch.arange(self.max_dim)
        self.pad_mask = arange[None, :] < self.dims[:, None]  # (columns, max_dim)
        freq = torch.zeros(self.n_columns, self.max_dim, dtype=torch.float64)
        for j, c in enumerate(self.spans):
            f = torch.as_tensor(np.asarray(c.frequencies, dtype=np.float64))
            freq[j, : c.dim] = f / f.sum()
        self.frequencies = freq
        self._cdf = _cdf(freq)

    def pin(self, category: int | None) -> None:
        """Condition every row on this category of the pinned span (a site's own; None: drawn from the
        span's frequencies, as when sampling). No-op without a pinned span."""
        if self.pinned is None:
            return
        if category is not None and not 0 <= int(category) < self.spans[self.pinned].dim:
            raise ConfigError(f"The pinned category of condition span '{self.spans[self.pinned].column}' must be "
                              f"in [0, {self.spans[self.pinned].dim}). Got {category!r} instead.")
        self.site = None if category is None else int(category)

    def hot(self, cond: CondBatch) -> torch.Tensor | None:
        """Each row's hot columns of the condition vector: (rows,), or (rows, 2) with a pinned span
        (the drawn condition, then the site); None without condition spans."""
        if not self.dim:
            return None
        hot = self.cond_offsets[cond.column] + cond.category
        if self.pinned is None or self.site_only:
            return hot
        return torch.stack([hot, self.cond_offsets[self.pinned] + cond.site], dim=1)

    def one_hot(self, column: torch.Tensor, category: torch.Tensor, site: torch.Tensor | None = None) -> CondBatch:
        vec = torch.zeros(column.shape[0], self.dim)
        if self.dim:
            vec.scatter_(1, (self.cond_offsets[column] + category)[:, None], 1.0)
        if self.pinned is not None:
            if site is None:
                raise ConfigError("A batch of conditions over a pinned span needs each row's site category.")
            vec[torch.arange(column.shape[0]), self.cond_offsets[self.pinned] + site] = 1.0
        return CondBatch(vec, column, category, site)

    def empty(self, n: int) -> CondBatch:
        z = torch.zeros(n, dtype=torch.long)
        return CondBatch(torch.zeros(n, self.dim), z, z)

    def draw_columns(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """The condition column of each row: uniform over the columns that are not pinned."""
        return self.free[torch.randint(len(self.free), (n,), generator=generator)]

    def draw_sites(self, n: int, *, generator: torch.Generator) -> torch.Tensor | None:
        """Each row's pinned category: the pinned site, or drawn from the span's frequencies."""
        if self.pinned is None:
            return None
        if self.site is not None:
            return torch.full((n,), self.site, dtype=torch.long)
        return _draw(self._cdf, torch.full((n,), self.pinned, dtype=torch.long), generator)

    def _with_sites(self, column: torch.Tensor, category: torch.Tensor, site: torch.Tensor | None) -> CondBatch:
        """The batch for drawn conditions and sites (``site_only``: the drawn condition is the site)."""
        if site is not None and self.site_only:
            category = site
        return self.one_hot(column, category, site)

    def from_frequencies(self, n: int, *, generator: torch.Generator) -> CondBatch:
        """Column uniform, category drawn from that column's frequencies."""
        if not self.n_columns:
            return self.empty(n)
        column = self.draw_columns(n, generator=generator)
        category = _draw(self._cdf, column, generator) if n else column
        return self._with_sites(column, category, self.draw_sites(n, generator=generator))

    def categories_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Category index of every row in every condition column: (rows x columns), argmax of each span.
        One argmax per column over its slice (a padded (rows, columns, max_dim) gather was ~20x slower:
        every federated round builds a ``RowIndex`` over all the site's rows)."""
        if not self.n_columns:
            return torch.zeros(rows.shape[0], 0, dtype=torch.long)
        return torch.stack([rows[:, c.offset : c.offset + c.dim].argmax(dim=1) for c in self.spans], dim=1)

    def from_rows(self, rows: torch.Tensor, *, generator: torch.Generator) -> CondBatch:
        """Column uniform per row, category read off the row's own one-hot block."""
        n = rows.shape[0]
        if not self.n_columns:
            return self.empty(n)
        column = self.draw_columns(n, generator=generator)
        site = None
        if self.pinned is not None:
            p = self.spans[self.pinned]
            site = rows[:, p.offset : p.offset + p.dim].argmax(dim=1) if n else column
        if n == 0:
            return self.one_hot(column, column, site)
        idx = self.row_offsets[column][:, None] + torch.arange(self.max_dim)[None, :]
        block = rows.gather(1, idx.clamp(max=rows.shape[1] - 1))
        block = block.masked_fill(~self.pad_mask[column], float("-inf"))
        return self._with_sites(column, block.argmax(dim=1), site)


class RowIndex:
    """The site's rows grouped by (condition column, category), for CTGAN's training-by-sampling.

    ``sample`` draws a column uniformly, a category with probability proportional to log(1 + count)
    among the categories present at this site, then a row of that category: all batched. It reads the
    data by category, so it is for non-DP training only (the trainer never builds one under DP).
    """

    def __init__(self, conditions: Conditions, data: torch.Tensor):
        self.conditions = conditions
        cats = conditions.categories_of(data)  # (rows, columns)
        self.categories = cats
        gid = (conditions.cond_offsets[None, :] + cats).reshape(-1)
        self.counts = torch.bincount(gid, minlength=conditions.dim)
        self.sorted_rows = torch.argsort(gid, stable=True) // conditions.n_columns
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        logp = torch.zeros(conditions.n_columns, conditions.max_dim, dtype=torch.float64)
        flat = torch.log1p(self.counts.double())
        for j in range(conditions.n_columns):  # once per column at construction, not per row
            o, d = int(conditions.cond_offsets[j]), int(conditions.dims[j])
            logp[j, :d] = flat[o : o + d]
        self.log_frequencies = logp
        self._cdf = _cdf(logp)

    def sample(self, n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, CondBatch]:
        """``n`` row indices and their conditions (each row has its condition's category, and its own
        category of the pinned span)."""
        c = self.conditions
        column = c.draw_columns(n, generator=generator)
        category = _draw(self._cdf, column, generator)
        gid = c.cond_offsets[column] + category
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        pick = self.sorted_rows[self.starts[gid] + (u * self.counts[gid]).long().clamp(max=self.counts[gid] - 1)]
        site = None if c.pinned is None else self.categories[pick, c.pinned]
        return pick, c._with_sites(column, category, site)

"""What the encoding reads under DP for columns declared without a domain is told to the user, and a
target none of whose values passes the DP threshold stops the job before training (issue 20, defaults
that work on a table never seen: a newcomer's inferred schema declares no bounds or categories).

Found on the held-out Seattle weather table (4 sites of 292 rows, epsilon 1, the schema as `fedtab
schema infer` wrote it): the DP ranges came out [0, 0.0039] for daily rainfall and [16, 32] for maximum
temperatures, and in one run no weather kind passed the threshold, so every synthetic value of the
target read '<other>', with nothing said."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedtab
from fedtab.errors import ConfigError, ReadUnderDPWarning
from fedtab.federation.marginals import PHASES
from fedtab.federation.site import MEASURE, TRAIN
from fedtab.federation.transport import InProcessTransport
from fedtab.schema import ColumnSpec, TableSchema


def _sites(n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("north", "south", "east"):
        kind = rng.choice(["a", "b"], size=n)
        out[name] = pd.DataFrame({"kind": kind, "value": np.round(rng.normal(np.where(kind == "a", 30, 60), 5), 1)})
    return out


UNDECLARED = TableSchema((ColumnSpec("kind", "categorical"), ColumnSpec("value", "numerical", subtype="float")))
DECLARED = TableSchema((ColumnSpec("kind", "categorical", categories=("a", "b")),
                        ColumnSpec("value", "numerical", subtype="float", lower=0.0, upper=100.0)))


class _Asked(InProcessTransport):
    kinds: list = []

    def outcomes(self, kind, bodies):  # the kind, and a measurement's phase (secure aggregation's keys are not one)
        phase = next(iter(bodies.values()), {}).get("phase") if kind == MEASURE else None
        self.kinds.append(kind if phase in (None, *PHASES) else f"{kind}:{phase}")
        return super().outcomes(kind, bodies)


def test_a_target_none_of_whose_values_passes_the_threshold_stops_the_job_before_training(monkeypatch):
    """The attack on trust: 3 sites of 30 rows at epsilon 1 hold too few rows of either kind for the
    domain phase's threshold, so the target would read only 'other'. The job stops there, naming the
    column and the fix, and no site is asked to train or measure. The control: the same job with the
    target's categories declared trains."""
    monkeypatch.setattr("fedtab.federation.transport.InProcessTransport", _Asked)
    _Asked.kinds = []
    with pytest.raises(ConfigError, match="The target 'kind' is declared without categories, and none of its values "
                                          "passed the DP threshold.*Declare the column's public 'categories'"):
        kind_undeclared = TableSchema((UNDECLARED.columns[0], DECLARED.columns[1]))
        fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=kind_undeclared, target="kind", seed=0).fit(_sites(30))
    assert _Asked.kinds and not {MEASURE, TRAIN} & set(_Asked.kinds)
    _Asked.kinds = []
    fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=DECLARED, target="kind", seed=0).fit(_sites(30))
    assert MEASURE in _Asked.kinds


def test_what_the_encoding_read_under_dp_is_told_for_each_undeclared_column():
    """Through the progress callback (what `fedtab train` prints) and, without one, as a warning: the
    range each column without bounds was given and how many values of a column without categories
    passed, each with the fix. A declared schema gets no such line."""
    lines: list[str] = []
    sites = _sites(3000)
    fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=UNDECLARED, seed=0,
                                progress=lambda kind, info: lines.append(str(info.get("name")))).fit(sites)
    ranged = [x for x in lines
              if x.startswith("column 'value' (declared without bounds): its range read under DP is [")]
    assert len(ranged) == 1 and "Declare its public 'lower' and 'upper'" in ranged[0]
    kinds = [x for x in lines if x.startswith("column 'kind' (declared without categories): ")]
    assert len(kinds) == 1 and "value(s) passed the DP threshold" in kinds[0]
    with pytest.warns(ReadUnderDPWarning, match="column 'value' \\(declared without bounds\\)"):
        fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=UNDECLARED, seed=0).fit(sites)
    lines.clear()
    fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=DECLARED, seed=0,
                                progress=lambda kind, info: lines.append(str(info.get("name")))).fit(sites)
    assert not [x for x in lines if "read under DP" in x or "declared without" in x]


def test_a_dp_range_takes_adjacent_cells_above_two_noise_sds_and_never_a_far_one():
    """``bounds_from_magnitude_counts``: from the cells passing 4.8 sds, the range grows through adjacent
    cells passing 2 sds (here the cell of values 8-16, 3 sds) and stops at the first that does not; a far
    cell at 3 sds beyond an empty one is not taken. Without the extension the range is the passing cell
    alone (the control: half the rows cut)."""
    from fedtab.transform.statistics import MAGNITUDE_EDGES, bounds_from_magnitude_counts

    counts = np.zeros(len(MAGNITUDE_EDGES) + 1)
    cell = {v: int(np.searchsorted(MAGNITUDE_EDGES, v, side="right")) for v in (20.0, 10.0, 0.5, 100.0)}
    counts[cell[20.0]], counts[cell[10.0]], counts[cell[0.5]], counts[cell[100.0]] = 10.0, 3.0, 3.0, 0.0
    assert bounds_from_magnitude_counts(counts, threshold=4.8, extend=2.0) == (8.0, 32.0)
    assert bounds_from_magnitude_counts(counts, threshold=4.8) == (16.0, 32.0)
    counts[cell[100.0]] = 2.5  # the cell 64-128: the empty cell 32-64 lies between
    assert bounds_from_magnitude_counts(counts, threshold=4.8, extend=2.0) == (8.0, 32.0)


def test_a_datetime_range_read_under_dp_is_told_in_dates():
    """Datetimes travel as days since 1970: their range is told as dates, not as day counts."""
    rng = np.random.default_rng(1)
    sites = {name: pd.DataFrame({"kind": rng.choice(["a", "b"], 3000),
                                 "seen": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, 3000), "D")})
             for name in ("north", "south", "east")}
    schema = TableSchema((DECLARED.columns[0], ColumnSpec("seen", "datetime", datetime_format="%Y-%m-%d")))
    lines: list[str] = []
    fedtab.FederatedSynthesizer("mst", epsilon=1.0, schema=schema, seed=0,
                                progress=lambda kind, info: lines.append(str(info.get("name")))).fit(sites)
    told = [x for x in lines if x.startswith("column 'seen' (declared without bounds)")]
    import re

    found = re.search(r"is \[(\d{4}-\d{2}-\d{2}), (\d{4}-\d{2}-\d{2})\]", told[0]) if len(told) == 1 else None
    assert found and found.group(1) <= "2020-01-01" and found.group(2) >= "2022-06-19"  # days 16384-32768 mostly

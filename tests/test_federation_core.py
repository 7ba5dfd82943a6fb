"""Wire format, transports, FedAvg and schema agreement: the federation's pure parts."""

import numpy as np
import pytest

from fedtab import errors
from fedtab.federation.aggregation import weighted_average, weighted_mean
from fedtab.federation.agreement import agree_schemas
from fedtab.federation.transport import InProcessTransport, broadcast
from fedtab.federation.wire import pack, unpack
from fedtab.schema import ColumnSpec, TableSchema


def test_pack_unpack_round_trips_nested_arrays_and_special_floats():
    body = {"w": {"g.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, "eps": float("inf"),
            "counts": [np.array([1, 2, 3], dtype=np.int64), 4], "name": "cleveland", "ok": True, "none": None}
    out = unpack(pack(body))
    assert out["w"]["g.0.weight"].dtype == np.float32
    np.testing.assert_array_equal(out["w"]["g.0.weight"], body["w"]["g.0.weight"])
    assert out["eps"] == float("inf") and out["name"] == "cleveland" and out["ok"] is True and out["none"] is None
    np.testing.assert_array_equal(out["counts"][0], [1, 2, 3])


def test_pack_refuses_objects_that_would_need_pickle():
    with pytest.raises(TypeError, match="cannot send"):
        pack({"x": object()})


def test_weighted_average_is_row_weighted_and_keeps_integer_counters():
    rng = np.random.default_rng(0)
    ups = [{"w": rng.normal(size=(3, 2)).astype(np.float32), "n": np.array(7)} for _ in range(3)]
    rows = [100, 300, 600]
    avg = weighted_average(ups, rows)
    expected = sum(r * u["w"].astype(np.float64) for r, u in zip(rows, ups)) / sum(rows)
    np.testing.assert_allclose(avg["w"], expected, rtol=1e-6)
    assert avg["w"].dtype == np.float32 and int(avg["n"]) == 7


def test_weighted_average_rejects_mismatched_updates():
    with pytest.raises(ValueError, match="lacks or has"):
        weighted_average([{"a": np.zeros(2)}, {"b": np.zeros(2)}], [1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([{"a": np.zeros(2)}], [0])


def test_weighted_mean_skips_missing_sites():
    assert weighted_mean({"a": 1.0, "b": 3.0, "c": float("nan")}, {"a": 1, "b": 3, "c": 5}) == pytest.approx(2.5)


def test_in_process_transport_keeps_state_per_site_and_relays_errors_by_class(caplog):
    def worker(kind, body, state):
        if kind == "fail":
            raise errors.PrivacyBudgetError("over budget", public=True)
        if kind == "leak":
            raise errors.DataValidationError("site 'a'", [errors.Problem("age", "not a number", rows=1,
                                                                          examples=("sixty",))])
        state["calls"] = state.get("calls", 0) + 1
        return {"calls": state["calls"], "twice": body["x"] * 2}

    t = InProcessTransport({"a": worker, "b": worker})
    broadcast(t, "go", {"x": np.ones(2)})
    out = broadcast(t, "go", {"x": np.ones(2)}, sites=["a"])
    assert out["a"]["calls"] == 2 and list(out) == ["a"]
    np.testing.assert_array_equal(out["a"]["twice"], [2, 2])
    with pytest.raises(errors.PrivacyBudgetError, match="site 'a': over budget") as ei:
        broadcast(t, "fail", {})
    assert ei.value.exit_code == errors.PrivacyBudgetError.exit_code
    # A message that is not marked public never leaves the site: class, exit code and columns do.
    with pytest.raises(errors.DataValidationError) as ei:
        broadcast(t, "leak", {}, sites=["a"])
    text = str(ei.value)
    assert "'age'" in text and "site 'a'" in text and "sixty" not in text and "1 row" not in text
    assert ei.value.exit_code == errors.DataValidationError.exit_code
    assert "sixty" in caplog.text  # the site's own log has the details


def _schema(*cols):
    return TableSchema(columns=tuple(cols))


def test_agreement_merges_compatible_types():
    a = _schema(ColumnSpec("age", "numerical", "int", nullable=False), ColumnSpec("fbs", "boolean"))
    b = _schema(ColumnSpec("age", "numerical", "float", lower=0, upper=120), ColumnSpec("fbs", "categorical"))
    merged = agree_schemas({"a": a, "b": b})
    assert merged["age"].subtype == "float" and merged["age"].nullable
    assert merged["age"].lower == 0 and merged["fbs"].type == "categorical"


def test_agreement_reports_every_mismatch_with_site_and_column():
    a = _schema(ColumnSpec("age", "numerical", "int"), ColumnSpec("sex", "categorical"))
    b = _schema(ColumnSpec("age", "categorical"), ColumnSpec("gender", "categorical"))
    with pytest.raises(errors.SchemaError) as ei:
        agree_schemas({"cleveland": a, "hungary": b})
    msg = str(ei.value)
    assert "column 'sex' of site 'cleveland' is missing at 1 site ('hungary')" in msg
    assert "column 'gender' at 1 site ('hungary') is not a column of site 'cleveland'" in msg
    assert "column 'age' has different types" in msg and "categorical at 1 site ('hungary')" in msg


def test_a_disagreement_among_many_sites_is_summarised():
    """1,000 sites, one of them typing a column otherwise: the message counts and names a few."""
    num = _schema(ColumnSpec("age", "numerical", "int"))
    sites = {f"s{i:04d}": num for i in range(999)} | {"odd": _schema(ColumnSpec("age", "categorical"))}
    with pytest.raises(errors.SchemaError) as ei:
        agree_schemas(sites)
    msg = str(ei.value)
    assert "numerical at 999 sites ('s0000', 's0001', 's0002', 's0003', 's0004' and 994 more)" in msg
    assert "categorical at 1 site ('odd')" in msg and len(msg) < 1000

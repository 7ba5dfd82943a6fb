"""Issue 21, part 2: messages that named the wrong cause. A 1-row site and an all-null column were
reported as "column has different types at the sites"; a model file from another job as "target column
not in the schema"; a model file whose manifest is not JSON exited 9 (federation) instead of 7 (model
file); "no reply from [...]" listed every site. Each case: the message names the real cause and the
site, carries no value from the rows, and exits with the documented code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedtab.api import FederatedSynthesizer
from fedtab.datasets import heart_schema, heart_site_path
from fedtab.errors import DataValidationError, FederationError, ModelFileError
from fedtab.federation.site import MIN_SITE_ROWS
from fedtab.federation.transport import no_reply_error
from fedtab.privacy.book import SitePolicy

NON_DP = SitePolicy(allow_non_dp=True)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    cleveland = pd.read_csv(heart_site_path("cleveland"), dtype=str, keep_default_na=False)
    hungary = pd.read_csv(heart_site_path("hungary"), dtype=str, keep_default_na=False)
    cleveland.iloc[:1].to_csv(d / "one_row.csv", index=False)
    hungary.to_csv(d / "hungary.csv", index=False)
    empty_chol = hungary.assign(chol="?")  # every value the missing marker
    empty_chol.to_csv(d / "empty_chol.csv", index=False)
    return d


def test_a_one_row_site_is_named_as_too_small_not_as_a_type_disagreement(tables):
    with pytest.raises(DataValidationError) as e:
        FederatedSynthesizer(epsilon=None, site_policy=NON_DP).fit(
            {"tiny": str(tables / "one_row.csv"), "hungary": str(tables / "hungary.csv")})
    msg = str(e.value)
    assert "site 'tiny'" in msg and "too few rows" in msg and f"at least {MIN_SITE_ROWS}" in msg
    assert "different types" not in msg
    assert e.value.exit_code == 4


def test_a_one_row_site_is_refused_in_schema_agreement_under_dp_before_any_release(tables):
    synth = FederatedSynthesizer(epsilon=1.0, schema=heart_schema(), ledger_dir=str(tables / "ledgers"))
    with pytest.raises(DataValidationError, match=r"(?s)site 'tiny'.*too few rows"):
        synth.fit({"tiny": str(tables / "one_row.csv"), "hungary": str(tables / "hungary.csv")})
    # Nothing was released by anyone: each site's lasting ledger admitted the job and recorded no spend.
    records = [json.loads(line) for p in (tables / "ledgers").rglob("ledger.jsonl") for line in p.read_text().splitlines()]
    assert {r["type"] for r in records} == {"job"}


def test_an_all_missing_column_gets_its_own_message(tables):
    with pytest.raises(DataValidationError) as e:
        FederatedSynthesizer(epsilon=None, site_policy=NON_DP).fit(
            {"empty": str(tables / "empty_chol.csv"), "hungary": str(tables / "hungary.csv")})
    msg = str(e.value)
    assert "site 'empty'" in msg and "'chol'" in msg and "only missing values" in msg
    assert "different types" not in msg
    assert e.value.columns == ("chol",)


def test_the_row_count_never_reaches_the_coordinator(tables, caplog):
    """The count is in the site's log (its operator's); the coordinator's message has the rule only."""
    rows = pd.read_csv(heart_site_path("cleveland")).iloc[:7]
    rows.to_csv(tables / "seven.csv", index=False)
    with caplog.at_level("ERROR", logger="fedtab.site"), pytest.raises(DataValidationError) as e:
        FederatedSynthesizer(epsilon=None, site_policy=NON_DP).fit(
            {"seven": str(tables / "seven.csv"), "hungary": str(tables / "hungary.csv")})
    assert "7" not in str(e.value)
    assert "7 row(s)" in caplog.text  # the site's own log has it


def test_no_reply_names_a_few_sites_and_counts_the_rest():
    sites = [f"hospital-{i:04d}" for i in range(1000)]
    e = no_reply_error("train", sites)
    assert isinstance(e, FederationError) and e.no_reply
    assert "1000 sites" in str(e) and "hospital-0000" in str(e) and "and 995 more" in str(e)
    assert "hospital-0999" not in str(e) and len(str(e)) < 300


@pytest.fixture(scope="module")
def heart_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    synth = FederatedSynthesizer("mst", epsilon=None, schema=heart_schema(), site_policy=NON_DP).fit(
        {"cleveland": str(heart_site_path("cleveland")), "hungary": str(heart_site_path("hungary"))})
    return synth.save(d / "heart.fedtab")


def _rewrite_manifest(model_path, out_path, manifest_json: str) -> None:
    """A model file whose manifest is ``manifest_json``, with a content hash that matches it (so only the
    manifest's form can be refused)."""
    from safetensors.numpy import load, save

    from fedtab.modelfile import FORMAT, content_hash

    data = model_path.read_bytes()
    tensors = load(data)
    meta = {"format": FORMAT, "manifest": manifest_json, "content_sha256": content_hash(manifest_json, tensors)}
    out_path.write_bytes(save(tensors, metadata=meta))


@pytest.mark.parametrize("manifest", ["this is not JSON {", "[1, 2, 3]", json.dumps({"x": {"__ndarray__": "a9"}})])
def test_a_model_file_whose_manifest_is_not_a_fedtab_manifest_exits_7(cli, heart_model, tmp_path, manifest):
    bad = tmp_path / "bad.fedtab"
    _rewrite_manifest(heart_model, bad, manifest)
    r = cli("sample", bad, "-n", 10, "-o", tmp_path / "out.csv")
    assert r.exit_code == ModelFileError.exit_code == 7, r.output
    assert "manifest" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out.csv").exists()


def test_the_control_an_untouched_manifest_loads(heart_model, tmp_path):
    from safetensors import safe_open

    from fedtab.api import load

    with safe_open(str(heart_model), framework="numpy") as f:
        manifest = f.metadata()["manifest"]
    same = tmp_path / "same.fedtab"
    _rewrite_manifest(heart_model, same, manifest)
    assert load(same).sample(5, seed=1).shape[0] == 5


def test_a_model_from_another_job_is_named_so_not_as_a_missing_target(cli, heart_model, tmp_path):
    """The configuration's table has other columns than the model's: the model comes from another job."""
    other = pd.DataFrame({"income": np.arange(40) % 7, "label": np.arange(40) % 2})
    for s in ("a", "b"):
        other.to_csv(tmp_path / f"{s}.csv", index=False)
    (tmp_path / "other.toml").write_text('target = "label"\n[sites.a]\nsource = "a.csv"\n[sites.b]\nsource = "b.csv"\n')
    r = cli("evaluate", heart_model, tmp_path / "other.toml", "-o", tmp_path / "report.html")
    assert r.exit_code == ModelFileError.exit_code, r.output
    assert "another job" in r.output and "'label'" in r.output
    assert "not in the schema" not in r.output
    assert not (tmp_path / "report.html").exists()


def test_a_missing_file_names_the_current_folder_only_for_a_relative_path(tmp_path, monkeypatch):
    """'relative paths start at <cwd>' was said of absolute paths too (a site.toml's sources are resolved
    from its folder, so they reach the connector absolute)."""
    from connectors import read_table
    from fedtab.errors import SourceError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as absolute:
        read_table(tmp_path / "sub" / "nowhere.csv")
    assert "current folder" not in str(absolute.value) and str(tmp_path / "sub" / "nowhere.csv") in str(absolute.value)
    with pytest.raises(SourceError, match=f"a relative path starts at the current folder, {tmp_path}"):
        read_table("nowhere.csv")

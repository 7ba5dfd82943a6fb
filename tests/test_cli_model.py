"""The model commands through the CLI: train -> sample -> evaluate -> release, demo, errors, and Flower."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from fedtab.datasets import HEART_SITES, heart_site_path, load_heart_sites
from tests.conftest import LENIENT_POLICY, lenient_policy_file

SCHEMA = heart_site_path("cleveland").parent / "heart_schema.json"


def write_config(tmp_path, *, epsilon="1.0", sites=HEART_SITES, rounds=2) -> str:
    lines = [f"seed = 5\nschema = '{SCHEMA}'\ntarget = 'num'\nledger_dir = '{tmp_path / 'ledgers'}'\n"
             "[model]\nname = 'ctgan'\n",
             f"[privacy]\nepsilon = {epsilon}\ndelta = 1e-5\n" if epsilon else "",
             f"[training]\nrounds = {rounds}\nlocal_epochs = 1.0\nbatch_size = 128\n"]
    for s in sites:  # each site's own release policy: lenient (the tests evaluate one model several times)
        lines.append(f"[sites.{s}]\nsource = '{heart_site_path(s)}'\nrelease_policy = '{lenient_policy_file()}'\n")
    path = tmp_path / "job.toml"
    path.write_text("".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `fedtab train` run shared by the tests below."""
    from typer.testing import CliRunner

    from fedtab.cli import app

    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp)
    result = CliRunner().invoke(app, ["train", cfg, "-o", str(tmp / "m.fedtab"), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp, cfg, result


def test_train_writes_a_model_and_prints_the_ledger(trained):
    tmp, _, result = trained
    assert (tmp / "m.fedtab").exists()
    assert "model written to" in result.output and "privacy ledger" in result.output
    for site in HEART_SITES:
        assert site in result.output


def test_sample_writes_csv_and_parquet_with_the_schema_columns(trained, cli):
    tmp, _, _ = trained
    out = cli("sample", str(tmp / "m.fedtab"), "-n", "120", "-o", str(tmp / "s.csv"), "--seed", "3")
    assert out.exit_code == 0, out.output
    df = pd.read_csv(tmp / "s.csv")
    assert len(df) == 120 and list(df.columns) == list(load_heart_sites()["hungary"].columns)
    out = cli("sample", str(tmp / "m.fedtab"), "-n", "120", "-o", str(tmp / "s.parquet"), "--seed", "3")
    assert out.exit_code == 0 and len(pd.read_parquet(tmp / "s.parquet")) == 120
    again = cli("sample", str(tmp / "m.fedtab"), "-n", "120", "-o", str(tmp / "s.csv"))
    assert again.exit_code == 5 and "exists" in again.output  # no silent overwrite


def test_sample_refuses_a_tampered_model_with_exit_7(trained, cli):
    tmp, _, _ = trained
    data = bytearray((tmp / "m.fedtab").read_bytes())
    data[-10] ^= 0x55
    (tmp / "bad.fedtab").write_bytes(bytes(data))
    out = cli("sample", str(tmp / "bad.fedtab"), "-n", "5", "-o", str(tmp / "x.csv"))
    assert out.exit_code == 7 and "hash mismatch" in out.output and "Traceback" not in out.output
    assert not (tmp / "x.csv").exists()


def test_evaluate_writes_report_and_figures(trained, cli):
    tmp, cfg, _ = trained
    out = cli("evaluate", str(tmp / "m.fedtab"), cfg, "-o", str(tmp / "eval.html"), "-n", "300",
              "--policy", lenient_policy_file())
    assert out.exit_code == 0, out.output
    # The public report: each site's verdict on each check, no figure from a site's rows.
    public = json.loads((tmp / "eval.json").read_text())
    assert set(public["evaluation"]["sites"]) == set(HEART_SITES)
    assert all(set(v["checks"]) >= {"quality", "exact_copies", "mia_auc"} for v in public["evaluation"]["sites"].values())
    assert "fidelity.quality" not in (tmp / "eval.json").read_text()
    assert "public consortium report" in (tmp / "eval.html").read_text()
    # Each site's own report, at the site (its ledger folder): every figure, with plots.
    for site in HEART_SITES:
        [local] = sorted((tmp / "ledgers" / site / "reports").glob("*.json"))
        figures = json.loads(local.read_text())["evaluation"]["sites"][site]["figures"]
        assert 0 <= figures["fidelity.quality"] <= 1
        assert "<svg" in local.with_suffix(".html").read_text()


def test_release_refused_names_failed_checks_and_releases_nothing(trained, cli, tmp_path):
    tmp, cfg, _ = trained
    policy = tmp_path / "strict.toml"  # strict on quality only (a fidelity refusal: later tables may pass)
    policy.write_text(LENIENT_POLICY.replace("min_quality = 0.0", "min_quality = 0.99"))
    out = cli("release", cfg, "--model", str(tmp / "m.fedtab"), "--policy", str(policy),
              "--out", str(tmp_path / "rel"), "-n", "300")
    assert out.exit_code == 10, out.output
    assert "quality" in out.output and ">= 0.99" in out.output and re.search(r"Failed at \d+ sites? \(", out.output)
    assert not (tmp_path / "rel" / "synthetic.csv").exists()
    audit = json.loads((tmp_path / "rel" / "audit.json").read_text())
    assert audit["released"] is False and "quality" in audit["failed_checks"]
    assert audit["sha256"]["synthetic_table"] is None and len(audit["sha256"]["model"]) == 64


def lenient_policy(tmp_path):
    """A policy every table passes (the tests below check what release writes, not the gate)."""
    return lenient_policy_file()


def test_release_passes_a_lenient_policy_and_writes_the_table(trained, cli, tmp_path):
    tmp, cfg, _ = trained
    policy = lenient_policy(tmp_path)
    out = cli("release", cfg, "--model", str(tmp / "m.fedtab"), "--policy", str(policy),
              "--out", str(tmp_path / "rel"), "-n", "300")
    assert out.exit_code == 0, out.output
    table = pd.read_csv(tmp_path / "rel" / "synthetic.csv")
    assert len(table) == 300
    audit = json.loads((tmp_path / "rel" / "audit.json").read_text())
    assert audit["released"] is True and len(audit["sha256"]["synthetic_table"]) == 64


def test_release_samples_as_the_configuration_s_sampling_section_says(trained, cli, tmp_path):
    """``[sampling] quantile_map = true`` in the run configuration: the released table is the model's
    quantile-mapped sample; ``--no-quantile-map`` overrides the file."""
    import fedtab

    tmp, cfg, _ = trained
    policy = lenient_policy(tmp_path)
    mapped = tmp_path / "job.toml"
    mapped.write_text(open(cfg).read().replace("[sites.", "[sampling]\nquantile_map = true\n[sites.", 1))
    model = fedtab.load(tmp / "m.fedtab")
    for flags, qm in (([], True), (["--no-quantile-map"], False)):
        out = cli("release", str(mapped), "--model", str(tmp / "m.fedtab"), "--policy", str(policy),
                  "--out", str(tmp_path / f"rel{qm}"), "-n", "300", "--seed", "3", *flags)
        assert out.exit_code == 0, out.output
        table = pd.read_csv(tmp_path / f"rel{qm}" / "synthetic.csv")
        for quantile_map in (True, False):
            want = model.sample(300, seed=3, quantile_map=quantile_map)
            same = np.allclose(table["age"].to_numpy(float), want["age"].to_numpy(float), equal_nan=True)
            assert same == (quantile_map == qm), (flags, quantile_map)


def test_train_config_errors_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[privacy]\nepsilon = -3\n")
    out = cli("train", str(bad), "-o", str(tmp_path / "m.fedtab"))
    assert out.exit_code == 2 and "'epsilon' must be" in out.output and "'sites' must name" in out.output
    assert "Traceback" not in out.output


def test_site_asking_past_its_budget_stops_before_any_release(tmp_path):
    from fedtab import errors
    from fedtab.api import _make_worker
    from fedtab.federation.coordinator import JobSpec, run_federation
    from fedtab.federation.transport import InProcessTransport
    from fedtab.config import PrivacySettings
    from fedtab.datasets import heart_schema

    from fedtab.privacy.book import SitePolicy

    sites = load_heart_sites()
    events = []
    workers = {s: _make_worker(s, df, policy=SitePolicy(max_epsilon=0.5) if s == "hungary" else None)
               for s, df in sites.items()}  # this hospital allows at most 0.5 per job
    job = JobSpec(privacy=PrivacySettings(epsilon=1.0), schema=heart_schema())
    with pytest.raises(errors.PrivacyBudgetError, match="site 'hungary'.*rule max_epsilon.*at most 0.5"):
        run_federation(InProcessTransport(workers), job, progress=lambda e, i: events.append(i.get("name")))
    assert events == ["schema agreement"]


@pytest.mark.slow
def test_demo_runs_the_whole_flow(cli, tmp_path):
    out = cli("demo", "--out", str(tmp_path / "demo"), "--rounds", "2", "--quiet")
    assert out.exit_code == 0, out.output
    for name in ("report.html", "report.json", "model.fedtab", "audit.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "release gate" in out.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())  # public: verdicts per hospital
    assert set(report["evaluation"]["sites"]) == set(HEART_SITES) and report["checks"]
    for site in HEART_SITES:  # each hospital's own report, beside the public outputs
        assert list((tmp_path / "demo-sites" / site).glob("evaluation-*.html")), site


@pytest.mark.slow
def test_flower_simulation_gives_the_same_model_as_in_process():
    import fedtab
    from fedtab.datasets import heart_schema
    from tests.conftest import non_dp_policy

    sites = load_heart_sites()
    # Without DP: bit for bit on both transports.
    kw = dict(rounds=2, local_epochs=1.0, batch_size=64, seed=3, schema=heart_schema(), site_policy=non_dp_policy())
    a = fedtab.FederatedSynthesizer("ctgan", transport="inprocess", **kw).fit(sites)
    b = fedtab.FederatedSynthesizer("ctgan", transport="flower", **kw).fit(sites)
    assert set(a.weights_) == set(b.weights_)
    assert all(np.array_equal(a.weights_[k], b.weights_[k]) for k in a.weights_)
    assert a.sample(100, seed=1).equals(b.sample(100, seed=1))
    # Under DP the noise is secret (no two runs share it): the same releases, each site within budget.
    dp = dict(kw, epsilon=1.0, site_policy=None)
    a = fedtab.FederatedSynthesizer("ctgan", transport="inprocess", **dp).fit(sites)
    b = fedtab.FederatedSynthesizer("ctgan", transport="flower", **dp).fit(sites)
    assert not all(np.array_equal(a.weights_[k], b.weights_[k]) for k in a.weights_)
    for s in sites:
        assert [e.phase for e in a.privacy_ledger[s].entries] == [e.phase for e in b.privacy_ledger[s].entries]
        assert 0.95 < b.privacy_ledger[s].epsilon <= 1.0 + 1e-9

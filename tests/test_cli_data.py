"""The data commands through typer's CliRunner, the README commands, and main()'s error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import connectors
import fedtab
from tests.conftest import BUNDLED, DATA, REPO
from fedtab.cli import main
from fedtab.datasets import HEART_SITES, heart_schema
from fedtab.schema import TableSchema

HEART = BUNDLED / "heart_cleveland.csv"


@pytest.mark.slow
def test_readme_main_job_runs_as_a_real_console_command(tmp_path):
    # The README's install step ends with the main job: run it exactly, as a real console command.
    install = _readme_blocks("bash")[0].strip()
    assert install.startswith("pip install torch==2.13.0") and install.endswith("&& fedtab demo")
    out = subprocess.run([sys.executable, "-m", "fedtab", "demo"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert "release gate" in out.stdout and (tmp_path / "fedtab-demo" / "report.html").exists()


def test_inspect_table_lists_every_column(cli):
    result = cli("inspect", HEART)
    assert result.exit_code == 0
    for name in heart_schema().names:
        assert name in result.output
    assert "numerical/float" in result.output and "1.3%" in result.output  # ca: 4 of 303 missing


def test_inspect_json_is_machine_readable(cli):
    result = cli("inspect", DATA / "bank_marketing_1500.csv", "--missing", "unknown", "--json")
    doc = json.loads(result.output)
    cols = {c["name"]: c for c in doc["columns"]}
    assert doc["rows"] == 1500 and len(cols) == 17
    assert cols["poutcome"]["missing_share"] > 0.5 and cols["job"]["type"] == "categorical"
    assert cols["age"]["type"] == "numerical/int" and cols["y"]["cardinality"] == 2


def test_inspect_sqlite_table(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    connectors.write_table(connectors.read_table(HEART, schema=heart_schema()), url, table="heart")
    doc = json.loads(cli("inspect", url, "--table", "heart", "--json").output)
    assert doc["rows"] == 303 and doc["source"].endswith("table 'heart'")


def test_schema_infer_writes_a_loadable_schema(cli, tmp_path):
    out = tmp_path / "schema.json"
    result = cli("schema", "infer", DATA / "diabetes_1500.csv.gz", "-o", out)
    assert result.exit_code == 0 and f"wrote {out}" in result.output
    schema = TableSchema.load(out)
    assert schema == connectors.scan_table(DATA / "diabetes_1500.csv.gz").schema
    assert schema["patient_nbr"].type == "id"
    printed = cli("schema", "infer", HEART)
    assert TableSchema.from_json(printed.output).names == heart_schema().names


def test_schema_check_confirms_a_matching_table(cli):
    result = cli("schema", "check", BUNDLED / "heart_hungary.csv", "--schema", BUNDLED / "heart_schema.json")
    assert result.exit_code == 0 and "OK:" in result.output and "(294 rows, 14 columns)" in result.output


def test_schema_check_lists_all_problems_of_a_site_against_another_sites_inferred_schema(cli, tmp_path):
    # Hungary's target is only 0/1, so inferred there it is boolean; Switzerland has 2-4 as well.
    cli("schema", "infer", BUNDLED / "heart_hungary.csv", "-o", tmp_path / "hu.json")
    result = cli("schema", "check", BUNDLED / "heart_switzerland.csv", "--schema", tmp_path / "hu.json")
    assert result.exit_code == 4
    assert "column 'num': values that are not booleans" in result.output and "'3'" in result.output


def test_sdv_export_then_import_round_trip(cli, tmp_path):
    meta, back = tmp_path / "metadata.json", tmp_path / "back.json"
    assert cli("schema", "export-sdv", BUNDLED / "heart_schema.json", "-o", meta).exit_code == 0
    doc = json.loads(meta.read_text())
    assert doc["METADATA_SPEC_VERSION"] == "V1" and doc["tables"]["heart_disease_uci"]["columns"]["age"] == {
        "sdtype": "numerical", "computer_representation": "Int64"}
    assert cli("schema", "import-sdv", meta, "-o", back).exit_code == 0
    assert [c.type for c in TableSchema.load(back).columns] == [c.type for c in heart_schema().columns]


def test_unexpected_errors_are_short_messages_with_exit_1(cli, monkeypatch):
    def boom(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(connectors, "scan_table", boom)
    result = cli("inspect", HEART)
    assert result.exit_code == 1
    assert "unexpected KeyError" in result.output and "FEDTAB_DEBUG=1" in result.output
    assert "Traceback" not in result.output
    debug = cli("inspect", HEART, env={"FEDTAB_DEBUG": "1"})
    assert isinstance(debug.exception, KeyError)  # the traceback is there for whoever asked


def test_main_exits_with_the_error_code_and_no_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["inspect", "no/such/file.csv"])
    assert info.value.code == 5
    err = capsys.readouterr().err
    assert "no/such/file.csv: no such file" in err and "Traceback" not in err


def test_usage_errors_exit_2_and_version_prints(cli):
    assert cli("schema", "check", HEART).exit_code == 2  # --schema missing: a bad argument
    assert cli("--version").output.startswith("fedtab 0.")


def _readme_blocks(lang: str) -> list[str]:
    # The README's quickstart, then the data commands (docs/tables.md). The deployment walk-through
    # (docs/deployment.md) starts long-running servers: tests/test_deploy_e2e.py runs it.
    text = "\n".join((REPO / name).read_text(encoding="utf-8") for name in ("README.md", "docs/tables.md"))
    return [b.split("```", 1)[0] for b in text.split(f"```{lang}\n")[1:]]


# Documented non-zero exits: `fedtab release` exits 10 when the gate refuses (and says why).
DOCUMENTED_EXITS = {"release": {0, 10}}


def test_every_readme_fedtab_command_works(cli, tmp_path, monkeypatch):
    for folder in ("fedtab", "examples"):  # README paths are relative to the repository root
        (tmp_path / folder).symlink_to(REPO / folder)
    monkeypatch.chdir(tmp_path)
    commands = [line.split("#")[0].split() for block in _readme_blocks("bash") for line in block.splitlines()
                if line.startswith("fedtab ")]
    assert len(commands) >= 10
    for argv in commands:
        result = cli(*argv[1:])
        assert result.exit_code in DOCUMENTED_EXITS.get(argv[1], {0}), (argv, result.output)
    assert TableSchema.load("heart_schema_from_sdv.json").names == heart_schema().names
    # The example job adds a hospital column (its categories: the sites' names) to the heart schema.
    synthetic = connectors.read_table("heart_synthetic.csv", schema=fedtab.load("heart.fedtab").schema)
    assert synthetic.shape == (1000, 15) and set(synthetic["hospital"]) == set(HEART_SITES)
    assert (tmp_path / "heart_report.html").exists() and (tmp_path / "heart_release" / "audit.json").exists()


def test_readme_python_example_works(tmp_path, monkeypatch):
    (tmp_path / "fedtab").symlink_to(REPO / "fedtab")
    monkeypatch.chdir(tmp_path)
    [code] = [b for b in _readme_blocks("python") if "write_table" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["sites"]) == {"cleveland", "hungary", "switzerland", "va_long_beach"}
    assert len(connectors.read_table("sqlite:///site.db", table="heart", schema=heart_schema())) == 200


def test_readme_api_example_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [code] = [b for b in _readme_blocks("python") if "FederatedSynthesizer" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["table"]) == 500
    assert all(ledger.epsilon <= 1.0 + 1e-9 for ledger in namespace["synth"].privacy_ledger.values())
    assert set(namespace["evaluation"].sites) == set(namespace["sites"])

"""Bad input answered cleanly (issue 21, part 2): a specific message, the documented exit code, no
traceback, nothing written, and before any work starts where it can be."""

from __future__ import annotations

import pandas as pd
import pytest

import fedtab
from fedtab.errors import ConfigError, NotFittedError
from tests.conftest import BUNDLED

SCHEMA = BUNDLED / "heart_schema.json"
SITES = ('[sites.a]\nsource = "{d}/heart_cleveland.csv"\n[sites.b]\nsource = "{d}/heart_hungary.csv"\n'
         .format(d=BUNDLED))
DP = f'schema = "{SCHEMA}"\n[privacy]\nepsilon = 1.0\n'


def _clean(result, code: int, *needles: str) -> str:
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text and "This is a bug" not in text, text
    for n in needles:
        assert n in text, (n, text)
    return text


@pytest.fixture
def model_file(tmp_path_factory):
    """A small non-DP model file (the default model; seconds)."""
    path = tmp_path_factory.mktemp("model") / "m.fedtab"
    sites = {k: v.head(60) for k, v in fedtab.datasets.load_heart_sites().items() if k in ("cleveland", "hungary")}
    fedtab.FederatedSynthesizer(site_policy=fedtab.SitePolicy(allow_non_dp=True), schema=fedtab.datasets.heart_schema()
                                ).fit(sites).save(path)
    return path


@pytest.mark.parametrize("text, needle", [
    ('model = "ctgan"\n' + DP + SITES, "'model' must be a table ([model] with keys under it)"),
    ('privacy = 1.0\n' + f'schema = "{SCHEMA}"\n' + SITES, "'privacy' must be a table"),
    ('sampling = "on"\n' + DP + SITES, "'sampling' must be a table"),
    ('training = [1, 2]\n' + DP + SITES, "'training' must be a table"),
    ('schema = 5\n[privacy]\nepsilon = 1.0\n' + SITES, "'schema' must be the path of a schema JSON file"),
    (DP + '[training]\nmin_sites = 5\n' + SITES, "'training.min_sites' is 5 but only 2 site(s) are named"),
    (f'schema = "{SCHEMA}"\n[privacy]\nepsilon = 1e12\n' + SITES, "'epsilon' must be a number in (0, 1000.0]"),
    (DP + f'[sites."../b"]\nsource = "{BUNDLED}/heart_cleveland.csv"\n', "site name '../b' is not allowed"),
    (DP + f'[sites.a]\nsource = "{BUNDLED}/heart_cleveland.csv"\n[sites.A]\nsource = "{BUNDLED}/heart_hungary.csv"\n',
     "site names 'a' and 'A' are the same name"),
    (DP + f'[sites.a]\nsource = "{BUNDLED}/heart_cleveland.csv"\n[sites.b]\nsource = "{BUNDLED}/../data/heart_cleveland.csv"\n',
     "sites 'a' and 'b' read the same source"),
])
def test_a_bad_configuration_is_refused_before_any_site_is_asked(cli, tmp_path, text, needle):
    cfg = tmp_path / "job.toml"
    cfg.write_text(text)
    _clean(cli("train", cfg, "-o", tmp_path / "m.fedtab", "-q"), 2, needle)
    assert not (tmp_path / "m.fedtab").exists()


def test_unwritable_outputs_are_refused_before_the_work(cli, tmp_path, model_file):
    cfg = tmp_path / "job.toml"
    cfg.write_text(DP + SITES)
    _clean(cli("train", cfg, "-o", "/proc/x.fedtab", "-q"), 5, "cannot be written there")
    _clean(cli("train", cfg, "-o", tmp_path, "-q"), 5, "is a directory")
    _clean(cli("evaluate", model_file, cfg, "-o", "/proc/x.html"), 5, "cannot be written there")
    (tmp_path / "file").write_text("x")
    _clean(cli("release", cfg, "--model", model_file, "--out", tmp_path / "file"), 5, "is a file, not a folder")
    _clean(cli("release", cfg, "--model", model_file, "--out", "/proc/rel"), 5, "cannot be written there")
    _clean(cli("demo", "--out", "/proc/demo", "-q"), 5, "cannot be written there")
    _clean(cli("schema", "infer", BUNDLED / "heart_cleveland.csv", "-o", "/proc/x.json"), 5, "cannot be written there")
    existing = tmp_path / "s.json"
    existing.write_text("{}")
    _clean(cli("schema", "infer", BUNDLED / "heart_cleveland.csv", "-o", existing), 5, "pass --replace")
    assert existing.read_text() == "{}"
    assert cli("schema", "infer", BUNDLED / "heart_cleveland.csv", "-o", existing, "--replace").exit_code == 0


def test_sampling_requests_that_cannot_work(cli, tmp_path, model_file):
    out = tmp_path / "s.csv"
    _clean(cli("sample", model_file, "-n", "10", "--seed", "-1", "-o", out), 2, "'--seed' option must be a whole number")
    _clean(cli("sample", model_file, "-n", "99999999999999999999", "-o", out), 2, "the ceiling here is")
    out.write_text("x")
    _clean(cli("sample", model_file, "-n", "10", "-o", out), 5, "pass --replace")
    synth = fedtab.load(model_file)
    with pytest.raises(ConfigError, match="'seed' must be a whole number"):
        synth.sample(5, seed=-1)


def test_bad_names_and_sources(cli, tmp_path):
    _clean(cli("trial-keys", tmp_path / "keys", "--site", "../evil"), 2, "site name '../evil' is not allowed")
    _clean(cli("trial-keys", tmp_path / "keys", "--site", ""), 2, "site name '' is not allowed")
    assert not (tmp_path / "keys").exists() and not (tmp_path / "evil").exists()
    text = _clean(cli("inspect", "postgresql+psycopg://u:secret@h:notaport/db", "--table", "t"), 5,
                  "not a valid SQLAlchemy URL")
    assert "secret" not in text
    _clean(cli("evaluate", "m.fedtab", "job.toml", "--transport", "carrier-pigeon"), 2, "carrier-pigeon")


def test_an_unterminated_quote_is_refused_with_its_line(cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b\n1,x\n2,"y\n3,z\n4,w\n')
    _clean(cli("inspect", bad), 5, "line 3, column 'b': a quoted value runs past the end of its line")
    good = tmp_path / "good.csv"
    good.write_text('a,b\n1,x\n2,"y,z"\n')
    assert cli("inspect", good).exit_code == 0


def test_the_api_refuses_bad_parameters_at_once():
    for kw, needle in ((dict(model="nope"), "'model' must be one of"), (dict(epsilon="x"), "'epsilon' must be a number"),
                       (dict(rounds=0), "'rounds' must be a whole number"), (dict(schema=42), "'schema' must be a TableSchema")):
        with pytest.raises(ConfigError, match=needle):
            fedtab.FederatedSynthesizer(**kw)
    with pytest.raises(NotFittedError):
        fedtab.evaluate(fedtab.FederatedSynthesizer(), {"a": "x.csv"})
    synth = fedtab.FederatedSynthesizer(site_policy=fedtab.SitePolicy(allow_non_dp=True))
    with pytest.raises(ConfigError, match="column names must be text"):
        synth.fit({"a": pd.DataFrame({0: [1, 2], 1: [3, 4]})})
    with pytest.raises(ConfigError, match="site name '../a' is not allowed"):
        synth.fit({"../a": pd.DataFrame({"x": [1, 2]})})


def test_ctrl_c_stops_with_one_line_and_exit_130(cli, tmp_path, model_file, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedtab.api.FederatedSynthesizer, "sample", interrupted)
    text = _clean(cli("sample", model_file, "-n", "10", "-o", tmp_path / "s.csv"), 130, "interrupted (Ctrl-C)")
    from fedtab.signing import NOT_CHECKED  # the one line 'sample' prints on loading an unchecked model file

    lines = [line for line in text.strip().splitlines() if not line.startswith(NOT_CHECKED)]
    assert len(lines) == 1 and not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["evaluate"], ["release"], ["demo"], ["schema", "infer"],
                                     ["coordinator"], ["site"], ["trial-keys"], ["inspect"]])
def test_help_pages_render_without_stray_backslashes(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "\\[" not in result.output and "Usage" in result.output


def test_a_row_count_of_zero_is_refused_everywhere(cli, tmp_path, model_file):
    cfg = tmp_path / "job.toml"
    cfg.write_text(DP + SITES)
    for args in (("sample", model_file, "-n", "0", "-o", tmp_path / "s.csv"), ("evaluate", model_file, cfg, "-n", "0"),
                 ("release", cfg, "--model", model_file, "-n", "0"), ("demo", "--rows", "0")):
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)

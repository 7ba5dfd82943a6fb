"""Every command in the documentation is run by a test (issue 21, part 4).

The convention, for README.md and every page under docs/:

- A ```bash or ```python fenced block is run: per page, its blocks in order, in a fresh folder where
  `fedtab/`, `examples/` and `benchmarks/` are the repository's. A `fedtab ...` line runs in process
  (typer's CliRunner) and must exit 0, or with a code its comment documents (`# exit 10 if refused`);
  any other line runs in bash and must exit 0; a python block is executed.
- A line `<!-- docs-test: KIND -->` right before a block says how else it is covered:
  - `slow`: run as above, but only with `-m slow` (training, the demo);
  - `ci`: the install and test commands; each line must be in `.ci/run`, which runs them verbatim;
  - `deployment`: the walk-through across institutions (long-running servers); each command must be
    one that `tests/test_deploy_e2e.py` runs with real processes;
  - `benchmark`: a benchmark (minutes to hours); its script must exist and accept every flag shown.
- ```text, ```console, ```toml and other blocks are not run.

Also here: the CLI reference is generated (every command of the app), the configuration page names
every key the parsers accept, the exit-code page every error class, and `mkdocs build --strict` passes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
KINDS = {None, "slow", "ci", "deployment", "benchmark"}
RUN = ("bash", "python")


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    kind: str | None
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the docs-test marker on the line before it (if any)."""
    out, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = re.match(r"^<!-- docs-test: ([\w-]+) -->$", lines[i - 1].strip()) if i else None
        out.append(Block(page, i + 1, m.group(1), marker.group(1) if marker else None, "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def commands(block: Block) -> list[str]:
    """The command lines of a bash block (comments and blank lines dropped)."""
    return [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def allowed_exits(line: str) -> set[int]:
    """0, plus any exit code the line's comment documents ('# exit 10 if refused')."""
    _, _, comment = line.partition(" #")
    return {0, *(int(c) for c in re.findall(r"\bexit (?:code )?(\d+)", comment))}


def run_blocks(selected: list[Block], folder: Path, monkeypatch) -> None:
    from fedtab.cli import app

    for name in ("fedtab", "examples", "benchmarks"):
        (folder / name).symlink_to(REPO / name)
    monkeypatch.chdir(folder)
    for block in selected:
        if block.lang == "python":
            exec(compile(block.code, str(block), "exec"), {"__name__": "__docs__"})
            continue
        for line in commands(block):
            argv = shlex.split(line.partition(" #")[0])
            if argv[0] == "fedtab":
                result = CliRunner().invoke(app, argv[1:])
                code, output = result.exit_code, result.output
            else:
                done = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=600)
                code, output = done.returncode, done.stdout + done.stderr
            assert code in allowed_exits(line), f"{block}: {line!r} exited {code}:\n{output[-3000:]}"


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_every_block_has_a_known_kind_and_every_page_runs_something():
    assert len(PAGES) >= 10
    for b in ALL:
        assert b.kind in KINDS, f"{b}: unknown docs-test kind {b.kind!r}"
        assert b.kind is None or b.lang in RUN, f"{b}: a docs-test marker on a ```{b.lang} block (not run)"
    run = [b for b in ALL if b.lang in RUN]
    assert len(run) >= 12 and sum(len(commands(b)) for b in run if b.lang == "bash") >= 25


FAST_PAGES = sorted({b.page for b in ALL if b.lang in RUN and b.kind is None})
SLOW_PAGES = sorted({b.page for b in ALL if b.lang in RUN and b.kind == "slow"})


@pytest.mark.parametrize("page", FAST_PAGES, ids=_page_id)
def test_fast_commands_of_a_page_run(page, tmp_path, monkeypatch):
    selected = [b for b in blocks(page) if b.lang in RUN and b.kind is None]
    assert selected
    run_blocks(selected, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=_page_id)
def test_slow_commands_of_a_page_run(page, tmp_path, monkeypatch):
    selected = [b for b in blocks(page) if b.lang in RUN and b.kind in (None, "slow")]
    run_blocks(selected, tmp_path, monkeypatch)


def test_data_commands_page_leaves_what_it_says(tmp_path, monkeypatch):
    """tables.md's commands, run as written, write the schemas they name (not only exit 0)."""
    from fedtab.datasets import heart_schema
    from fedtab.schema import TableSchema

    run_blocks([b for b in blocks(DOCS / "tables.md") if b.lang in RUN], tmp_path, monkeypatch)
    assert TableSchema.load(tmp_path / "heart_schema_from_sdv.json").names == heart_schema().names
    assert TableSchema.load(tmp_path / "hungary_schema.json").names == heart_schema().names
    assert (tmp_path / "site.db").stat().st_size > 0


def test_install_and_test_commands_are_the_ones_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    lines = [line for b in ALL if b.kind == "ci" for line in commands(b)]
    assert "pip install torch==2.13.0 && pip install -e \".[dev]\" && fedtab demo" in lines
    assert "python -m pytest -q" in lines
    for line in lines:
        assert line in ci, f"documented as run by CI but not in .ci/run: {line!r}"
    assert any(line.startswith("NO_MKDOCS_2_WARNING=1 mkdocs build --strict") for line in ci)


def _deploy_e2e():
    spec = importlib.util.spec_from_file_location("deploy_e2e", REPO / "tests" / "test_deploy_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_deployment_command_is_run_by_the_deployment_test():
    """The walk-through starts a SuperLink and three sites: tests/test_deploy_e2e.py (slow, real
    processes) runs its files and commands; here, every documented deployment command is one of them."""
    documented = [shlex.split(line.partition(" #")[0]) for b in ALL if b.kind == "deployment" for line in commands(b)]
    assert len(documented) >= 6
    _, run = _deploy_e2e().readme_files_and_commands(9093)
    run = [["fedtab", *argv[3:]] for argv in run]  # [python, -m, fedtab, ...] -> [fedtab, ...]
    for argv in documented:
        assert argv in run, f"documented deployment command not run by tests/test_deploy_e2e.py: {argv}"


def test_every_benchmark_command_names_a_script_that_takes_its_flags():
    shown = [part.strip() for b in ALL if b.kind == "benchmark" for line in commands(b)
             for part in re.split(r"[;&]+", line.partition(" #")[0]) if part.strip() and part.strip() != "wait"]
    assert len(shown) >= 3
    for part in shown:
        argv = shlex.split(part)
        assert argv[0] == "python" and (REPO / argv[1]).is_file(), part
        flags = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
        if not flags:
            continue
        text = subprocess.run([sys.executable, argv[1], "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert text.returncode == 0, (part, text.stderr[-2000:])
        for flag in flags:
            assert flag in text.stdout, f"{part}: {flag} is not an option of {argv[1]}"


# -- generated and checked reference pages -----------------------------------------------------------

def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_from_the_app_and_lists_every_command_and_option():
    hooks = _hooks()
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert hooks.CLI_MARKER in page and "--transport" not in page  # generated, not written by hand
    reference = hooks.cli_reference()
    for path, cmd in hooks.commands():
        assert f"`{' '.join(('fedtab', *path))}`" in reference, path
        for param in cmd.params:
            if not getattr(param, "hidden", False) and param.name != "help":
                opts = getattr(param, "opts", [])
                assert all(f"`{o}`" in reference for o in opts) or param.human_readable_name in reference, param


def test_the_configuration_page_names_every_key_the_parsers_accept():
    from fedtab import config
    from fedtab.deploy import siteconf
    from fedtab.privacy.book import POLICY_KEYS

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = set(config._TOP) | set(POLICY_KEYS) | {"name", "source", "table", "public_key", "rows_at_most"}
    for settings in (config.PrivacySettings, config.TrainingSettings, config.SamplingSettings):
        keys |= {f.name for f in dataclasses.fields(settings)}
    keys |= set(siteconf._KEYS)
    source = Path(siteconf.__file__).read_text(encoding="utf-8")  # the [tls] and [auth] keys it reads
    keys |= set(re.findall(r"\b(?:tls|auth)\.get\(\"(\w+)\"", source))
    assert {"root_certificates", "insecure", "private_key"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in page and f"`[{k}]`" not in page)
    assert not missing, f"docs/configuration.md does not name: {missing}"
    # [model] options come from the models' configuration classes, rendered at build time
    assert _hooks().MODEL_OPTIONS_MARKER in page
    options = _hooks().model_options()
    for model, opts in _hooks().model_option_keys().items():
        assert f'name = "{model}"' in options and all(f"`{k}`" in options for k in opts), model


def test_the_exit_code_page_names_every_error_class_with_its_code():
    from fedtab import errors

    page = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.FedtabError)
               and "exit_code" in vars(c)]
    assert len(classes) >= 10
    for cls in classes:
        assert re.search(rf"^\| {cls.exit_code} \| `{cls.__name__}` \|", page, re.M), cls
    assert re.search(r"^\| 130 \|", page, re.M)


@pytest.mark.slow
def test_mkdocs_build_strict_passes_and_renders_the_generated_pages(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                                      "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    for path, _ in _hooks().commands():
        assert "fedtab-" + "-".join(path) in cli or not path
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "FederatedSynthesizer" in api and "SitePolicy" in api and "read_table" in api

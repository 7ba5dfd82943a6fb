"""Help that reads well (issue 21, part 3): every command of the typer app, found by walking click's
command tree (so a command added later is covered without editing this file), describes every argument
and option, renders without stray backslashes or swallowed text, and uses one wording per option."""

from __future__ import annotations

import re

import click
import pytest
import typer.main
from typer.testing import CliRunner

from fedtab.cli import app

ROOT = typer.main.get_command(app)


def walk(cmd: click.Command, path: tuple[str, ...] = ()):
    """(path, command) for the root and every command and group below it."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(ROOT))
PARAMS = [(path, p) for path, cmd in COMMANDS for p in cmd.params if not getattr(p, "hidden", False)]

# The same flag may name different things in different commands; these are the only ones that do, each
# for a reason. Every other option reads the same wherever it appears.
DIFFERENT_MEANING = {
    "--output": "a model file, a report, a schema or a table: what each command writes",
    "--out": "the folder each command writes its own outputs to",
    "--config": "a run configuration or a site.toml",
    "--table": "a database table, or one table of a multi-table SDV metadata file",
    "--host": "where the SuperLink listens, or the names its trial certificate is valid for",
    "--seed": "the job seed (demo) or the sampling seed (sample, evaluate, release)",
    "--rows": "required by 'sample'; a default elsewhere",
}


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "sample", "demo", "evaluate", "release", "inspect", "coordinator", "site", "trial-keys",
            "schema infer", "schema check", "schema import-sdv", "schema export-sdv"} <= names


@pytest.mark.parametrize("path,param", PARAMS, ids=[f"{' '.join(p) or 'fedtab'}:{q.name}" for p, q in PARAMS])
def test_every_parameter_has_help_text(path, param):
    text = getattr(param, "help", None)
    assert text and len(text.split()) >= 2, f"fedtab {' '.join(path)}: {param.name} has no help text"
    # typer's rich mode reads [word] as markup and drops it ("the configuration's [sampling] quantile_map"
    # rendered as "the configuration's quantile_map"): help text carries no square brackets.
    assert not re.search(r"\[[^\]]*\]", text), f"fedtab {' '.join(path)}: {param.name}: brackets in {text!r}"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) or "fedtab" for p, _ in COMMANDS])
def test_help_renders_without_backslashes_and_with_every_parameter(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "\\[" not in result.output and "\\" not in result.output, result.output
    cmd = dict(COMMANDS)[path]
    page = " ".join(result.output.replace("│", " ").split())
    assert cmd.help and " ".join(cmd.help.split("\n\n")[0].split()) in page, (path, cmd.help)
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        if isinstance(param, click.Option):
            assert param.opts[0] in result.output, (path, param.opts)
        # the first words of the help text are on the page (the rest may wrap)
        first = " ".join(param.help.split()[:3])
        assert first in page, (path, param.name, first)


def test_each_command_summary_is_one_line():
    """The command list shows a command's first paragraph: a line break there breaks the table."""
    for path, cmd in COMMANDS:
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert first and "\n" not in first, f"fedtab {' '.join(path)}: first paragraph spans lines: {first!r}"


def _wording(text: str) -> str:
    """Help text without its closing 'Default: ...' sentence: one option may default differently in two
    commands (from the model file, or from the run configuration) and still mean the same."""
    return re.sub(r"\s*Default: .*$", "", text, flags=re.S)


def test_one_name_one_wording_one_metavar():
    seen: dict[str, tuple[tuple[str, ...], click.Option]] = {}
    for path, param in PARAMS:
        if not isinstance(param, click.Option) or param.opts[0] == "--help":
            continue
        for flag in (o for o in param.opts if o.startswith("--")):
            if flag in DIFFERENT_MEANING or flag not in seen:
                seen.setdefault(flag, (path, param))
                continue
            first_path, first = seen[flag]
            where = f"{flag} in 'fedtab {' '.join(first_path)}' and 'fedtab {' '.join(path)}'"
            assert _wording(param.help) == _wording(first.help), f"{where}: different help text"
            assert param.metavar == first.metavar, f"{where}: different metavar"
            assert param.opts == first.opts, f"{where}: different short forms"
    # Options that take a file or folder say which (FILE / DIR), not the type name PATH.
    for path, param in PARAMS:
        if isinstance(param, click.Option) and isinstance(param.type, click.Path):
            assert param.metavar in {"FILE", "DIR", "FILE|URL"}, (path, param.name, param.metavar)


def test_fixed_sets_are_choices():
    transport = [p for _, p in PARAMS if p.name == "transport"]
    assert transport and all(isinstance(p.type, click.Choice) for p in transport)
    result = CliRunner().invoke(app, ["train", "x.toml", "-o", "m.fedtab", "--transport", "carrier-pigeon"])
    assert result.exit_code == 2 and "inprocess" in result.output and "flower" in result.output


def test_every_seed_option_says_what_it_fixes_and_that_dp_noise_is_not_seeded():
    seeds = [(path, p) for path, p in PARAMS if isinstance(p, click.Option) and "--seed" in p.opts]
    assert {" ".join(path) for path, _ in seeds} >= {"sample", "evaluate", "release", "demo"}
    for path, p in seeds:
        assert "fixes" in p.help and "never seeded" in p.help and p.metavar == "SEED", (path, p.help)

"""The ``fedtab`` command line: a thin typer app that registers the command groups.

Commands live in ``fedtab/commands/`` (one module per group, each with ``register(app)``); this file
only assembles them and runs the app. ``main()`` is the console script: it exits with the exit code
of the fedtab error raised (table in ``fedtab.errors`` and docs/exit-codes.md), never with a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from fedtab import __version__
from fedtab.commands.common import DEBUG_ENV, exit_code_for

COMMAND_MODULES = ("fedtab.commands.data", "fedtab.commands.model", "fedtab.commands.release",
                   "fedtab.commands.deploy", "fedtab.commands.keys")

app = typer.Typer(
    name="fedtab",
    help="Federated, differentially private synthetic tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedtab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Federated, differentially private synthetic tables."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; any error becomes a message and its exit code."""
    try:
        app(args=argv, prog_name="fedtab")
    except SystemExit:
        raise
    except Exception as exc:  # commands report their own errors; this catches anything outside them
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        sys.exit(exit_code_for(exc))

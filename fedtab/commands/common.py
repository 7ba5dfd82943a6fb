"""What every CLI command shares: error reporting with exit codes, consoles, small option helpers.

Errors go to stderr as one short message and the exit code of the error class (see ``fedtab.errors``);
never a traceback, unless the environment sets ``FEDTAB_DEBUG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import click
import typer
from rich.console import Console
from rich.text import Text

from fedtab.errors import FedtabError

DEBUG_ENV = "FEDTAB_DEBUG"


def stdout() -> Console:
    # Made per call: CliRunner swaps sys.stdout, and a console caches the stream it was built with.
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def print_error(message: str) -> None:
    stderr().print(Text("error: ", style="bold red") + Text(message))


def exit_code_for(exc: BaseException) -> int:
    """Report ``exc`` on stderr and return the exit code to use."""
    if isinstance(exc, FedtabError):
        print_error(str(exc))
        return exc.exit_code
    print_error(
        f"unexpected {type(exc).__name__}: {exc}. This is a bug in fedtab; "
        f"run again with {DEBUG_ENV}=1 to see the traceback and report it."
    )
    return 1


class _SiteLogToStderr(logging.Handler):
    """The site log (logger ``fedtab.site``) on this terminal. A site tells the coordinator only an
    error's class and columns; the details (values, rows) are in its own log. In a local simulation
    (``fedtab train``, ``demo``, ``evaluate``, ``release``) the user runs every site, and in ``fedtab
    site`` the operator runs this one: this is their log."""

    def emit(self, record: logging.LogRecord) -> None:
        stderr().print(Text("site log: ", style="yellow") + Text(record.getMessage()))


def site_log_to_stderr() -> None:
    log = logging.getLogger("fedtab.site")
    if not any(isinstance(h, _SiteLogToStderr) for h in log.handlers):
        log.addHandler(_SiteLogToStderr())
    log.setLevel(logging.INFO)


def report_errors(fn: Callable) -> Callable:
    """Turn fedtab errors (and unexpected ones) raised by a command into a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        site_log_to_stderr()
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1" and not isinstance(exc, FedtabError):
                raise
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper


def command(app: typer.Typer, name: str | None = None, **kwargs) -> Callable:
    """``@command(app)``: ``app.command`` plus ``report_errors``."""

    def decorate(fn: Callable) -> Callable:
        return app.command(name, **kwargs)(report_errors(fn))

    return decorate

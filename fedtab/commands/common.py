"""What every CLI command shares: error reporting with exit codes, consoles, small option helpers.

Errors go to stderr as one short message and the exit code of the error class (see ``fedtab.errors``);
never a traceback, unless the environment sets ``FEDTAB_DEBUG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import click
import typer
from rich.console import Console
from rich.text import Text

from fedtab.errors import FedtabError, SourceError

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


INTERRUPTED = 130  # Ctrl-C: the shell's convention (128 + SIGINT), in the exit-code table (docs/exit-codes.md)


def report_errors(fn: Callable) -> Callable:
    """Turn fedtab errors (and unexpected ones) raised by a command into a message and an exit code;
    Ctrl-C into one line and exit code 130 (child processes are stopped by their own ``finally``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        site_log_to_stderr()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print_error("interrupted (Ctrl-C): stopped; nothing was written for the step that was running.")
            raise typer.Exit(INTERRUPTED) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1" and not isinstance(exc, FedtabError):
                raise
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper


# Options shared by several commands: one name, one wording, one metavar each (``fedtab <cmd> --help``
# reads the same everywhere; tests/test_cli_help.py checks it). Help text is plain: no rich markup,
# since typer's rich mode would swallow anything written in square brackets.
SAMPLING_SEED_HELP = ("Sampling seed, in [0, 2**32): fixes which rows are drawn from the model. It is public; "
                      "the DP noise is secret and never seeded. Default: the model's seed.")
SeedOpt = typer.Option(None, "--seed", metavar="SEED", help=SAMPLING_SEED_HELP)
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")
ReplaceOpt = typer.Option(False, "--replace", help="Overwrite the output if it exists (without it, an existing "
                                                   "output is refused with exit code 5).")
TableOpt = typer.Option(None, "--table", "-t", metavar="NAME", help="Table name, for a database URL.")
PolicyOpt = typer.Option(None, "--policy", metavar="FILE", help="Release policy (TOML); default: the shipped one "
                                                                "(fedtab/data/default_policy.toml).")
SiteReportsOpt = typer.Option(None, "--site-reports", metavar="DIR",
                              help="Folder for each site's own report (default: the site's ledger folder).")


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    """A seed option must fit numpy's seeds: [0, 2**32) (ConfigError, exit code 2)."""
    from fedtab.errors import ConfigError

    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"The '{flag}' option must be a whole number in [0, 2**32). Got {seed} instead.")


def command(app: typer.Typer, name: str | None = None, **kwargs) -> Callable:
    """``@command(app)``: ``app.command`` plus ``report_errors``."""

    def decorate(fn: Callable) -> Callable:
        return app.command(name, **kwargs)(report_errors(fn))

    return decorate


def check_output_file(path: str | os.PathLike, *, replace: bool, flag: str = "--replace", what: str = "output") -> None:
    """Refuse, before any work starts, an output file that cannot be written: an existing directory, an
    existing file without ``replace`` (naming ``flag``), a folder that cannot be created or written
    (``SourceError``, exit 5). A SQLAlchemy URL is left to its connector."""
    from connectors import is_url

    if is_url(str(path)):
        return
    p = Path(path)
    if p.is_dir():
        raise SourceError(f"{p}: is a directory; give a file name for the {what} (e.g. {p / 'out'}).")
    if p.exists() and not replace:
        raise SourceError(f"{p}: already exists; pass {flag} to overwrite it, or choose another {what} path.")
    _check_writable_folder(p.parent, what)


def check_output_folder(path: str | os.PathLike, *, what: str = "output folder") -> None:
    """Refuse, before any work starts, an output folder that is an existing file or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SourceError(f"{p}: is a file, not a folder; give a folder for the {what} (it is created if missing).")
    _check_writable_folder(p, what)


def _check_writable_folder(folder: Path, what: str) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder this process can create files in
    (tried with a temporary file: permission bits do not tell for root, nor on /proc)."""
    existing = folder if str(folder) else Path(".")
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SourceError(f"{folder}: {existing} is a file, so the {what} cannot be written there.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fedtab-write-check-", dir=existing)
    except OSError as e:
        raise SourceError(f"{folder}: the {what} cannot be written there ({e.strerror or e}); choose a writable "
                          "folder.") from None
    os.close(fd)
    os.unlink(tmp)

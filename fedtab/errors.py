"""The one error hierarchy of fedtab.

Every class subclasses a built-in (so ``except ValueError`` keeps working for users who do not know
fedtab) and carries the exit code the CLI uses. Messages say what was wrong, the value seen, what was
expected and how to fix it. Library code raises these; only ``fedtab.cli`` turns them into exit codes.

Exit codes (documented in docs/exit-codes.md; tests/test_docs.py checks it names every class):

====  =========================  ==================================================================
code  class                      meaning
====  =========================  ==================================================================
1     FedtabError                any other fedtab failure
2     ConfigError                a bad argument, option or configuration file
3     SchemaError                a schema file is malformed, or sites' schemas do not agree
4     DataValidationError        a table does not match its schema (every problem is listed)
5     SourceError                a file or database table cannot be read or written
6     PrivacyBudgetError         a spend would exceed a site's privacy budget; nothing was released
7     ModelFileError             a model file is tampered with, foreign or unreadable; a model file
                                 or audit record whose signature is missing or not by a trusted key
                                 (``SignatureError``)
8     NotFittedError             a synthesizer/transformer was used before ``fit``
9     FederationError            a site failed or too few sites remain; a site's update that cannot
                                 be sent (``UnusableUpdateError``)
10    ReleaseRefusedError        the release gate refused the synthetic table
====  =========================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass


class FedtabError(Exception):
    """Base class of all fedtab errors.

    What a site may tell the coordinator about a failure (``fedtab.federation.transport.error_reply``):
    the class, its exit code and the ``columns`` named; the message itself only when ``public`` is set,
    i.e. when it was written to state nothing but rules, names and public settings (a site's refusal
    of a job, a budget check on the ledger's public figures). Every other message may hold values,
    counts or row numbers: it stays in the site's own log.
    """

    exit_code = 1

    def __init__(self, *args, public: bool = False, columns: tuple[str, ...] | list[str] = ()):
        super().__init__(*args)
        self.public = bool(public)
        self.columns = tuple(str(c) for c in columns)


class ConfigError(FedtabError, ValueError):
    """A bad parameter, option or configuration file."""

    exit_code = 2


class SchemaError(FedtabError, ValueError):
    """A schema is malformed, or the sites' schemas disagree."""

    exit_code = 3


@dataclass(frozen=True)
class Problem:
    """One problem found while validating a table: where, how many rows, examples, and what was expected."""

    column: str | None
    message: str
    rows: int = 0
    examples: tuple = ()
    expected: str = ""

    def __str__(self) -> str:
        where = f"column '{self.column}'" if self.column is not None else "table"
        text = f"{where}: {self.message}"
        if self.rows:
            text += f" ({self.rows} row{'s' if self.rows != 1 else ''}"
            if self.examples:
                text += ", e.g. " + ", ".join(repr(v) for v in self.examples[:5])
            text += ")"
        elif self.examples:
            text += " (e.g. " + ", ".join(repr(v) for v in self.examples[:5]) + ")"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


class DataValidationError(FedtabError, ValueError):
    """A table does not match its schema. ``problems`` lists every problem found, not just the first."""

    exit_code = 4

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s) found:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines),
                         columns=tuple(dict.fromkeys(p.column for p in self.problems if p.column is not None)))


class SourceError(FedtabError, OSError):
    """A file or database table cannot be read or written."""

    exit_code = 5


class PrivacyBudgetError(FedtabError, RuntimeError):
    """A privacy spend would take a site past its budget. The spend did not happen; nothing was released."""

    exit_code = 6


class ModelFileError(FedtabError, ValueError):
    """A model file is tampered with, comes from another program, or cannot be read."""

    exit_code = 7


class SignatureError(ModelFileError):
    """A model file or audit record is unsigned, or its signature is not a trusted key's (checked only
    when a trusted key is configured: ``fedtab.signing``)."""


class SignatureNotCheckedWarning(UserWarning):
    """A model file was loaded without a trusted key configured: its signature was not checked."""


class ReadUnderDPWarning(UserWarning):
    """A job ran without a progress callback and the encoding read a column's range or categories under
    DP (declared without them): what it read, and that declaring it costs nothing (the CLI prints the
    same line among its phases)."""


class NotFittedError(FedtabError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (same contract as scikit-learn's NotFittedError)."""

    exit_code = 8


class FederationError(FedtabError, RuntimeError):
    """A site failed, or too few sites remain to go on."""

    exit_code = 9


class UnusableUpdateError(FederationError):
    """A site cannot send its model update (a value not finite or too large to encode: its training
    diverged, or its code is broken). The coordinator names the site and leaves it out of the rounds
    when ``training.min_sites`` allows, like a site whose update fails the screen."""


class ReleaseRefusedError(FedtabError, RuntimeError):
    """The release gate refused the synthetic table. ``failed`` lists every failed check."""

    exit_code = 10

    def __init__(self, message: str, failed: list | None = None):
        self.failed = list(failed or [])
        super().__init__(message)


def check_is_fitted(obj, attributes: str | list[str]) -> None:
    """Raise NotFittedError unless ``obj`` has every learned attribute named (they end in ``_``)."""
    names = [attributes] if isinstance(attributes, str) else list(attributes)
    if not all(getattr(obj, n, None) is not None for n in names):
        raise NotFittedError(
            f"This {type(obj).__name__} instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator."
        )

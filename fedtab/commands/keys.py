"""Key and signature commands: ``fedtab signing-keygen``, ``fedtab site keygen`` and ``fedtab verify``,
and the ``--trusted-key`` option that ``sample``, ``evaluate`` and ``release`` share.

The coordinator signs model files and audit records with its Ed25519 key (``fedtab.signing``); a site
makes its own SuperNode key pair at home and gives only the public half to the coordinator.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, List, Optional

import typer

from fedtab.commands.common import command, report_errors, stderr, stdout
from fedtab.errors import ConfigError

TrustedKeyOpt = typer.Option(
    None, "--trusted-key", metavar="FILE",
    help="The coordinator's public signing key (its PATH.pub from 'fedtab signing-keygen'; repeat for several): "
         "the model file must be signed by one of them, or it is refused with exit code 7. Default: the files "
         "named in FEDTAB_TRUSTED_KEYS; with none, the signature is not checked (said on stderr).")


def register(app: typer.Typer) -> None:
    command(app, "signing-keygen")(signing_keygen_cmd)
    command(app, "verify")(verify_cmd)


def add_site_group(app: typer.Typer, serve: Callable) -> None:
    """``fedtab site`` (``serve``: runs the site with ``--config``) with its subcommand ``keygen``."""
    group = typer.Typer(rich_markup_mode="rich", add_completion=False)
    group.callback(invoke_without_command=True)(report_errors(serve))
    command(group, "keygen")(site_keygen_cmd)
    app.add_typer(group, name="site")


def trusted_keys(files: Optional[List[Path]]) -> tuple:
    """The trusted keys of a command: its ``--trusted-key`` files, else ``FEDTAB_TRUSTED_KEYS``'s; read
    (and refused when unusable, exit code 2) before any work starts."""
    from fedtab.signing import resolve_trusted_keys

    return resolve_trusted_keys(list(files) if files else None)


def load_model(path: Path, trusted: tuple):
    """``fedtab.load`` with ``trusted`` keys; one line on stderr says whether the signature was checked."""
    from fedtab.api import load
    from fedtab.errors import SignatureNotCheckedWarning
    from fedtab.signing import NOT_CHECKED, TRUSTED_KEYS_ENV

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SignatureNotCheckedWarning)  # said once, below, in the CLI's words
        synth = load(path, trusted_keys=trusted)
    if trusted:
        stderr().print(f"model file signature checked: signed by trusted key {synth.signed_by_}", markup=False)
    else:
        stderr().print(f"{NOT_CHECKED} (give --trusted-key FILE or set {TRUSTED_KEYS_ENV})", markup=False)
    return synth


def signing_keygen_cmd(
    path: Path = typer.Argument(..., metavar="PATH", show_default=False,
                                help="Private key file to create (mode 0600); the public key goes to PATH.pub."),
) -> None:
    """Make the coordinator's Ed25519 signing key (model files, audit records).

    Name PATH as 'signing_key' in the run or consortium configuration (or signing_key= in the API);
    hand PATH.pub to the sites and users, who check files with --trusted-key PATH.pub. Existing files
    are never overwritten."""
    from fedtab.signing import fingerprint, generate_signing_key, load_public_key

    private, public = generate_signing_key(path)
    stdout().print(f"signing key: {private} (mode 0600; keep it at the coordinator)\n"
                   f"public key: {public} (give it to sites and users: --trusted-key {public})\n"
                   f"fingerprint: {fingerprint(load_public_key(public))}", markup=False)


def site_keygen_cmd(
    path: Path = typer.Argument(..., metavar="PATH", show_default=False,
                                help="Private key file to create (mode 0600), e.g. keys/cleveland; the public "
                                     "key goes to PATH.pub."),
) -> None:
    """Make this site's SuperNode key pair, here at the site (OpenSSH EC P-384, as Flower expects).

    The private key never leaves this machine: name it in site.toml ([auth] private_key). Send only
    PATH.pub to the coordinator, who names it as the site's public_key in the consortium
    configuration. Existing files are never overwritten."""
    from fedtab.deploy.pki import make_node_key

    private, public = make_node_key(path.parent, path.name)
    stdout().print(f"private key: {private} (mode 0600; it stays at this site: site.toml [auth] private_key)\n"
                   f"public key: {public} (send it to the coordinator: [sites.<name>] public_key)", markup=False)


def verify_cmd(
    file: Path = typer.Argument(..., metavar="FILE", show_default=False,
                                help="A model file (.fedtab) or an audit record (audit.json)."),
    trusted_key: Optional[List[Path]] = TrustedKeyOpt,
) -> None:
    """Check that a model file or audit record is signed by a trusted key (exit code 7 if not)."""
    from fedtab.modelfile import load_bundle
    from fedtab.signing import read_audit, verify_record

    trusted = trusted_keys(trusted_key)
    if not trusted:
        raise ConfigError("no trusted key to check against: give --trusted-key FILE (the coordinator's PATH.pub) "
                          "or set FEDTAB_TRUSTED_KEYS.")
    if _is_json(file):
        signer = verify_record(read_audit(file), trusted, source=str(file))
        what = "audit record"
    else:
        signer = load_bundle(file, trusted_keys=trusted).signed_by
        what = "model file"
    stdout().print(f"{file}: {what} signature OK: signed by trusted key {signer}", markup=False)


def _is_json(path: Path) -> bool:
    """An audit record is JSON (starts with '{'); a model file is safetensors (an 8-byte length first)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"{"
    except OSError:
        return False  # the model file reader names the problem

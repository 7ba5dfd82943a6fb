"""Signed artifacts: the coordinator's Ed25519 signing key, key files, model file and audit signatures.

Keys. The coordinator holds one Ed25519 signing key (``fedtab signing-keygen PATH``: PATH, the
private key in OpenSSH format, and PATH.pub, the public key as one ``ssh-ed25519 ...`` line, which
the coordinator hands to sites and users). Every key file fedtab writes is created by ``os.open``
with ``O_CREAT | O_EXCL`` and its final mode (0600 for a private key): it is never readable by others,
not even for an instant, and an existing file is never overwritten (``write_new_file``).

Where a signature lives. Inside what it signs, so that a model file or an audit record travels as
one file: a model file's safetensors metadata holds ``signature`` next to ``content_sha256``, and
signs that hash (which covers the format, the manifest and every tensor: everything in the file that
fedtab reads); an audit record's JSON holds ``signature``, over the record's canonical JSON without
it. Each signature names its scheme, the signer's public key and fingerprint and a domain label, so
that a model file's signature can never pass for an audit record's or the other way round.

Checking. Only a trusted key decides: a file signed by any other key (its own embedded key
included) is refused. Trusted keys come from the caller (``trusted_keys=``, ``--trusted-key``) or
else from ``FEDTAB_TRUSTED_KEYS`` (public key files, separated by ``os.pathsep``). With none
configured a file is read as before, with one plain warning that its signature was not checked; the
unkeyed content hash still catches accidental corruption either way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from fedtab.errors import ConfigError, SignatureError, SourceError

TRUSTED_KEYS_ENV = "FEDTAB_TRUSTED_KEYS"
NOT_CHECKED = "model file signature not checked: no trusted key configured"
SCHEME = "ed25519"
MODEL_DOMAIN = "fedtab.model/1 content_sha256"
AUDIT_DOMAIN = "fedtab.audit/1 canonical json"
SIGNATURE_KEY = "signature"
PUBLIC_COMMENT = "fedtab-signing"

PrivateKeyLike = Union[str, os.PathLike, "Ed25519PrivateKey"]  # noqa: F821 - cryptography type, imported lazily
PublicKeyLike = Union[str, os.PathLike, "Ed25519PublicKey"]  # noqa: F821


# -- key files -------------------------------------------------------------------------------------
def write_new_file(path: str | os.PathLike, data: bytes, *, mode: int) -> Path:
    """Create ``path`` with ``mode`` from its first byte (``O_CREAT | O_EXCL``: never an existing file,
    never through a symbolic link) and write ``data``; on any failure the file is removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags, mode)
    except FileExistsError:
        raise SourceError(f"{p}: already exists; fedtab never overwrites a key file. Move it away yourself, or "
                          "choose another path.") from None
    except OSError as e:
        raise SourceError(f"{p}: cannot create the file ({e.strerror or e}).") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        p.unlink(missing_ok=True)
        raise
    return p


def check_new_files(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse, before anything is written, key files that already exist (``SourceError``, exit 5)."""
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise SourceError(f"{', '.join(existing)}: already exist(s); fedtab never overwrites a key file. Move "
                          "them away yourself, or choose another path.")


def generate_signing_key(path: str | os.PathLike) -> tuple[Path, Path]:
    """Make the coordinator's Ed25519 signing key: ``path`` (private, OpenSSH format, mode 0600) and
    ``path.pub`` (public, one ``ssh-ed25519`` line). Neither may exist yet."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(path), Path(f"{path}.pub")
    check_new_files([private_path, public_path])
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    write_new_file(private_path, private, mode=0o600)
    try:
        write_new_file(public_path, public_line(key.public_key()).encode() + b"\n", mode=0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)  # nothing half-made: a pair or nothing
        raise
    return private_path, public_path


def public_line(key) -> str:
    """A public key as one OpenSSH line (``ssh-ed25519 AAAA... fedtab-signing``)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{raw} {PUBLIC_COMMENT}"


def fingerprint(key) -> str:
    """``SHA256:...`` of a public key, as ``ssh-keygen -lf KEY.pub`` prints it."""
    from cryptography.hazmat.primitives import serialization

    blob = base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_signing_key(key: PrivateKeyLike, *, what: str = "signing key"):
    """An Ed25519 private key from a key object or a file (OpenSSH or PEM), refused (``ConfigError``)
    when missing, unreadable, not Ed25519, or readable by anyone but its owner."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    if not isinstance(key, (str, os.PathLike)):
        raise ConfigError(f"The {what} must be the path of an Ed25519 private key file. Got {type(key).__name__} "
                          "instead.")
    p = Path(key)
    data = _read_key_file(p, what)
    loaded = _first_readable(data, serialization.load_ssh_private_key, serialization.load_pem_private_key,
                             password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{p}: not an unencrypted Ed25519 private key; make one with 'fedtab signing-keygen {p}'.")
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:  # as ssh does: a private key others can read is no longer private
        raise ConfigError(f"{p}: the {what} is readable by others (mode {mode:04o}); run 'chmod 600 {p}' (and "
                          "consider it exposed if others had access).")
    return loaded


def load_public_key(key: PublicKeyLike, *, what: str = "trusted key"):
    """An Ed25519 public key from a key object or a file (an ``ssh-ed25519`` line or PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if not isinstance(key, (str, os.PathLike)):
        raise ConfigError(f"A {what} must be the path of an Ed25519 public key file. Got {type(key).__name__} "
                          "instead.")
    p = Path(key)
    data = _read_key_file(p, what)
    loaded = _first_readable(data.strip(), serialization.load_ssh_public_key, serialization.load_pem_public_key)
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{p}: not an Ed25519 public key (expected the 'ssh-ed25519 ...' line of the "
                          "coordinator's PATH.pub from 'fedtab signing-keygen PATH').")
    return loaded


def _first_readable(data: bytes, *readers, **kwargs):
    """The key the first of ``readers`` (OpenSSH, then PEM) reads from ``data``, or None."""
    from cryptography.exceptions import UnsupportedAlgorithm

    for reader in readers:
        try:
            return reader(data, **kwargs)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    return None


def _read_key_file(p: Path, what: str) -> bytes:
    try:
        if p.stat().st_size > 64 * 1024:
            raise ConfigError(f"{p}: too large to be a key file.")
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} file not found.") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a {what} file.") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror or e}).") from None


def resolve_trusted_keys(trusted_keys: PublicKeyLike | Iterable[PublicKeyLike] | None) -> tuple:
    """The trusted public keys: ``trusted_keys`` (a key or file, or several), else the files named in
    ``FEDTAB_TRUSTED_KEYS``; an empty tuple when neither names any."""
    if trusted_keys is None:
        env = os.environ.get(TRUSTED_KEYS_ENV, "")
        items: list = [s for s in env.split(os.pathsep) if s.strip()]
    elif isinstance(trusted_keys, (str, os.PathLike)) or not isinstance(trusted_keys, Iterable):
        items = [trusted_keys]
    else:
        items = list(trusted_keys)
    where = f" (from {TRUSTED_KEYS_ENV})" if trusted_keys is None else ""
    keys = []
    for item in items:
        try:
            keys.append(load_public_key(item))
        except ConfigError as e:
            raise ConfigError(f"{e}{where}") from None
    return tuple(keys)


# -- signatures ------------------------------------------------------------------------------------
def sign(key, *, domain: str, message: bytes) -> dict[str, str]:
    """A signature record of ``message`` under ``domain`` by ``key`` (an Ed25519 private key)."""
    pub = key.public_key()
    value = key.sign(_signed_bytes(domain, message))
    return {"scheme": SCHEME, "domain": domain, "key": public_line(pub), "fingerprint": fingerprint(pub),
            "value": base64.b64encode(value).decode()}


def verify(signature: Any, trusted: tuple, *, domain: str, message: bytes, source: str) -> str:
    """Check ``signature`` (a record from ``sign``) over ``message`` against the trusted keys; returns
    the signer's fingerprint, or raises ``SignatureError`` saying what is wrong."""
    from cryptography.exceptions import InvalidSignature

    fix = "Do not use it; ask the coordinator for the file it signed."
    if signature is None:
        raise SignatureError(f"{source}: not signed, and a trusted key is configured ({_names(trusted)}): unsigned "
                             f"files are refused. {fix}")
    if not isinstance(signature, Mapping) or signature.get("scheme") != SCHEME or signature.get("domain") != domain:
        raise SignatureError(f"{source}: its signature is malformed or not a {domain!r} signature. {fix}")
    claimed = str(signature.get("fingerprint", "?"))
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except ValueError:
        raise SignatureError(f"{source}: its signature is malformed (not base64). {fix}") from None
    matches = [k for k in trusted if fingerprint(k) == claimed]
    if not matches:
        raise SignatureError(f"{source}: signed by key {claimed}, which is not a trusted key ({_names(trusted)}). "
                             f"{fix}")
    try:
        matches[0].verify(value, _signed_bytes(domain, message))
    except InvalidSignature:
        raise SignatureError(f"{source}: the signature does not match the contents: the file was modified after "
                             f"it was signed by {claimed}. {fix}") from None
    return claimed


def _signed_bytes(domain: str, message: bytes) -> bytes:
    return domain.encode() + b"\0" + message


def _names(trusted: tuple) -> str:
    return ", ".join(fingerprint(k) for k in trusted)


# -- audit records ---------------------------------------------------------------------------------
def canonical_json(record: Mapping[str, Any]) -> bytes:
    """The bytes an audit record's signature covers: sorted keys, no spaces, without ``signature``."""
    body = {k: v for k, v in record.items() if k != SIGNATURE_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_record(record: Mapping[str, Any], key: PrivateKeyLike) -> dict[str, Any]:
    """``record`` (made JSON-plain first, as it will be read back) with its ``signature`` added."""
    plain = json.loads(json.dumps({k: v for k, v in record.items() if k != SIGNATURE_KEY}, default=str))
    plain[SIGNATURE_KEY] = sign(load_signing_key(key), domain=AUDIT_DOMAIN, message=canonical_json(plain))
    return plain


def verify_record(record: Mapping[str, Any], trusted_keys=None, *, source: str = "audit record") -> str:
    """Check an audit record's signature against the trusted keys (``resolve_trusted_keys``); returns
    the signer's fingerprint. With no trusted key configured this is a ``ConfigError``: checking a
    signature needs a key to check it against."""
    trusted = resolve_trusted_keys(trusted_keys)
    if not trusted:
        raise ConfigError(f"no trusted key configured to check {source} against: give --trusted-key FILE (or "
                          f"trusted_keys=, or {TRUSTED_KEYS_ENV}).")
    return verify(record.get(SIGNATURE_KEY), trusted, domain=AUDIT_DOMAIN, message=canonical_json(record),
                  source=source)


def read_audit(path: str | os.PathLike) -> dict[str, Any]:
    """An audit record file as a dict (``SourceError`` when it cannot be read); its signature is checked
    by ``verify_record``."""
    p = Path(path)
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{p}: audit record not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{p}: not a readable audit record ({e}).") from None
    if not isinstance(record, dict):
        raise SourceError(f"{p}: not an audit record (a JSON object is expected).")
    return record

"""Self-signed TLS certificates and SuperNode authentication keys, for trials and tests.

A real consortium uses certificates from a CA its members trust; these helpers make the same kinds
of files (PEM certificates; OpenSSH EC P-384 keys, the format Flower's SuperNode authentication
reads) so that TLS and authentication can be exercised on loopback.

Every file is created with its final mode from the first byte (``fedtab.signing.write_new_file``:
``O_CREAT | O_EXCL``, 0600 for a private key) and never over an existing file. ``make_node_key`` is
also what ``fedtab site keygen`` runs at a site, so that its private key never leaves it; ``make_tls``
and ``fedtab trial-keys`` make every key in one place, which only a trial may do.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrialPKI:
    ca_certfile: Path
    certfile: Path
    keyfile: Path


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    from fedtab.signing import write_new_file

    return write_new_file(path, data, mode=mode)  # the mode is set at creation: never readable by others


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """The files ``make_tls`` writes in ``directory``: CA certificate, server certificate, server key."""
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def node_key_files(directory: Path, name: str) -> tuple[Path, Path]:
    """The files ``make_node_key`` writes: private key, public key."""
    return directory / name, directory / f"{name}.pub"


def make_tls(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30) -> TrialPKI:
    """A CA and a server certificate for ``hosts`` signed by it (IP addresses become IP SANs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from fedtab.signing import check_new_files

    check_new_files(tls_files(directory))  # before anything is written
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtab trial CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = tls_files(directory)
    return TrialPKI(
        ca_certfile=_write(ca_file, ca.public_bytes(pem), 0o644),
        certfile=_write(cert_file, cert.public_bytes(pem), 0o644),
        keyfile=_write(key_file, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())),
    )


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """(private key, public key) files for one SuperNode: OpenSSH EC P-384, as Flower expects. Neither
    file may exist yet; if the public one cannot be written, the private one is removed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedtab.signing import check_new_files

    private_file, public_file = node_key_files(directory, name)
    check_new_files([private_file, public_file])

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private_file, private)
    try:
        _write(public_file, public + b"\n", 0o644)
    except BaseException:
        private_file.unlink(missing_ok=True)  # a pair or nothing
        raise
    return private_file, public_file

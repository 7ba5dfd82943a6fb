"""Key files made with their mode from the first byte, never over an existing file (fedtab.signing,
fedtab.deploy.pki, 'fedtab site keygen', 'fedtab trial-keys'), and the site service's IPC frame cap.
Each check is also run against a broken control (the old write-then-chmod writer, an uncapped frame
reader) to show that it catches one."""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedtab import signing
from fedtab.deploy import ipc, pki
from fedtab.errors import FederationError, SourceError

PRIVATE = 0o600
CREATE_NEW = os.O_CREAT | os.O_EXCL


class _FileCalls:
    """Every os.open / chmod this process makes while the spy is on (the real calls still happen)."""

    def __init__(self, monkeypatch):
        self.opens: list[tuple[str, int, int]] = []
        self.chmods: list[str] = []
        real_open, real_chmod, real_fchmod = os.open, os.chmod, os.fchmod

        def spy_open(path, flags, mode=0o777, *a, **k):
            self.opens.append((os.fspath(path), flags, mode))
            return real_open(path, flags, mode, *a, **k)

        def spy_chmod(path, mode, *a, **k):
            self.chmods.append(os.fspath(path))
            return real_chmod(path, mode, *a, **k)

        def spy_fchmod(fd, mode):
            self.chmods.append(f"fd {fd}")
            return real_fchmod(fd, mode)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "chmod", spy_chmod)
        monkeypatch.setattr(os, "fchmod", spy_fchmod)

    def created_private(self, path: Path) -> bool:
        """``path`` was created new (O_CREAT|O_EXCL) with mode 0600 in the call that made it, and its mode
        was never changed afterwards."""
        made = [(f, m) for p, f, m in self.opens if p == os.fspath(path) and f & CREATE_NEW == CREATE_NEW]
        return (len(made) == 1 and made[0][1] == PRIVATE and not self.chmods
                and (path.stat().st_mode & 0o777) == PRIVATE)


def _old_write(path: Path, data: bytes, mode: int = PRIVATE) -> Path:
    """The writer fedtab had before: the file exists with the umask's mode until chmod runs."""
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- key files ----------------------------------------------------------------------------------------
def test_private_keys_are_created_0600_with_o_excl_and_never_chmodded(monkeypatch, tmp_path):
    calls = _FileCalls(monkeypatch)
    private, public = signing.generate_signing_key(tmp_path / "coordinator")
    assert calls.created_private(private)
    assert (public.stat().st_mode & 0o777) == 0o644 and public.read_text().startswith("ssh-ed25519 ")
    node, node_pub = pki.make_node_key(tmp_path / "site", "cleveland")
    assert calls.created_private(node)
    tls = pki.make_tls(tmp_path / "tls")
    assert calls.created_private(tls.keyfile)
    assert (tls.ca_certfile.stat().st_mode & 0o777) == 0o644


def test_broken_control_the_old_write_then_chmod_is_caught(monkeypatch, tmp_path):
    calls = _FileCalls(monkeypatch)
    path = _old_write(tmp_path / "key", b"secret")
    assert (path.stat().st_mode & 0o777) == PRIVATE  # its final mode looks right ...
    assert not calls.created_private(path)  # ... but it was not created with it: the check says so


def test_cli_site_keygen_makes_the_pair_at_the_site(cli, monkeypatch, tmp_path):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    calls = _FileCalls(monkeypatch)
    result = cli("site", "keygen", tmp_path / "keys" / "cleveland")
    assert result.exit_code == 0, result.output
    assert calls.created_private(tmp_path / "keys" / "cleveland")
    load_ssh_private_key((tmp_path / "keys" / "cleveland").read_bytes(), password=None)
    assert (tmp_path / "keys" / "cleveland.pub").read_text().startswith("ecdsa-sha2-nistp384 ")  # Flower's format
    assert "[auth] private_key" in result.output and "[sites.<name>] public_key" in result.output


@pytest.mark.parametrize("make", [
    lambda p: signing.generate_signing_key(p),
    lambda p: pki.make_node_key(p.parent, p.name),
])
def test_an_existing_key_file_is_never_overwritten(make, tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"the operator's key")
    with pytest.raises(SourceError, match="never overwrites a key file"):
        make(path)
    assert path.read_bytes() == b"the operator's key" and not Path(f"{path}.pub").exists()
    # The public half existing is refused as well, before the private one is made.
    other = tmp_path / "other"
    Path(f"{other}.pub").write_text("someone's public key\n")
    with pytest.raises(SourceError):
        make(other)
    assert not other.exists()


def test_a_planted_symbolic_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("not yours")
    (tmp_path / "key").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(SourceError):
        signing.generate_signing_key(tmp_path / "key")
    with pytest.raises(SourceError):
        signing.write_new_file(tmp_path / "dangling", b"secret", mode=PRIVATE)
    assert target.read_text() == "not yours" and not (tmp_path / "created-through-the-link").exists()


def test_cli_keygens_and_trial_keys_refuse_existing_files_and_write_nothing(cli, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ca.pem").write_text("an existing CA")
    result = cli("trial-keys", keys, "--site", "a", "--site", "b")
    assert result.exit_code == SourceError.exit_code and "never overwrites" in result.output, result.output
    assert sorted(p.name for p in keys.iterdir()) == ["ca.pem"]  # nothing half-made
    assert cli("signing-keygen", tmp_path / "c").exit_code == 0
    result = cli("signing-keygen", tmp_path / "c")
    assert result.exit_code == SourceError.exit_code and "Traceback" not in result.output
    result = cli("site", "keygen", tmp_path / "c")
    assert result.exit_code == SourceError.exit_code
    result = cli("site")
    assert result.exit_code == 2 and "--config" in result.output


def test_trial_keys_help_says_it_is_for_trials_only(cli):
    result = cli("trial-keys", "--help")
    assert result.exit_code == 0 and "trials only" in result.output and "site keygen" in result.output


# -- the IPC frame cap --------------------------------------------------------------------------------
class _RecordingSocket:
    """A socket that holds ``data`` and records how many bytes each recv asked for."""

    def __init__(self, data: bytes):
        self.data, self.asked = data, []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def _uncapped_read_frame(sock) -> bytes:  # the reader before the cap
    (size,) = struct.unpack(">Q", ipc._recv_exact(sock, 8))
    return ipc._recv_exact(sock, size)


def test_an_oversized_frame_is_refused_before_its_body_is_read():
    header = struct.pack(">Q", ipc.MAX_FRAME_BYTES + 1)
    sock = _RecordingSocket(header + b"x" * 64)
    with pytest.raises(FederationError, match="more than the .* allowed"):
        ipc.read_frame(sock)
    assert sock.asked == [8]  # only the length prefix was read
    # Broken control: without the cap the reader goes on to read (and allocate) the announced body.
    sock = _RecordingSocket(header + b"x" * 64)
    with pytest.raises(FederationError, match="closed the connection"):
        _uncapped_read_frame(sock)
    assert len(sock.asked) > 1 and sock.asked[1] > 8
    # A frame at the cap's side of the line is read as before.
    frame = ipc.encode_frame("hello", {"a": 1})
    assert ipc.decode_frame(ipc.read_frame(_RecordingSocket(frame))) == ("hello", {"a": 1})


def test_a_header_that_names_more_bytes_than_the_frame_holds_is_malformed():
    import numpy as np

    payload = ipc.encode_frame("x", {"w": np.zeros(4)})[8:]
    with pytest.raises(FederationError, match="more bytes than it holds"):
        ipc.decode_frame(payload[:-8])  # one float short
    with pytest.raises(FederationError, match="header is longer"):
        ipc.decode_frame(struct.pack(">Q", 10**9) + b"{}")


def test_the_site_service_answers_an_oversized_frame_with_an_error_and_keeps_serving(tmp_path):
    from fedtab.deploy.site_service import _Handler

    path = str(tmp_path / "site.sock")
    server = socketserver.UnixStreamServer(path, _Handler)
    server.service = SimpleNamespace(worker=SimpleNamespace(name="cleveland"),  # type: ignore[attr-defined]
                                     handle=lambda kind, body: {"site": "cleveland"})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(struct.pack(">Q", ipc.MAX_FRAME_BYTES + 1))  # announces 512 MiB + 1, sends none of it
            kind, reply = ipc.decode_frame(ipc.read_frame(s))
        assert kind == "error" and reply["__error__"]["class"] == "FederationError"
        assert "more than the" in reply["__error__"]["message"]
        assert ipc.call_site(path, "hello", {}, timeout=10) == {"site": "cleveland"}  # still serving
    finally:
        server.shutdown()
        server.server_close()

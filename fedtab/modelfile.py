"""The fedtab model file: one safetensors file, never pickle.

Layout: tensors ``model/<name>`` hold the generator's weights; tensors ``manifest/<key>`` hold the
arrays of the manifest (encoding parameters); the safetensors header's metadata holds
``format``, the manifest JSON (schema, encoding, model config, training config, privacy ledger,
package versions) and ``content_sha256``, a hash over the manifest and every tensor. Loading
re-computes the hash: a file edited after it was written, or one another program wrote, fails
with ``ModelFileError`` before anything in it is used. The hash is unkeyed: it catches accidental
corruption, not an attacker, who can recompute it. Against an attacker the coordinator signs the file
(``signature`` in the same metadata, an Ed25519 signature over ``content_sha256``:
``fedtab.signing``), and a reader with trusted keys refuses a file they did not sign.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtab.errors import FederationError, ModelFileError
from fedtab.federation.wire import Packed, pack, unpack
from fedtab.schema import atomic_write_bytes

FORMAT = "fedtab.model/1"
_MODEL = "model/"
_MANIFEST = "manifest/"


@dataclass(frozen=True)
class ModelBundle:
    """What a model file holds: a JSON-able manifest (may contain numpy arrays) and flat weights."""

    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]
    signed_by: str | None = None  # the trusted key's fingerprint, when the signature was checked


def content_hash(manifest_json: str, tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(manifest_json.encode("utf-8"))
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{t.dtype.str}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def bundle_bytes(bundle: ModelBundle, *, signing_key=None) -> bytes:
    """The model file's bytes (what ``save_bundle`` writes; what a site receives to evaluate), signed
    with ``signing_key`` (an Ed25519 private key or its file: ``fedtab.signing``) when one is given."""
    from safetensors.numpy import save

    packed = pack(bundle.manifest)
    tensors = {_MANIFEST + k: v for k, v in packed.arrays.items()}
    tensors.update({_MODEL + k: np.ascontiguousarray(v) for k, v in bundle.weights.items()})
    digest = content_hash(packed.json, tensors)
    meta = {
        "format": FORMAT,
        "manifest": packed.json,
        "content_sha256": digest,
    }
    if signing_key is not None:
        from fedtab import signing

        record = signing.sign(signing.load_signing_key(signing_key), domain=signing.MODEL_DOMAIN,
                              message=digest.encode())
        meta[signing.SIGNATURE_KEY] = json.dumps(record, sort_keys=True)
    return save(tensors, metadata=meta)


def save_bundle(path: str | os.PathLike, bundle: ModelBundle, *, signing_key=None) -> Path:
    """Write the model file atomically (temp file + rename), signed when ``signing_key`` is given."""
    return atomic_write_bytes(path, bundle_bytes(bundle, signing_key=signing_key))


def load_bundle(path: str | os.PathLike, *, trusted_keys: tuple = ()) -> ModelBundle:
    """Read and verify a model file (and its signature, when ``trusted_keys`` holds any: see
    ``read_bundle``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{p}: model file not found. Train one with 'fedtab train CONFIG.toml -o {p}'.") from None
    except OSError as e:
        raise ModelFileError(f"{p}: cannot read the model file ({e.strerror}).") from None
    return read_bundle(data, source=str(p), trusted_keys=trusted_keys)


def read_bundle(data: bytes, *, source: str = "model file", trusted_keys: tuple = ()) -> ModelBundle:
    """Verify and read a model file's bytes (``source`` names it in errors). ``trusted_keys``: Ed25519
    public keys (``fedtab.signing.resolve_trusted_keys``); when any is given, a file that is unsigned or
    not signed by one of them is refused (``SignatureError``) before anything in it is used."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    p = source
    try:
        tensors = load(data)
        meta = _read_metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(
            f"{p}: not a fedtab model file (not a readable safetensors file). "
            "Model files are written by 'fedtab train' or FederatedSynthesizer.save()."
        ) from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{p}: format is {meta.get('format')!r}, expected {FORMAT!r}: this file was not written by "
            "this version of fedtab."
        )
    manifest_json = meta.get("manifest", "")
    if content_hash(manifest_json, tensors) != meta.get("content_sha256"):
        raise ModelFileError(
            f"{p}: content hash mismatch: the file was modified after fedtab wrote it (or is corrupt). "
            "Do not use it; ask its sender for the original."
        )
    signed_by = _check_signature(meta, tuple(trusted_keys), source=p) if trusted_keys else None
    arrays = {k[len(_MANIFEST):]: v for k, v in tensors.items() if k.startswith(_MANIFEST)}
    weights = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    try:
        manifest = unpack(Packed(json=manifest_json, arrays=arrays))
    except FederationError:  # the wire's "malformed message": here it is the file that is malformed
        manifest = None
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{p}: the model file's manifest is not a JSON object of a fedtab model (it does not "
                             "parse, or names arrays the file lacks): not written by fedtab, or by another version.")
    return ModelBundle(manifest=manifest, weights=weights, signed_by=signed_by)


def _check_signature(meta: dict[str, str], trusted: tuple, *, source: str) -> str:
    """The signer's fingerprint, once the signature over the (just re-computed) content hash checks out
    against a trusted key; else ``SignatureError``."""
    from fedtab import signing

    raw = meta.get(signing.SIGNATURE_KEY)
    record = None
    if raw is not None:
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            record = "malformed"
    return signing.verify(record, trusted, domain=signing.MODEL_DOMAIN, message=meta["content_sha256"].encode(),
                          source=source)


def model_digest(model: str, model_options: dict[str, Any], encoding_sha256: str, weights: dict[str, np.ndarray],
                 sites: list[str]) -> str:
    """A model's identity: what decides the tables it draws (generator, options, encoding, weights) and
    the consortium it was trained by. A site records it when the job ends (from its own setup and the
    final weights) and evaluates only a model file with the same identity (``model_identity``)."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model, "model_options": model_options, "encoding": encoding_sha256,
                         "sites": sorted(sites)}, sort_keys=True, default=str).encode("utf-8"))
    for name in sorted(weights):
        t = np.ascontiguousarray(weights[name])
        h.update(f"\0{name}\0{t.dtype.str}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def encoding_sha256(encoding: dict[str, Any]) -> str:
    """The hash of an encoding (``TableTransformer.to_dict()``) as sites and model files compute it."""
    return hashlib.sha256(pack(encoding).json.encode()).hexdigest()


def model_identity(bundle: ModelBundle) -> str:
    """``model_digest`` of a model file: its generator, options, encoding, weights and trained sites."""
    m = bundle.manifest
    return model_digest(m["model"], m["model_options"], encoding_sha256(m["encoding"]), bundle.weights,
                        sorted(m["ledgers"]))


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then JSON whose "__metadata__" is str -> str.
    if len(data) < 8:
        raise ValueError("too short")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("bad header length")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return meta


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model (recorded in model files and audit records)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fedtab", "torch", "numpy", "pandas", "opacus", "flwr", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out

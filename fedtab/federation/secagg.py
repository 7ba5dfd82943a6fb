"""Secure aggregation of the sites' noisy counts: the coordinator learns their sum and nothing else.

Pairwise additive masking (Bonawitz et al., CCS 2017, its first two rounds), with the primitives of the
``cryptography`` package:

1. keys: each site draws an X25519 key pair for the job (operating-system entropy, kept in the site's
   memory only) and sends its public key; the coordinator hands every site the set of public keys.
2. masked input: sites ``a`` and ``b`` derive the same 32-byte seed (X25519 shared secret, HKDF-SHA256
   over the job, the request number and both names) and expand it with ChaCha20 into a vector of
   uint64 masks; ``a`` adds it when its name sorts first, ``b`` subtracts it. A site's reply is its
   integer vector (counts, or scores in fixed point) plus the sum of its masks, modulo 2**64: uniform,
   whatever the counts. Summed over every site of the key set, the masks cancel and the coordinator
   reads the sum of the inputs.

Distributed noise (``fedtab.federation.marginals``): with the sum hidden, each of at least ``threshold``
sites adds only ``sigma / sqrt(threshold)`` of discrete Gaussian noise, and the sum carries at least the
noise ``sigma`` of one central release. What a site checks before it sends: the key set holds its own
key, no key twice, and at least ``threshold`` keys (it scales its noise to that number, never to what
the coordinator claims). A sum is readable only with every masked input of the key set, so a site
missing from a request leaves the coordinator nothing it can read, and the phase fails: there is no
dropout recovery (SecAgg's secret-shared masks): fewer sites than planned means running the job again.

Assumed, and stated in the ledger entries and the docs: the coordinator relays the keys the sites sent
(it could otherwise pose as sites of its own keys: binding each key to a registered site identity is
the deployment's node authentication), and the sites' noise is drawn by fedtab's code at each site.
If other sites reveal their own noise to the coordinator, a site is left with the noise it drew
itself: the ledger's entry names that share, so the weaker guarantee can be computed from it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np

from fedtab.errors import FederationError

SCALE_BITS = 16  # fixed point of real-valued inputs (pair scores): 2**-16 resolution, far below the noise
KEY_BYTES = 32


class SiteKeys:
    """One site's key pair for one job, and the number of masked requests it has answered with it:
    the request number is part of every mask's seed, so no mask is ever used twice."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._private = X25519PrivateKey.generate()
        self.requests = 0

    def __getstate__(self):  # never pickled, copied or stored
        raise TypeError("secure-aggregation keys never leave the site's memory")

    @property
    def public(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def masks(self, me: str, peers: Mapping[str, str], *, job: str, length: int) -> np.ndarray:
        """The sum of this site's signed pairwise masks with every other site of ``peers`` (uint64)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        self.requests += 1
        total = np.zeros(length, dtype=np.uint64)
        for other in sorted(peers):
            if other == me:
                continue
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(_key_bytes(other, peers[other])))
            first, second = sorted((me, other))
            info = "\0".join(("fedtab-secagg/1", job, str(self.requests), first, second)).encode()
            seed = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)
            mask = _stream(seed, length)
            with np.errstate(over="ignore"):
                total = total + mask if me == first else total - mask
        return total


def check_peers(me: str, keys: SiteKeys, peers: Mapping[str, str], threshold: int) -> None:
    """What a site checks before it masks: its own key in the set, no key twice, enough sites."""
    if peers.get(me) != keys.public:
        raise FederationError(f"site '{me}': the secure-aggregation key set does not hold this site's key "
                              "(a coordinator that replaces keys could read this site's counts): refused",
                              public=True)
    raw = [_key_bytes(s, k) for s, k in peers.items()]
    if len(set(raw)) != len(raw):
        raise FederationError(f"site '{me}': the secure-aggregation key set holds a key twice: refused", public=True)
    if len(peers) < max(2, int(threshold)):
        raise FederationError(
            f"site '{me}': secure aggregation over {len(peers)} site(s) but the noise is shared among "
            f"{max(2, int(threshold))}: the sum would carry less noise than the ledger records: refused", public=True)


def encode(values: Sequence[np.ndarray], *, real: bool) -> np.ndarray:
    """A reply's vectors as one int64 vector (counts as they are; real values in fixed point), viewed uint64."""
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) if values else np.zeros(0)
    if real:
        flat = flat * (1 << SCALE_BITS)
    if not np.all(np.isfinite(flat)) or np.any(np.abs(flat) >= 2.0 ** 62):
        raise FederationError("secure aggregation: a value is not finite or too large to encode", public=True)
    return np.rint(flat).astype(np.int64).view(np.uint64)


def mask(values: Sequence[np.ndarray], *, me: str, keys: SiteKeys, peers: Mapping[str, str], job: str,
         threshold: int, real: bool = False) -> np.ndarray:
    """This site's masked reply: ``encode(values) + masks`` modulo 2**64."""
    check_peers(me, keys, peers, threshold)
    plain = encode(values, real=real)
    with np.errstate(over="ignore"):
        return plain + keys.masks(me, peers, job=job, length=plain.size)


def unmask_sum(masked: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]], *, real: bool = False
               ) -> list[np.ndarray]:
    """The coordinator's sum of every site's masked reply, split back into the requested shapes."""
    if not masked:
        raise FederationError("secure aggregation: no masked reply to sum")
    size = int(sum(int(np.prod(s)) for s in shapes))
    arrays = [np.asarray(m) for m in masked]
    if any(a.dtype != np.uint64 or a.shape != (size,) for a in arrays):
        raise FederationError("secure aggregation: a site's masked reply has the wrong type or length")
    with np.errstate(over="ignore"):
        total = np.zeros(size, dtype=np.uint64)
        for a in arrays:
            total = total + a
    out = total.view(np.int64).astype(np.float64)
    if real:
        out = out / (1 << SCALE_BITS)
    parts, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        parts.append(out[start:start + n].reshape(s))
        start += n
    return parts


def _key_bytes(site: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise FederationError(f"secure aggregation: the key of site '{site}' is not a 32-byte X25519 key",
                              public=True)
    return raw


def _stream(seed: bytes, length: int) -> np.ndarray:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(8 * length)), dtype=np.uint64).copy()

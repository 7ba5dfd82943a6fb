"""Secure aggregation of the sites' noisy counts, with dropouts: the coordinator learns their sum only.

Used for the marginal model's measurements and the encoding's target tables (counts, scores) and for the
DP-SGD models' training rounds (``fedtab.federation.secure_updates``: each site's row-weighted update,
fixed point of ``UPDATE_BITS``, one request per round).

The protocol of Bonawitz et al. (CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"), semi-honest version, built on ``cryptography`` (X25519, HKDF-SHA256, ChaCha20, AES-GCM) and
Flower's Shamir secret sharing (``flwr.common.secure_aggregation.crypto.shamir``, over pycryptodome):

1. ``keys`` (once per job): each site draws an X25519 key pair ``c`` for encrypting shares and one mask
   key pair ``s[r]`` per planned request ``r`` (operating-system entropy, kept in the site's memory only,
   never stored or sent), and sends the public keys.
2. ``shares`` (once per job): the coordinator hands every site the key set; each site checks it (its own
   keys, no key twice, a threshold ``t`` above half the sites) and splits each of its mask private keys
   into ``t``-of-``n`` Shamir shares, one per site, encrypted to that site (AES-GCM under their X25519
   ``c`` agreement; the coordinator relays what it cannot read).
3. per request ``r``, ``mask``: the site adds to its integer vector (counts; real values in fixed point)
   a self mask expanded from a fresh seed ``b`` (whose shares it sends along, encrypted to each site)
   and, for every other site ``j`` of the request, the mask expanded from their ``s[r]`` agreement
   (added when its name sorts first, subtracted otherwise), modulo 2**64: uniform, whatever the counts.
   With ``commit`` (the DP-SGD rounds) it also commits to its masked vector (a Merkle root over chunks
   of it) and to its self-mask seed (a hash), encrypted to each other site, so that the coordinator can
   later prove entries of the sum to any site (``entry_proof``, ``SiteSession.proven_entries``) without
   being able to forge one.
4. per request ``r``, ``unmask``: the coordinator names the sites whose masked input arrived
   (survivors, at least ``t``) and those that dropped; each survivor returns its share of every
   survivor's ``b`` and of every dropped site's ``s[r]``, never both for one site, once per request. The
   coordinator rebuilds the seeds, removes the self masks and the dropped sites' pairwise masks, and
   reads the sum of the survivors' inputs.

5. only where a round's sum fails its screen (``secure_updates``, ``training.on_failed_sum``): once the
   failure is proven to it, each site reveals its mask key of that request (``SiteSession.reveal``), and
   the coordinator opens each survivor's input of it (``open_inputs``). Each request has its own mask key:
   no other request is opened.

Distributed noise (``fedtab.federation.marginals``): each site adds ``sigma / sqrt(t)`` of discrete
Gaussian noise, so a sum over at least ``t`` sites carries at least ``sigma``, the noise of one central
release, which is what each site's ledger records. Fewer than ``t`` survivors: no site unmasks and the
request releases nothing readable (the run stops); ``t`` is ``training.min_sites`` (default: every site),
raised to a majority.

What is assumed (the docs' threat model says the same): the coordinator relays messages as the protocol
says (a coordinator that shows different key sets to different sites, or invents sites of its own keys,
is stopped only by binding each key to a registered site, the deployment's node authentication); the
sites' noise is drawn by fedtab's code at each site. Against a coordinator that also learns the noise
of other sites, a site is left with its own share, ``sigma / sqrt(t)``: each ledger entry names it, so
that weaker guarantee can be computed. A site dropped at one request has its mask key of that request
rebuilt, so it takes part in no later request of the job (each request has its own mask keys: earlier
requests stay hidden). The key set travels whole with each request: O(n^2) relayed shares, fine for
hundreds of sites; SecAgg+'s sparse graph would be needed for many thousands.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence

import numpy as np

from fedtab.errors import FederationError, UnusableUpdateError

SCALE_BITS = 16  # fixed point of real-valued inputs (pair scores): 2**-16 resolution, far below the noise
# Fixed point of the DP-SGD models' weighted updates (``fedtab.federation.secure_updates``): a site's
# rows x its weights' change, at 2**-32 resolution (below float32's own rounding of any weight above
# 1e-3 in size), up to 2**30 in size (rows x change: 1e9).
UPDATE_BITS = 32
KEY_BYTES = 32
# One mask key per planned request: the encoding's pair tables, the marginal model's three phases, or one
# per training round (``training.rounds`` is at most 10,000).
MAX_REQUESTS = 10_004
_NONCE = 12


# -- at a site ----------------------------------------------------------------------------------------------
class SiteSession:
    """One site's secure-aggregation keys and commitments for one job (memory only)."""

    def __init__(self, requests: int) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not isinstance(requests, int) or not 1 <= requests <= MAX_REQUESTS:
            raise FederationError(f"secure aggregation: {requests!r} requests planned; 1 to {MAX_REQUESTS} allowed",
                                  public=True)
        self.requests = requests
        self._c = X25519PrivateKey.generate()
        self._s = [X25519PrivateKey.generate() for _ in range(requests)]
        self.peers: dict[str, dict] | None = None  # the key set this site shared its keys over
        self.threshold = 0
        self._masked: dict[int, tuple[str, ...]] = {}  # request -> the sites it masked with
        self._unmasked: set[int] = set()
        self._dropped: set[str] = set()  # sites whose mask key of some request was rebuilt: never again a peer
        self._split: dict[int, tuple[list[str], list[str]]] = {}  # request -> (survivors, dropped) it unmasked
        self._commits: dict[int, tuple[bytes, bytes, int, str]] = {}  # request -> its (root, seed hash, length, job)
        self.commit_boxes: dict[int, dict[str, str]] = {}  # request -> its commitment, encrypted to each site

    def __getstate__(self):  # never pickled, copied or stored
        raise TypeError("secure-aggregation keys never leave the site's memory")

    def public(self) -> dict:
        return {"c": _b64(_raw_public(self._c)), "s": [_b64(_raw_public(k)) for k in self._s]}

    # step 2
    def share_keys(self, me: str, peers: Mapping[str, Mapping], threshold: int, *, job: str) -> dict[str, str]:
        """Check the key set and return this site's Shamir shares of its mask keys, encrypted to each site."""
        if self.peers is not None:
            raise FederationError(f"site '{me}': secure-aggregation keys were already shared for this job",
                                  public=True)
        peers = _check_key_set(me, self, peers, threshold)
        names = sorted(peers)
        # Each mask key split on its own: rebuilding the key of one request reveals nothing of the others.
        per_key = [create_shares(_raw_private(k), threshold, len(names)) for k in self._s]
        out = {}
        for i, other in enumerate(names):
            plain = b"".join(len(s[i]).to_bytes(2, "big") + s[i] for s in per_key)
            out[other] = self._encrypt(peers[other], plain, ("s", job, me, other))
        self.peers, self.threshold = peers, int(threshold)
        return out

    # step 3
    def mask(self, values: Sequence[np.ndarray], *, me: str, request: int, sites: Sequence[str], job: str,
             real: bool = False, bits: int = SCALE_BITS, commit: bool = False) -> tuple[np.ndarray, dict[str, str]]:
        """This site's masked input for ``request`` and its shares of the self-mask seed, one per site
        (``real``: values in fixed point of ``bits`` fractional bits). ``commit``: the site also commits to
        its masked vector and its self-mask seed (``commit_boxes[request]``, encrypted to each other site:
        the coordinator relays what it can neither read nor forge), so that a coordinator can later prove
        entries of the sum to it (``proven_entries``)."""
        sites = self.check_request(me, request, sites)
        plain = encode(values, real=real, bits=bits)
        seed = os.urandom(KEY_BYTES)
        names = sorted(self.peers)
        shares = create_shares(seed, self.threshold, len(names))
        out = {other: self._encrypt(self.peers[other], shares[names.index(other)], ("b", job, str(request), me, other))
               for other in sites}
        total = _stream(seed, plain.size)
        for other in sites:
            if other != me:
                with np.errstate(over="ignore"):
                    m = pair_mask(self._s[request], self.peers[other]["s"][request], me, other, job=job,
                                  request=request, length=plain.size)
                    total = total + _signed(m, me, other)
        self._masked[request] = tuple(sites)
        with np.errstate(over="ignore"):
            masked = plain + total
        if commit:
            root, digest = merkle_root(masked), _seed_digest(seed)
            self._commits[request] = (root, digest, int(masked.size), job)
            self.commit_boxes[request] = {other: self._encrypt(self.peers[other], root + digest,
                                                               ("commit", job, str(request), me, other))
                                          for other in sites if other != me}
        return masked, out

    # step 4
    def unmask(self, *, me: str, request: int, survivors: Sequence[str], dropped: Sequence[str],
               s_inbox: Mapping[str, str], b_inbox: Mapping[str, str], job: str) -> dict[str, dict[str, str]]:
        """This site's shares of each survivor's self-mask seed and of each dropped site's mask key of
        ``request`` (decrypted from what the sites sent it through the coordinator)."""
        if request not in self._masked:
            raise FederationError(f"site '{me}': asked to unmask request {request}, which it did not mask",
                                  public=True)
        if request in self._unmasked:
            raise FederationError(f"site '{me}': request {request} was already unmasked: refused (a second "
                                  "answer could reveal both masks of one site)", public=True)
        survivors, dropped = sorted(set(survivors)), sorted(set(dropped))
        if set(survivors) & set(dropped) or set(survivors) | set(dropped) != set(self._masked[request]):
            raise FederationError(f"site '{me}': the survivors and dropped sites of request {request} are not a "
                                  "split of the sites it masked with: refused", public=True)
        if me not in survivors or len(survivors) < self.threshold:
            raise FederationError(f"site '{me}': {len(survivors)} survivor(s) of request {request}, fewer than "
                                  f"the {self.threshold} its noise share needs (or without this site): refused",
                                  public=True)
        b = {j: _b64(self._decrypt(self.peers[j], b_inbox.get(j), ("b", job, str(request), j, me), me))
             for j in survivors}
        s = {}
        for j in dropped:
            plain = self._decrypt(self.peers[j], s_inbox.get(j), ("s", job, j, me), me)
            s[j] = _b64(_split_shares(plain, self.requests, me)[request])
        self._unmasked.add(request)
        self._dropped.update(dropped)
        self._split[request] = (survivors, dropped)
        return {"b": b, "s": s}

    def survivors(self, request: int) -> list[str]:
        """The survivors of an unmasked ``request``, as the coordinator named them to this site."""
        return list(self._split[request][0]) if request in self._split else []

    def proven_entries(self, me: str, request: int, entries: Sequence[int], proof: Mapping) -> dict[int, int]:
        """Entries of the unmasked sum of ``request`` (integers, before any fixed point is read back), as
        this site computes them from the coordinator's ``proof``, every part of which it checks: each
        survivor's masked chunks holding them against the Merkle root that survivor committed to (its
        commitment decrypted from the box it encrypted to this site: the coordinator can neither read nor
        forge it), each survivor's self-mask seed against its committed hash, each dropped site's mask key
        against its public key. Raises where any part is missing or does not check."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if request not in self._split or request not in self._commits:
            raise FederationError(f"site '{me}': no committed, unmasked request {request!r} to check a sum of",
                                  public=True)
        survivors, dropped = self._split[request]
        size, job = self._commits[request][2:]
        entries = sorted({int(k) for k in entries})
        if not entries or entries[0] < 0 or entries[-1] >= size:
            raise FederationError(f"site '{me}': the proof names entries outside the masked vector", public=True)

        def refuse(what: str) -> FederationError:
            return FederationError(f"site '{me}': the coordinator's proof of the sum does not check ({what}): "
                                   "refused", public=True)

        chunks, seeds = dict(proof.get("chunks") or {}), dict(proof.get("seeds") or {})
        at = np.asarray(entries, dtype=np.int64)
        where = at // MERKLE_CHUNK
        total = np.zeros(at.size, dtype=np.uint64)
        for j in survivors:
            if j == me:
                root, digest = self._commits[request][:2]
            else:
                plain = self._decrypt(self.peers[j], (proof.get("commits") or {}).get(j),
                                      ("commit", job, str(request), j, me), me)
                root, digest = plain[:32], plain[32:]
            try:
                seed = _unb64(seeds.get(j))
            except FederationError:
                seed = b""
            if len(seed) != KEY_BYTES or _seed_digest(seed) != digest:
                raise refuse(f"site '{j}''s self-mask seed")
            values = np.zeros(at.size, dtype=np.uint64)
            for index in np.unique(where):
                part = (chunks.get(j) or {}).get(str(int(index))) or {}
                try:
                    chunk = np.asarray(part.get("values"), dtype=np.uint64).ravel()
                except (TypeError, ValueError, OverflowError):
                    chunk = np.zeros(0, dtype=np.uint64)
                if not merkle_check(root, chunk, int(index), list(part.get("path") or []), size):
                    raise refuse(f"site '{j}''s masked entries")
                values[where == index] = chunk[at[where == index] % MERKLE_CHUNK]
            with np.errstate(over="ignore"):
                total = total + values - _stream(seed, int(at[-1]) + 1)[at]
        for d in dropped:
            try:
                key = X25519PrivateKey.from_private_bytes(_unb64((proof.get("dropped") or {}).get(d)))
            except (ValueError, TypeError, FederationError):
                key = None
            if key is None or _raw_public(key) != _key_bytes(d, self.peers[d]["s"][request]):
                raise refuse(f"dropped site '{d}''s mask key")
            for j in survivors:
                m = pair_mask(key, self.peers[j]["s"][request], d, j, job=job, request=request,
                              length=int(at[-1]) + 1)[at]
                with np.errstate(over="ignore"):
                    total = total - _signed(m, j, d)
        return dict(zip((int(k) for k in at), (int(v) for v in total.view(np.int64))))

    def reveal(self, me: str, request: int) -> str:
        """This site's mask key of ``request``, for a coordinator whose sum of it failed its screen: with it
        the coordinator opens this site's masked input of that request, the one in the sum (and, with the
        other sites' keys, theirs). Only once the request was unmasked (its sum read). Each request has its
        own mask key: no other request's input is opened by it. The caller decides whether the job allows it
        (``secure_updates.revealed``)."""
        if request not in self._unmasked:
            raise FederationError(f"site '{me}': refuses to reveal the mask key of request {request!r}: only that "
                                  "of a request whose sum the coordinator has read", public=True)
        return _b64(_raw_private(self._s[request]))

    # -- helpers ---------------------------------------------------------------------------------------
    def check_request(self, me: str, request: int, sites: Sequence[str]) -> list[str]:
        if self.peers is None:
            raise FederationError(f"site '{me}': a masked request before the keys were shared: refused", public=True)
        sites = sorted(set(str(s) for s in sites))
        bad = (not isinstance(request, int) or not 0 <= request < self.requests or request in self._masked
               or me not in sites or not set(sites) <= set(self.peers) or set(sites) & self._dropped
               or len(sites) < self.threshold)
        if bad:
            raise FederationError(
                f"site '{me}': masked request {request!r} refused (each request is masked once, over at least "
                f"{self.threshold} of the sites that shared keys, none of them dropped earlier)", public=True)
        return sites

    def _aead(self, peer: Mapping):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        shared = self._c.exchange(X25519PublicKey.from_public_bytes(_unb64(peer["c"])))
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedtab-secagg/1 share").derive(shared)
        return AESGCM(key)

    def _encrypt(self, peer: Mapping, plain: bytes, context: tuple[str, ...]) -> str:
        nonce = os.urandom(_NONCE)
        return _b64(nonce + self._aead(peer).encrypt(nonce, plain, "\0".join(context).encode()))

    def _decrypt(self, peer: Mapping, text: str | None, context: tuple[str, ...], me: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            raw = _unb64(str(text))
            return self._aead(peer).decrypt(raw[:_NONCE], raw[_NONCE:], "\0".join(context).encode())
        except (InvalidTag, ValueError, TypeError, FederationError):
            raise FederationError(f"site '{me}': a relayed share is missing or does not decrypt (sender "
                                  f"'{context[-2]}'): refused", public=True) from None


def _check_key_set(me: str, own: SiteSession, peers: Mapping[str, Mapping], threshold: int) -> dict[str, dict]:
    """What a site checks before it shares its keys: its own keys in the set, well-formed keys, none twice,
    and a threshold above half the sites (two views of one request cannot both reach it)."""
    peers = {str(k): {"c": str(v["c"]), "s": [str(x) for x in v["s"]]} for k, v in dict(peers).items()}
    if peers.get(me) != own.public():
        raise FederationError(f"site '{me}': the secure-aggregation key set does not hold this site's keys (a "
                              "coordinator that replaces keys could read this site's counts): refused", public=True)
    raw = []
    for site, keys in peers.items():
        if len(keys["s"]) != own.requests:
            raise FederationError(f"secure aggregation: site '{site}' sent {len(keys['s'])} mask key(s), not "
                                  f"{own.requests}", public=True)
        raw += [_key_bytes(site, keys["c"])] + [_key_bytes(site, k) for k in keys["s"]]
    if len(set(raw)) != len(raw):
        raise FederationError(f"site '{me}': the secure-aggregation key set holds a key twice: refused", public=True)
    n = len(peers)
    if n < 2 or not isinstance(threshold, int) or not n // 2 + 1 <= threshold <= n:
        raise FederationError(f"site '{me}': secure aggregation over {n} site(s) with threshold {threshold!r}; it "
                              f"must be a majority (at least {n // 2 + 1}) and at most {n}: refused", public=True)
    return peers


# -- at the coordinator --------------------------------------------------------------------------------------
def rebuild(b_shares: Mapping[str, list[str]], s_shares: Mapping[str, list[str]]) -> dict[str, dict[str, bytes]]:
    """The secrets an unmasking rebuilds, once: each survivor's self-mask seed (``b_shares``: survivor ->
    the shares the survivors returned) and each dropped site's mask key of the request (``s_shares``)."""
    lagrange: dict = {}  # the shares of one request come from the same holders: one set of coefficients
    return {"seeds": {s: _combine(b_shares.get(s), s, lagrange) for s in sorted(b_shares)},
            "dropped": {d: _combine(s_shares.get(d), d, lagrange) for d in sorted(s_shares)}}


def unmask_sum(masked: Mapping[str, np.ndarray], shapes: Sequence[tuple[int, ...]], *, peers: Mapping[str, Mapping],
               dropped: Sequence[str], b_shares: Mapping[str, list[str]], s_shares: Mapping[str, list[str]],
               request: int, job: str, real: bool = False, bits: int = SCALE_BITS) -> list[np.ndarray]:
    """The sum of the survivors' inputs (``sum_inputs``), its secrets rebuilt from their shares."""
    return sum_inputs(masked, shapes, rebuilt=rebuild(b_shares, {d: s_shares.get(d) for d in dropped}), peers=peers,
                      request=request, job=job, real=real, bits=bits)


def sum_inputs(masked: Mapping[str, np.ndarray], shapes: Sequence[tuple[int, ...]], *,
               rebuilt: dict[str, dict[str, bytes]], peers: Mapping[str, Mapping], request: int, job: str,
               real: bool = False, bits: int = SCALE_BITS) -> list[np.ndarray]:
    """The sum of the survivors' inputs: their masked vectors, less each survivor's self mask and the masks
    each survivor shared with a dropped site (``rebuild``), split back into ``shapes``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if not masked:
        raise FederationError("secure aggregation: no masked reply to sum")
    size = int(sum(int(np.prod(s)) for s in shapes))
    survivors = sorted(masked)
    arrays = {s: np.asarray(masked[s]) for s in survivors}
    if any(a.dtype != np.uint64 or a.shape != (size,) for a in arrays.values()):
        raise FederationError("secure aggregation: a site's masked reply has the wrong type or length")
    with np.errstate(over="ignore"):
        total = np.zeros(size, dtype=np.uint64)
        for s in survivors:
            total = total + arrays[s] - _stream(_secret(rebuilt["seeds"], s), size)
        for d, raw in rebuilt["dropped"].items():
            key = X25519PrivateKey.from_private_bytes(raw)
            for s in survivors:
                total = total - _signed(pair_mask(key, peers[s]["s"][request], d, s, job=job, request=request,
                                                  length=size), s, d)
    return _decoded(total, shapes, real=real, bits=bits)


def open_inputs(masked: Mapping[str, np.ndarray], shapes: Sequence[tuple[int, ...]], *,
                rebuilt: dict[str, dict[str, bytes]], peers: Mapping[str, Mapping], keys: Mapping[str, str],
                request: int, job: str, real: bool = False,
                bits: int = SCALE_BITS) -> tuple[dict[str, list[np.ndarray]], dict[str, str]]:
    """Each survivor's own input of an unmasked ``request`` (its masked vector less its self mask and its
    pairwise masks), where the mask keys the sites revealed (``keys``: site -> its private mask key of this
    request, ``SiteSession.reveal``) and the dropped sites' rebuilt ones give every pairwise mask it holds:
    (the inputs opened, why each other survivor's was not). A revealed key that is not the one the site
    sent in the key set is refused and the site named; a survivor that revealed none is opened all the same
    where every site it masked with revealed (or dropped)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    size = int(sum(int(np.prod(s)) for s in shapes))
    survivors = sorted(masked)
    why: dict[str, str] = {}
    private = {d: X25519PrivateKey.from_private_bytes(raw) for d, raw in rebuilt["dropped"].items()}
    for site, text in sorted(keys.items()):
        try:
            key = X25519PrivateKey.from_private_bytes(_unb64(text))
        except (ValueError, TypeError, FederationError):
            key = None
        if site not in survivors or key is None or _raw_public(key) != _key_bytes(site, peers[site]["s"][request]):
            why[site] = "the mask key it revealed is not the one it masked this round with"
        else:
            private[site] = key
    sites = sorted(set(survivors) | set(rebuilt["dropped"]))
    out = {}
    for s in survivors:
        if s in why:
            continue
        if any(j != s and s not in private and j not in private for j in sites):
            why[s] = "its masked update cannot be opened: it and sites it masked with revealed no mask key"
            continue
        with np.errstate(over="ignore"):
            x = np.asarray(masked[s]) - _stream(_secret(rebuilt["seeds"], s), size)
            for j in sites:
                if j != s:
                    m = (pair_mask(private[s], peers[j]["s"][request], s, j, job=job, request=request, length=size)
                         if s in private else
                         pair_mask(private[j], peers[s]["s"][request], j, s, job=job, request=request, length=size))
                    x = x - _signed(m, s, j)
        out[s] = _decoded(x, shapes, real=real, bits=bits)
    return out, why


def entry_proof(masked: Mapping[str, np.ndarray], entries: Sequence[int], *, rebuilt: dict[str, dict[str, bytes]],
                commits: Mapping[str, Mapping[str, str]], to: str) -> dict:
    """What the coordinator sends site ``to`` to prove ``entries`` of an unmasked sum
    (``SiteSession.proven_entries``): each survivor's masked chunks holding them with their Merkle paths,
    each survivor's self-mask seed and each dropped site's mask key (``rebuild``), and the commitments the
    survivors encrypted to ``to``."""
    survivors = sorted(masked)
    indices = sorted({int(k) // MERKLE_CHUNK for k in entries})
    chunks = {}
    for j in survivors:
        vector = np.asarray(masked[j], dtype=np.uint64)
        levels = _merkle_levels(vector)
        chunks[j] = {str(i): {"values": vector[i * MERKLE_CHUNK:(i + 1) * MERKLE_CHUNK],
                              "path": _merkle_path(levels, i)} for i in indices}
    return {"chunks": chunks, "seeds": {j: _b64(_secret(rebuilt["seeds"], j)) for j in survivors},
            "dropped": {d: _b64(raw) for d, raw in rebuilt["dropped"].items()},
            "commits": {j: (commits.get(j) or {}).get(to) for j in survivors if j != to}}


def _secret(secrets: Mapping[str, bytes], site: str) -> bytes:
    if site not in secrets:
        raise FederationError(f"secure aggregation: the shares of site '{site}' were not rebuilt")
    return secrets[site]


def _signed(mask: np.ndarray, holder: str, other: str) -> np.ndarray:
    """A pairwise mask as ``holder`` added it to its input: plus where its name sorts first, minus otherwise
    (modulo 2**64)."""
    with np.errstate(over="ignore"):
        return mask if holder < other else np.zeros_like(mask) - mask


# Commitments to a masked vector: a Merkle tree over chunks of ``MERKLE_CHUNK`` entries (SHA-256, leaves and
# nodes told apart by a prefix; a level of odd length carries its last node up unchanged), so that one entry
# is proven by its chunk and log2(chunks) hashes.
MERKLE_CHUNK = 256


def _leaf(index: int, values: np.ndarray) -> bytes:
    import hashlib

    return hashlib.sha256(b"fedtab-secagg/1 leaf" + int(index).to_bytes(8, "big")
                          + np.ascontiguousarray(values, dtype=np.uint64).tobytes()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b"fedtab-secagg/1 node" + left + right).digest()


def _merkle_levels(vector: np.ndarray) -> list[list[bytes]]:
    n = max(1, -(-int(vector.size) // MERKLE_CHUNK))
    level = [_leaf(i, vector[i * MERKLE_CHUNK:(i + 1) * MERKLE_CHUNK]) for i in range(n)]
    levels = [level]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def merkle_root(vector: np.ndarray) -> bytes:
    return _merkle_levels(np.asarray(vector, dtype=np.uint64))[-1][0]


def _merkle_path(levels: list[list[bytes]], index: int) -> list[str]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        path.append(level[sibling].hex() if sibling < len(level) else "")
        index //= 2
    return path


def merkle_check(root: bytes, values: np.ndarray, index: int, path: list[str], size: int) -> bool:
    """Whether ``values`` are chunk ``index`` of a vector of ``size`` entries committed to by ``root``."""
    n = max(1, -(-int(size) // MERKLE_CHUNK))
    want = min(MERKLE_CHUNK, int(size) - index * MERKLE_CHUNK)
    if not 0 <= index < n or np.size(values) != want:
        return False
    try:
        h, width = _leaf(index, np.asarray(values, dtype=np.uint64)), n
        for step in path:
            sibling = index ^ 1
            if sibling < width:
                other = bytes.fromhex(str(step))
                h = _node(h, other) if index % 2 == 0 else _node(other, h)
            elif step:
                return False
            index, width = index // 2, -(-width // 2)
        return width == 1 and h == root
    except (ValueError, TypeError):
        return False


def _seed_digest(seed: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b"fedtab-secagg/1 seed" + seed).digest()


def _decoded(total: np.ndarray, shapes: Sequence[tuple[int, ...]], *, real: bool, bits: int) -> list[np.ndarray]:
    """An unmasked int64 (viewed uint64) vector as values (fixed point read back), split into ``shapes``."""
    out = total.view(np.int64).astype(np.float64)
    if real:
        out = out / float(1 << bits)
    parts, start = [], 0
    for sh in shapes:
        n = int(np.prod(sh))
        parts.append(out[start:start + n].reshape(sh))
        start += n
    return parts


def _combine(shares, site: str, lagrange: dict) -> bytes:
    try:
        secret = combine_shares([_unb64(x) for x in shares or []], lagrange)
    except (ValueError, IndexError, FederationError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise FederationError(f"secure aggregation: the shares of site '{site}' do not rebuild its key: too few "
                              "survivors answered the unmasking")
    return secret


# Shamir's secret sharing in Flower's format (``flwr.common.secure_aggregation.crypto.shamir``: each 16-byte
# chunk of the PKCS#7-padded secret shared as pycryptodome's ``Shamir.split`` does, in GF(2^128) modulo
# 1 + x + x^2 + x^7 + x^128; a share is its 4-byte little-endian index, then one 16-byte big-endian value
# per chunk). Done here because Flower's functions took minutes per request at 100 sites: pycryptodome
# multiplies field elements in a Python loop of string operations, ``combine_shares`` interpolates every
# chunk from scratch (k^2 products). Here a share is a polynomial evaluated by Horner's rule at a small
# index (a product by a number of a few bits), and recombining computes the Lagrange coefficients at zero
# once per set of holders' indices (the same for every secret of a request): a chunk is then k products.
# The polynomial's coefficients come from the OS's entropy. Only the coordinator recombines, secrets it is
# meant to learn. Tested against Flower's functions (tests/test_secagg.py).
_GF_POLY = (1 << 128) | 0x87


def _gf_mul(a: int, b: int) -> int:
    z = 0
    while b:
        z ^= a * (b & 1)
        b >>= 1
        a <<= 1
        a ^= _GF_POLY * (a >> 128)  # reduce without a branch on the value's bits
    return z


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``, any ``threshold`` of which rebuild it (Flower's format)."""
    import secrets as entropy

    from Crypto.Util.Padding import pad

    if not 1 <= int(threshold) <= int(num):
        raise ValueError("the threshold must be between 1 and the number of shares")
    padded = pad(secret, 16)
    out = [bytearray(i.to_bytes(4, "little")) for i in range(1, num + 1)]
    for start in range(0, len(padded), 16):
        # highest degree first, the chunk itself the constant term
        coeffs = [int.from_bytes(entropy.token_bytes(16), "big") for _ in range(threshold - 1)]
        coeffs.append(int.from_bytes(padded[start:start + 16], "big"))
        for i in range(1, num + 1):
            value = 0
            for c in coeffs:
                value = _gf_mul(value, i) ^ c
            out[i - 1] += value.to_bytes(16, "big")
    return [bytes(x) for x in out]


def _gf_inverse(a: int) -> int:
    if not a:
        raise ValueError("inverse of zero")
    out, e = 1, (1 << 128) - 2  # a^(2^128 - 2)
    while e:
        if e & 1:
            out = _gf_mul(out, a)
        a = _gf_mul(a, a)
        e >>= 1
    return out


def combine_shares(shares: Sequence[bytes], lagrange: dict | None = None) -> bytes:
    """The secret of ``shares`` (as many as were made available; at least the threshold). ``lagrange``:
    a cache of coefficients by the holders' indices, shared across the secrets of one request."""
    from Crypto.Util.Padding import unpad

    if not shares or (len(shares[0]) - 4) % 16 or len({len(x) for x in shares}) != 1:
        raise ValueError("shares of different or wrong lengths")
    xs = tuple(int.from_bytes(x[:4], "little") for x in shares)
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("duplicate or zero share index")
    cache = {} if lagrange is None else lagrange
    if xs not in cache:
        coeffs = []
        for j, xj in enumerate(xs):
            num = den = 1
            for m, xm in enumerate(xs):
                if m != j:
                    num, den = _gf_mul(num, xm), _gf_mul(den, xj ^ xm)
            coeffs.append(_gf_mul(num, _gf_inverse(den)))
        cache[xs] = coeffs
    coeffs = cache[xs]
    out = bytearray()
    for start in range(4, len(shares[0]), 16):
        value = 0
        for c, x in zip(coeffs, shares):
            value ^= _gf_mul(int.from_bytes(x[start:start + 16], "big"), c)
        out += value.to_bytes(16, "big")
    return unpad(bytes(out), 16)


# -- shared --------------------------------------------------------------------------------------------------
def encode(values: Sequence[np.ndarray], *, real: bool, bits: int = SCALE_BITS) -> np.ndarray:
    """A reply's vectors as one int64 vector (counts as they are; real values in fixed point of ``bits``
    fractional bits), viewed uint64."""
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) if values else np.zeros(0)
    if real:
        flat = flat * float(1 << bits)
    if not np.all(np.isfinite(flat)) or np.any(np.abs(flat) >= 2.0 ** 62):
        raise UnusableUpdateError("secure aggregation: a value is not finite or too large to encode", public=True)
    return np.rint(flat).astype(np.int64).view(np.uint64)


def pair_mask(private, other_public: str, me: str, other: str, *, job: str, request: int, length: int) -> np.ndarray:
    """The mask two sites share for one request: ChaCha20 keyed by HKDF of their X25519 agreement."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shared = private.exchange(X25519PublicKey.from_public_bytes(_key_bytes(other, other_public)))
    first, second = sorted((me, other))
    info = "\0".join(("fedtab-secagg/1 mask", job, str(request), first, second)).encode()
    return _stream(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared), length)


def _split_shares(plain: bytes, requests: int, me: str) -> list[bytes]:
    out, i = [], 0
    while i < len(plain):
        n = int.from_bytes(plain[i:i + 2], "big")
        out.append(plain[i + 2:i + 2 + n])
        i += 2 + n
    if len(out) != requests:
        raise FederationError(f"site '{me}': a relayed key share is malformed: refused", public=True)
    return out


def _raw_public(private) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(private) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raise FederationError("secure aggregation: a value is not base64", public=True) from None


def _key_bytes(site: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise FederationError(f"secure aggregation: a key of site '{site}' is not a 32-byte X25519 key",
                              public=True)
    return raw


def _stream(seed: bytes, length: int) -> np.ndarray:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(8 * length)), dtype=np.uint64).copy()

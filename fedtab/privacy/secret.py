"""The one seam for secret randomness: every draw a DP guarantee relies on goes through here.

A DP release is private only while its noise is unknown to the attacker. So the noise of every
release (encoding counts, DP-SGD gradients) and the Poisson batch selection of DP-SGD come from
:func:`secret_source`, never from the job seed, and nothing here can be seeded, stored or sent:

* count releases (integer histograms, category counts, two-way tables) use OpenDP's discrete
  Gaussian mechanism on integers (``opendp.measurements.make_gaussian`` over an integer vector
  domain). Its output is an integer: there is no floating-point representation for an attacker to
  read the true count from (Mironov 2012; Jin et al. 2022), and OpenDP draws from its own CSPRNG
  (operating-system entropy). Its privacy is rho = 1 / (2 sigma^2) zCDP per unit of L2
  sensitivity (Canonne, Kamath, Steinke 2020), no weaker than the continuous Gaussian's, so the
  ledger's RDP accounting of a Gaussian with the same sigma holds as it is;
* DP-SGD gradient noise and Poisson batch draws: a ChaCha20 keystream keyed with 32 fresh bytes
  of operating-system entropy (``os.urandom``) per source, turned into uniforms with 53 random bits
  and into Gaussians by Box-Muller in float64. Gradient noise uses Opacus' secure-mode construction
  (the sum of four Gaussians, halved: same sd; it defeats the floating-point attacks on a single
  Gaussian draw, Opacus' ``_generate_noise``). OpenDP's float Gaussian would take seconds per step
  for a network's worth of parameters.

Tests that need determinism under DP replace the source through :func:`_replace_source_for_tests`
(a context manager, not part of the API; no CLI flag, configuration key or API argument reaches
it). Its ``label`` argument (site and purpose) lets a test source derive one stream per use, as a
seeded run would.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

_KEY_BYTES = 32
_CHUNK = 1 << 16  # uniforms drawn per keystream read at least (amortises the cipher call)


class SecretSource:
    """Randomness from operating-system entropy: a fresh ChaCha20 key per source, never exposed."""

    secret = True

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        # Key and nonce from the OS CSPRNG; they live only inside the cipher object.
        # Block counter (first 4 bytes) starts at 0: 256 GB of stream before it could wrap.
        cipher = Cipher(algorithms.ChaCha20(os.urandom(_KEY_BYTES), bytes(4) + os.urandom(12)), mode=None)
        self._stream = cipher.encryptor()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SecretSource(<os entropy>)"

    def __getstate__(self):  # never pickled, copied or stored
        raise TypeError("a SecretSource cannot be serialised: its key must never leave the process")

    def _bits(self, n: int) -> np.ndarray:
        with self._lock:
            raw = self._stream.update(bytes(8 * max(int(n), 0)))
        return np.frombuffer(raw, dtype=np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms in (0, 1): 53 random bits each, offset by half a step (never 0 or 1)."""
        return ((self._bits(n) >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0 ** -53)

    def normal(self, n: int) -> np.ndarray:
        """``n`` standard normal float64 draws (Box-Muller)."""
        m = (int(n) + 1) // 2
        u = self.uniform(2 * m)
        r = np.sqrt(-2.0 * np.log(u[:m]))
        theta = (2.0 * math.pi) * u[m:]
        return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[: int(n)]

    def discrete_gaussian(self, counts: np.ndarray, sigma: float) -> np.ndarray:
        """``counts`` (whole numbers) plus discrete Gaussian noise of scale ``sigma`` (OpenDP)."""
        return _opendp_discrete_gaussian(counts, sigma)


class SeededSource(SecretSource):
    """A *replayable* source for tests only (``_replace_source_for_tests``): numpy's PCG64 from a
    seed. It is what a broken mechanism looks like (noise that whoever knows the seed can replay);
    the attack tests use it as the control their attacks must catch."""

    secret = False

    def __init__(self, seed) -> None:
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SeededSource(<test only>)"

    def _bits(self, n: int) -> np.ndarray:
        with self._lock:
            return self._rng.integers(0, np.iinfo(np.uint64).max, size=int(n), dtype=np.uint64, endpoint=True)

    def discrete_gaussian(self, counts: np.ndarray, sigma: float) -> np.ndarray:
        c = _whole(counts)
        # Not OpenDP's sampler: rounding a seeded Gaussian (tests only; the point is replayability).
        return c + np.rint(self.normal(c.size).reshape(c.shape) * float(sigma)).astype(np.int64)


def _whole(counts) -> np.ndarray:
    c = np.asarray(counts)
    if c.size and not np.all(np.equal(np.mod(c, 1), 0)):
        raise ValueError("discrete Gaussian noise is for whole-number counts")
    return c.astype(np.int64)


def _opendp_discrete_gaussian(counts, sigma: float) -> np.ndarray:
    c = _whole(counts)
    if c.size == 0:
        return c.astype(np.float64)
    measurement = _discrete_gaussian_measurement(float(sigma))
    noisy = measurement([int(v) for v in c.ravel()])
    return np.asarray(noisy, dtype=np.int64).reshape(c.shape)


_MEASUREMENTS: dict[float, object] = {}
_MEASUREMENTS_LOCK = threading.Lock()


def _discrete_gaussian_measurement(sigma: float):
    """OpenDP's discrete Gaussian over integer vectors at scale ``sigma`` (cached per scale)."""
    with _MEASUREMENTS_LOCK:
        m = _MEASUREMENTS.get(sigma)
        if m is None:
            import opendp.prelude as dp

            dp.enable_features("contrib")
            space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=float)
            m = _MEASUREMENTS[sigma] = dp.m.make_gaussian(*space, scale=sigma)
        return m


# -- the seam ------------------------------------------------------------------------------------
_override: Callable[[str], SecretSource] | None = None


def secret_source(label: str = "") -> SecretSource:
    """A source of secret randomness for one use (``label`` names it: site and purpose; production
    ignores it). A new source has a new key: two releases never share a stream."""
    if _override is not None:
        return _override(label)
    return SecretSource()


@contextlib.contextmanager
def _replace_source_for_tests(factory: Callable[[str], SecretSource]) -> Iterator[None]:
    """Tests only: every ``secret_source(label)`` returns ``factory(label)`` inside the block."""
    global _override
    before, _override = _override, factory
    try:
        yield
    finally:
        _override = before


def seeded_sources_for_tests(seed: int) -> Callable[[str], SecretSource]:
    """A factory for :func:`_replace_source_for_tests`: one replayable stream per (seed, label)."""
    import zlib

    return lambda label: SeededSource([int(seed), zlib.crc32(label.encode("utf-8"))])

"""Fixed-point quantisation and mask expansion, arithmetic modulo 2^32.

Quantisation (one site). A site's contribution is its weighted *delta* from the round's
global model, ``n_k * (w_k - g)``, clipped coordinate-wise to ``[-clip, clip]`` before the
weighting, scaled by ``scale`` and rounded to the nearest integer; the weight ``n_k`` is
appended as one more (unscaled) element. Both travel as uint32 modulo 2^32, so the server's
sum carries ``sum_k n_k`` exactly and FedAvg's weighting stays exact.

No overflow: with ``K`` sites in the roster and ``n_k <= max_weight``, every partial sum of
the scaled values is below ``K * (max_weight * clip * scale + 1/2) < 2^31``, which is how
``scale`` is chosen; read back as signed int32 the sum is exact.

Error bound (stated once, asserted by the tests): if no coordinate of any delta exceeds
``clip``, each survivor's rounding errs by at most 1/2 unit, so the unmasked mean differs from
float64 FedAvg of the same updates by at most ``m / (2 * scale * N)`` per coordinate, where
``m`` is the number of survivors and ``N = sum_k n_k`` over them (see ``error_bound``), plus
the float32 rounding of the returned model.

Mask expansion. A 32-byte seed keys ChaCha20 (RFC 7539, via ``cryptography``) with a zero
nonce; the keystream, read as little-endian uint32, is the mask. Every seed is used for one
expansion only (self-mask seeds are fresh per round, pairwise seeds are bound to round and
pair by HKDF), so a fixed nonce never repeats a (key, nonce) pair. Flower's SecAgg+ instead
folds its seed to 32 bits and expands it with NumPy's ``RandomState`` (a Mersenne Twister):
2^32 possible masks, searchable, and MT19937 is predictable from its outputs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedhealth.ml.types import Weights

U32 = npt.NDArray[np.uint32]
_ZERO_NONCE = bytes(16)
# Keystream chunk: 1 MiB of zeros to encrypt (read-only, shared) and a reused output buffer.
_CHUNK_BYTES = 1 << 20
_ZEROS = bytes(_CHUNK_BYTES)


def _encryptor(seed: bytes):
    if len(seed) != 32:
        raise ValueError(f"a mask seed is 32 bytes, got {len(seed)}")
    return Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()


def expand(seed: bytes, length: int, out: U32 | None = None) -> U32:
    """``length`` pseudo-random uint32 values: the ChaCha20 keystream of ``seed``.

    ``out``: a C-contiguous uint32 buffer of at least ``length`` to write into (no
    allocation); the result is its first ``length`` values.
    """
    if out is None:
        out = np.empty(length, dtype=np.uint32)  # not zero-filled: every byte is overwritten
    result = out[:length]
    view = result.data.cast("B")
    enc = _encryptor(seed)
    for start in range(0, len(view), _CHUNK_BYTES):
        end = min(start + _CHUNK_BYTES, len(view))
        enc.update_into(_ZEROS[: end - start], view[start:end])
    if sys.byteorder == "big":  # the keystream is read as little-endian uint32
        result.byteswap(inplace=True)
    return result


def apply_mask(
    acc: U32, seed: bytes, *, subtract: bool = False, scratch: U32 | None = None
) -> None:
    """In place ``acc += expand(seed)`` (or ``-=``) modulo 2^32; ``scratch``: a reusable
    buffer of ``acc.size`` uint32 (else one is allocated)."""
    mask = expand(seed, acc.size, scratch)
    if subtract:
        np.subtract(acc, mask, out=acc)
    else:
        np.add(acc, mask, out=acc)


@dataclass(frozen=True)
class QuantSpec:
    """Public quantisation parameters of a secure round.

    clip: bound on each coordinate of ``w_k - g`` (larger deltas are clipped by the site).
    max_weight: the largest ``n_k`` a site may contribute (a site with more rows refuses).
    n_sites: the roster size ``K`` (overflow is ruled out for up to K contributions).
    """

    clip: float
    max_weight: int
    n_sites: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive number, got {self.clip!r}")
        if not 1 <= self.max_weight <= 1 << 24:
            raise ValueError(f"max_weight must be in 1..{1 << 24}, got {self.max_weight!r}")
        if not 1 <= self.n_sites <= 1 << 12:
            raise ValueError(f"n_sites must be in 1..{1 << 12}, got {self.n_sites!r}")
        if self.n_sites * self.max_weight >= 1 << 31:
            raise ValueError("n_sites x max_weight must stay below 2^31 (the weight sum is exact)")
        if self.scale < 1.0:
            raise ValueError(
                f"clip={self.clip} x max_weight={self.max_weight} x n_sites={self.n_sites} "
                "leaves less than one integer step per unit: lower one of them"
            )

    @property
    def scale(self) -> float:
        """Integer steps per unit of ``n_k * delta``: the largest that cannot overflow."""
        return (2**31 - 1 - self.n_sites) / (self.n_sites * self.max_weight * self.clip)

    def error_bound(self, survivors: int, total_weight: int) -> float:
        """Max per-coordinate |secure mean - FedAvg| (float64), deltas within ``clip``."""
        return survivors / (2.0 * self.scale * total_weight)


def vector_length(reference: Weights) -> int:
    """Length of a masked vector for a model: one element per parameter, plus the weight."""
    return sum(int(a.size) for a in reference.values()) + 1


def quantise(
    weights: Weights, reference: Weights, num_samples: int, spec: QuantSpec
) -> tuple[U32, int]:
    """``(vector, clipped)``: the uint32 encoding of ``n_k * clip(w_k - g)`` then ``n_k``.

    ``weights`` and ``reference`` (the round's global model ``g``) share names and shapes
    (checked by the caller); ``clipped`` counts coordinates that exceeded ``clip``.
    """
    if not 1 <= num_samples <= spec.max_weight:
        raise ValueError(f"num_samples must be in 1..{spec.max_weight}, got {num_samples}")
    out = np.empty(vector_length(reference), dtype=np.uint32)
    factor = np.float64(num_samples * spec.scale)
    clipped = 0
    start = 0
    for name, ref in reference.items():
        delta = weights[name].astype(np.float64).reshape(-1) - ref.astype(np.float64).reshape(-1)
        clipped += int(np.count_nonzero(np.abs(delta) > spec.clip))
        np.clip(delta, -spec.clip, spec.clip, out=delta)
        q = np.rint(delta * factor).astype(np.int32)
        out[start : start + q.size] = q.view(np.uint32)
        start += q.size
    out[-1] = num_samples
    return out, clipped


def dequantise(total: U32, reference: Weights, spec: QuantSpec) -> tuple[Weights, int]:
    """``(mean weights, total weight)`` from the unmasked sum of the survivors' vectors.

    ValueError if the weight sum is 0 or above what the roster allows (a corrupt sum).
    """
    weight = int(total[-1])
    if not 1 <= weight <= spec.n_sites * spec.max_weight:
        raise ValueError(f"the unmasked weight sum {weight} is impossible for this round")
    signed = total[:-1].view(np.int32)
    divisor = np.float64(spec.scale * weight)
    mean: Weights = {}
    start = 0
    for name, ref in reference.items():
        part = signed[start : start + ref.size].astype(np.float64) / divisor
        mean[name] = (ref.astype(np.float64) + part.reshape(ref.shape)).astype(np.float32)
        start += ref.size
    return mean, weight

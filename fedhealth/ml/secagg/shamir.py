"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir (1979), "How to share a secret", CACM 22(11). A secret of up to 64 bytes (here a
32-byte X25519 private key or self-mask seed) is one field element: no chunking, no padding
(Flower's wrapper pads and splits into 16-byte pycryptodome chunks). The prime is the Mersenne
prime 2^521 - 1, larger than any 64-byte secret. Coefficients come from ``secrets``: with
fewer than ``t`` shares every secret is equally likely.

A share is ``(x, y)`` with ``1 <= x <= n`` and ``0 <= y < P``; ``encode``/``decode`` give a
fixed 68-byte form (2-byte x, 66-byte y, big-endian).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

P = (1 << 521) - 1
_Y_BYTES = 66  # ceil(521 / 8)
SHARE_BYTES = 2 + _Y_BYTES
MAX_SECRET_BYTES = 64


class Share(NamedTuple):
    """One point of the sharing polynomial: x in 1..n (never 0: f(0) is the secret)."""

    x: int
    y: int

    def encode(self) -> bytes:
        """68 bytes: x (2 bytes) then y (66 bytes), big-endian."""
        return self.x.to_bytes(2, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def decode(cls, data: bytes) -> Share:
        """Inverse of ``encode``; ValueError on a wrong length or an out-of-field value."""
        if len(data) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        x = int.from_bytes(data[:2], "big")
        y = int.from_bytes(data[2:], "big")
        if x == 0 or y >= P:
            raise ValueError("share out of range")
        return cls(x, y)


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Split ``secret`` (1..64 bytes) into one share per x in ``xs``; any ``threshold`` recover it.

    ``xs``: distinct integers in 1..65535 (the shareholders' roster indices). The secret's
    length is not hidden; callers share fixed-length (32-byte) secrets only.
    """
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret is 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 1 <= x < 1 << 16 for x in xs):
        raise ValueError("share indices must be distinct integers in 1..65535")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in 1..{len(xs)}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(P) for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % P
        shares.append(Share(x, y))
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i); cached: in a round every owner's
    secret is usually rebuilt from the same holders, so this O(t^2) step runs once."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % P
                den = den * (xi - xj) % P
        out.append(num * pow(den, -1, P) % P)
    return tuple(out)


def combine(shares: Sequence[Share], length: int) -> bytes:
    """Lagrange interpolation at 0: the ``length``-byte secret behind ``shares``.

    Needs at least ``threshold`` shares with distinct x; with fewer, or with a wrong share,
    the result is some other value (callers verify it against a public commitment or key).
    ValueError if the value does not fit ``length`` bytes (certainly not the secret).
    """
    if not shares:
        raise ValueError("no shares to combine")
    xs = tuple(s.x for s in shares)
    if len(set(xs)) != len(xs):
        raise ValueError("shares with the same index")
    secret = sum(c * s.y for c, s in zip(_lagrange_at_zero(xs), shares, strict=True)) % P
    if secret >= 1 << (8 * length):
        raise ValueError("the shares do not combine to a secret of this length")
    return secret.to_bytes(length, "big")

"""Who masks with whom: the complete graph (Bonawitz et al. 2017) or SecAgg+'s sparse one.

Bell, Bonawitz, Gascón, Lepoint, Raykova (2020), "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS. With ``degree`` k < n - 1 each site masks with, and shares
its secrets among, only k neighbours: cost O(k) per site instead of O(n). The neighbours are
a ring of the sites in an order that nobody picks: SHA-256 of the round binding and *all*
advertised public keys, so it is fixed only once every key is public.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def check_degree(degree: int | None) -> None:
    """ValueError unless ``degree`` is None (everyone) or even and >= 2."""
    if degree is not None and (degree < 2 or degree % 2):
        raise ValueError(f"a sparse neighbour degree must be even and >= 2, got {degree}")


def neighbours(
    sites: Sequence[str], degree: int | None, randomness: bytes
) -> dict[str, frozenset[str]]:
    """Each site's neighbours (never itself). ``degree`` None or >= n - 1: everybody else.

    A sparse ``degree`` must be even (k/2 neighbours on each side of the ring), >= 2.
    """
    n = len(sites)
    if degree is None or degree >= n - 1:
        everyone = frozenset(sites)
        return {s: everyone - {s} for s in sites}
    check_degree(degree)
    ring = sorted(sites, key=lambda s: hashlib.sha256(randomness + s.encode()).digest())
    half = degree // 2
    out: dict[str, frozenset[str]] = {}
    for i, s in enumerate(ring):
        out[s] = frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d != 0)
    return out

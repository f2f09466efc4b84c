"""What sites and the server exchange, stage by stage (the server only relays).

1. ``Advertise``    site -> server: two public keys and a commitment to the self-mask seed.
2. ``Roster``       server -> sites: every advertised site, its index and keys, the threshold.
   ``SharePackage`` site -> server: one ciphertext per shareholder (its neighbours and itself).
   The server forwards to each site the ciphertexts addressed to it.
3. ``MaskedInput``  site -> server: the masked uint32 vector (little-endian bytes).
4. ``UnmaskRequest`` server -> sites: who sent a masked input (no signatures yet).
   ``ConsistencySignature`` site -> server: its Ed25519 signature over that survivor set
   (Bonawitz's ConsistencyCheck, ``consistency``).
5. ``UnmaskRequest`` server -> signers: the same set with every signature relayed.
   ``UnmaskReply``  site -> server: self-mask-seed shares of survivors, mask-key shares of
   sites that shared keys but sent no masked input. Never both for one site.
Every message names its ``RoundContext`` and its sender; the server checks both against the
authenticated caller and the current round.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from .graph import neighbours
from .keys import RoundContext
from .masking import QuantSpec


@dataclass(frozen=True)
class Advertise:
    ctx: RoundContext
    site: str
    enc_key: bytes  # X25519 public key for share encryption
    mask_key: bytes  # X25519 public key for pairwise masks
    seed_commit: bytes  # SHA-256 commitment to the self-mask seed
    sign_key: bytes  # Ed25519 verification key for the consistency check


@dataclass(frozen=True)
class RosterEntry:
    site: str
    index: int  # Shamir x-coordinate, 1-based
    enc_key: bytes
    mask_key: bytes
    seed_commit: bytes
    sign_key: bytes


@dataclass(frozen=True)
class Roster:
    """The advertised sites (sorted by id) and the public parameters of the round."""

    ctx: RoundContext
    threshold: int
    degree: int | None
    spec: QuantSpec
    length: int  # masked vector length (parameters + 1)
    entries: tuple[RosterEntry, ...]
    by_site: dict[str, RosterEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_site", {e.site: e for e in self.entries})

    @cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        digest = hashlib.sha256(self.ctx.binding(b"neighbours"))
        for e in self.entries:
            digest.update(e.enc_key + e.mask_key + e.seed_commit + e.sign_key)
        return neighbours([e.site for e in self.entries], self.degree, digest.digest())

    def holders(self, site: str) -> frozenset[str]:
        """Who holds shares of ``site``'s secrets: its neighbours and itself."""
        return self.graph[site] | {site}


@dataclass(frozen=True)
class SharePackage:
    ctx: RoundContext
    site: str
    ciphertexts: dict[str, bytes]  # recipient -> encrypted (seed share, key share)


@dataclass(frozen=True)
class MaskedInput:
    ctx: RoundContext
    site: str
    vector: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    ctx: RoundContext
    survivors: tuple[str, ...]
    # signer -> Ed25519 signature over ``survivors``; empty when asking for signatures
    signatures: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsistencySignature:
    ctx: RoundContext
    site: str
    signature: bytes  # over (round, site, the survivor set it was told)


@dataclass(frozen=True)
class UnmaskReply:
    ctx: RoundContext
    site: str
    seed_shares: dict[str, bytes]  # survivor -> its self-mask-seed share held by ``site``
    key_shares: dict[str, bytes]  # dropped site -> its mask-key share held by ``site``


def seed_commitment(ctx: RoundContext, site: str, seed: bytes) -> bytes:
    """SHA-256 binding a 32-byte random seed to its site and round (hiding: the seed is random)."""
    return hashlib.sha256(ctx.binding(b"seed-commit", site) + seed).digest()

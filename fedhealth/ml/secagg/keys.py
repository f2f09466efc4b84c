"""Keys, agreement and share encryption, all from ``cryptography``.

* Two fresh X25519 key pairs per site and round: one to encrypt shares (``c``), one whose
  agreement with each neighbour seeds the pairwise masks (``s``).
* Every derived key goes through HKDF-SHA256 whose ``info`` binds the protocol version, the
  purpose, the round (``RoundContext``) and both site ids, so a key or ciphertext from one
  round, pair or purpose is useless in another. (Flower's SecAgg+ derives Fernet keys with
  ``info=None`` and binds only the node ids inside the plaintext.)
* Shares travel under ChaCha20-Poly1305 with the same binding as associated data: a
  ciphertext replayed into another round or handed to another recipient fails to decrypt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ProtocolViolation

VERSION = b"fedhealth-secagg/v1"
KEY_BYTES = 32
NONCE_BYTES = 12


def _field(value: bytes) -> bytes:
    """Length-prefixed, so that concatenated fields can never be re-split differently."""
    return len(value).to_bytes(4, "big") + value


@dataclass(frozen=True)
class RoundContext:
    """Which protocol run a message belongs to: a session (e.g. an experiment's id) and round."""

    session: str
    round: int

    def __post_init__(self) -> None:
        if not self.session:
            raise ValueError("a secure-aggregation session needs a non-empty id")
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")

    def binding(self, purpose: bytes, *sites: str) -> bytes:
        """Bytes naming version, purpose, session, round and the given site ids, unambiguously."""
        parts = [VERSION, purpose, self.session.encode(), str(self.round).encode()]
        return b"".join(_field(p) for p in parts + [s.encode() for s in sites])


def new_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS's CSPRNG)."""
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (what is Shamir-shared)."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    """Inverse of ``private_bytes``."""
    return X25519PrivateKey.from_private_bytes(data)


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (of a private key: its public half)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_bytes(data: bytes, *, site: str) -> X25519PublicKey:
    """A peer's advertised public key; ProtocolViolation naming ``site`` if it is malformed."""
    if len(data) != KEY_BYTES:
        raise ProtocolViolation(f"site {site!r} advertised a {len(data)}-byte key, not {KEY_BYTES}")
    return X25519PublicKey.from_public_bytes(data)


def agree(private: X25519PrivateKey, peer: X25519PublicKey, info: bytes) -> bytes:
    """X25519 then HKDF-SHA256 to 32 bytes, bound to ``info``.

    Refuses an all-zero shared secret (a low-order peer key), as RFC 7748 section 6.1 advises.
    """
    try:
        shared = private.exchange(peer)
    except ValueError:  # cryptography raises on the all-zero output of a low-order point
        raise ProtocolViolation("a peer's public key is a low-order point") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pair_order(a: str, b: str) -> tuple[str, str]:
    """The two site ids in a fixed order, so both ends bind the same ``info``."""
    return (a, b) if a < b else (b, a)


def mask_seed(
    ctx: RoundContext, own: X25519PrivateKey, own_id: str, peer: X25519PublicKey, peer_id: str
) -> bytes:
    """The 32-byte seed of the pairwise mask between ``own_id`` and ``peer_id`` this round."""
    return agree(own, peer, ctx.binding(b"pairwise-mask", *pair_order(own_id, peer_id)))


def _share_key(
    ctx: RoundContext, own: X25519PrivateKey, peer: X25519PublicKey, sender: str, recipient: str
) -> bytes:
    return agree(own, peer, ctx.binding(b"share-encryption", *pair_order(sender, recipient)))


def encrypt_share(
    ctx: RoundContext,
    own: X25519PrivateKey,
    peer: X25519PublicKey,
    sender: str,
    recipient: str,
    plaintext: bytes,
) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)`` with (round, sender, recipient) as associated data."""
    nonce = os.urandom(NONCE_BYTES)
    aad = ctx.binding(b"share", sender, recipient)
    key = _share_key(ctx, own, peer, sender, recipient)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_share(
    ctx: RoundContext,
    own: X25519PrivateKey,
    peer: X25519PublicKey,
    sender: str,
    recipient: str,
    blob: bytes,
) -> bytes:
    """Inverse of ``encrypt_share``; ProtocolViolation if it was made for another round,
    another sender or recipient, or was altered."""
    aad = ctx.binding(b"share", sender, recipient)
    key = _share_key(ctx, own, peer, sender, recipient)
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise ProtocolViolation(
            f"the share from site {sender!r} to {recipient!r} does not authenticate for "
            f"session {ctx.session!r} round {ctx.round} (another round or recipient, or altered)"
        ) from None

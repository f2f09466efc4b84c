"""Bonawitz et al.'s ConsistencyCheck round: every site must see the same survivor list.

Between the masked inputs and the unmasking the server tells each survivor who sent a masked
input. Without a check, a server could tell site A "X survived" (A reveals X's self-mask seed
share) and site B "X dropped" (B reveals X's mask-key share): with t of each, X's update is
unmasked. So (Bonawitz et al. 2017, section 4, round "ConsistencyCheck"):

1. each site advertises, beside its two X25519 keys, a fresh Ed25519 verification key for the
   round (``new_signing_key``, ``signing_public``);
2. each survivor signs ``(round, its id, the survivor set it was told)`` (``sign_survivors``);
3. the server relays every signature to every signer;
4. a site reveals shares only if at least ``t`` valid signatures, each by a distinct site of
   the roster under the key the roster lists for it, cover the *same* set it signed, and no
   relayed signature is invalid (``check_signatures``); otherwise it refuses with code
   ``secagg_inconsistent`` and reveals nothing.

With ``t`` a majority of the roster and each honest site signing once, two different sets
cannot both gather ``t`` honest signatures. What it cannot stop: the verification keys reach
the sites through the server, so a server that invents whole sites at key advertisement
controls their keys and signatures (docs/secure-aggregation.md says what a PKI would add).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolViolation
from .keys import RoundContext

SIGNATURE_BYTES = 64
PUBLIC_BYTES = 32


def new_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key for one round (from the OS's CSPRNG)."""
    return Ed25519PrivateKey.generate()


def signing_private_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw private key (site-private state only)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def signing_from_bytes(data: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(data)


def signing_public(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw verification key a site advertises."""
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def check_public(data: bytes, *, site: str) -> Ed25519PublicKey:
    """The verification key from its 32 raw bytes; ProtocolViolation naming ``site`` if not one."""
    if len(data) != PUBLIC_BYTES:
        raise ProtocolViolation(
            f"site {site!r}: a signing key is {PUBLIC_BYTES} bytes, got {len(data)}"
        )
    try:
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise ProtocolViolation(f"site {site!r}: not an Ed25519 public key") from None


def payload(ctx: RoundContext, signer: str, survivors: Iterable[str]) -> bytes:
    """What a site signs: version, purpose, round, the signer and the sorted survivor set,
    each length-prefixed (``RoundContext.binding``), so no two (round, signer, set) agree."""
    return ctx.binding(b"consistency", signer, *sorted(set(survivors)))


def sign_survivors(
    key: Ed25519PrivateKey, ctx: RoundContext, signer: str, survivors: Iterable[str]
) -> bytes:
    """The 64-byte signature of ``signer`` over ``survivors`` for this round."""
    return key.sign(payload(ctx, signer, survivors))


def valid(
    public: bytes, ctx: RoundContext, signer: str, survivors: Iterable[str], signature: bytes
) -> bool:
    """True if ``signature`` is ``signer``'s over exactly ``survivors`` in this round."""
    if len(signature) != SIGNATURE_BYTES or len(public) != PUBLIC_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, payload(ctx, signer, survivors)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def check_signatures(
    *,
    site: str,
    ctx: RoundContext,
    survivors: Iterable[str],
    signatures: Mapping[str, bytes],
    keys: Mapping[str, bytes],
    threshold: int,
) -> None:
    """Refuse (``secagg_inconsistent``) unless at least ``threshold`` sites of ``keys`` (the
    roster: id -> verification key) signed exactly ``survivors`` and every relayed signature
    verifies. Only survivors can sign: a signer outside the set is refused too."""
    members = set(survivors)
    bad = sorted(
        signer
        for signer, sig in signatures.items()
        if signer not in keys
        or signer not in members
        or not valid(keys[signer], ctx, signer, members, sig)
    )
    if bad:
        raise ProtocolViolation(
            f"site {site!r}: the signatures of {bad} over the survivor list do not verify: "
            "the server showed sites different survivor lists, or altered a signature; "
            "this site reveals no share",
            code="secagg_inconsistent",
        )
    if len(signatures) < threshold:
        raise ProtocolViolation(
            f"site {site!r}: only {len(signatures)} sites signed the survivor list it was "
            f"told, fewer than the threshold {threshold}; this site reveals no share",
            code="secagg_inconsistent",
        )

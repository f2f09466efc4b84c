"""The site side of one secure round: a state machine that refuses steps out of order.

``SiteSession`` holds this site's secrets for one round (two X25519 private keys, the
self-mask seed) and the shares other sites sent it. The secrets never leave the object except
as Shamir shares encrypted for their holders; ``unmask`` answers once, and never reveals both
a site's seed share and its key share (either would be harmless alone; both unmask that site).
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any

import numpy as np

from fedhealth.ml.strategies.checks import update_problem
from fedhealth.ml.types import Update, Weights

from . import consistency, shamir, wire
from .errors import BelowThreshold, ProtocolViolation, SecAggError
from .keys import (
    RoundContext,
    decrypt_share,
    encrypt_share,
    mask_seed,
    new_private_key,
    private_bytes,
    private_from_bytes,
    public_bytes,
    public_from_bytes,
)
from .masking import apply_mask, quantise, vector_length
from .messages import (
    Advertise,
    ConsistencySignature,
    MaskedInput,
    Roster,
    SharePackage,
    UnmaskReply,
    UnmaskRequest,
    seed_commitment,
)


class Stage(StrEnum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"


class SiteSession:
    """One site's part in one secure round (``ctx``)."""

    def __init__(self, ctx: RoundContext, site: str) -> None:
        self.ctx = ctx
        self.site = site
        self.stage = Stage.NEW
        self._enc = new_private_key()
        self._mask = new_private_key()
        self._seed = os.urandom(32)
        self._sign = consistency.new_signing_key()
        self._signed: tuple[str, ...] | None = None  # the survivor set this site signed
        self._roster: Roster | None = None
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self.clipped = 0

    def _expect(self, stage: Stage, what: str) -> None:
        if self.stage is not stage:
            raise ProtocolViolation(
                f"site {self.site!r}: {what} is not allowed at stage {self.stage.value!r}"
            )

    def _same_round(self, ctx: RoundContext, what: str) -> None:
        if ctx != self.ctx:
            raise ProtocolViolation(
                f"site {self.site!r}: {what} is for session {ctx.session!r} round {ctx.round}, "
                f"not {self.ctx.session!r} round {self.ctx.round}"
            )

    # 1. advertise keys
    def advertise(self) -> Advertise:
        self._expect(Stage.NEW, "advertising keys")
        self.stage = Stage.ADVERTISED
        return Advertise(
            self.ctx,
            self.site,
            public_bytes(self._enc),
            public_bytes(self._mask),
            seed_commitment(self.ctx, self.site, self._seed),
            consistency.signing_public(self._sign),
        )

    # 2. share keys
    def share_keys(self, roster: Roster) -> SharePackage:
        """Split seed and mask key among this site's holders, one ciphertext each."""
        self._expect(Stage.ADVERTISED, "sharing keys")
        self._same_round(roster.ctx, "the roster")
        own = roster.by_site.get(self.site)
        if own is None or (own.enc_key, own.mask_key, own.sign_key) != (
            public_bytes(self._enc),
            public_bytes(self._mask),
            consistency.signing_public(self._sign),
        ):
            raise ProtocolViolation(
                f"site {self.site!r}: the roster does not carry this site's keys"
            )
        holders = sorted(roster.holders(self.site))
        if len(holders) < roster.threshold:
            raise BelowThreshold(
                f"site {self.site!r}: {len(holders)} shareholders, fewer than the threshold {roster.threshold}"
            )
        xs = [roster.by_site[h].index for h in holders]
        seed_shares = shamir.split(self._seed, roster.threshold, xs)
        key_shares = shamir.split(private_bytes(self._mask), roster.threshold, xs)
        ciphertexts = {}
        for h, s_share, k_share in zip(holders, seed_shares, key_shares, strict=True):
            peer = public_from_bytes(roster.by_site[h].enc_key, site=h)
            ciphertexts[h] = encrypt_share(
                self.ctx, self._enc, peer, self.site, h, s_share.encode() + k_share.encode()
            )
        self._roster = roster
        self.stage = Stage.SHARED
        return SharePackage(self.ctx, self.site, ciphertexts)

    # 3. masked input
    def masked_input(
        self, incoming: dict[str, bytes], weights: Weights, num_samples: int, reference: Weights
    ) -> MaskedInput:
        """Check the update, quantise it, add the self mask and the pairwise masks.

        ``incoming``: sender -> ciphertext addressed to this site (forwarded by the server);
        its senders are the sites this one masks with. ``reference``: the round's global model.
        """
        self._expect(Stage.SHARED, "sending a masked input")
        roster = self._roster
        assert roster is not None
        problem = update_problem(Update(weights, num_samples, self.site), reference)
        if problem is not None:  # the server can no longer check one update: the site does
            raise SecAggError(
                f"site {self.site!r}: the update is not valid: {problem.reason}",
                code="secagg_bad_update",
            )
        allowed = roster.holders(self.site)
        if self.site not in incoming:
            raise ProtocolViolation(
                f"site {self.site!r}: its own share is missing from the forwarded shares"
            )
        for sender, blob in incoming.items():
            if sender not in allowed:
                raise ProtocolViolation(
                    f"site {self.site!r}: got a share from {sender!r}, which is not a neighbour"
                )
            peer = public_from_bytes(roster.by_site[sender].enc_key, site=sender)
            plain = decrypt_share(self.ctx, self._enc, peer, sender, self.site, blob)
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise ProtocolViolation(
                    f"site {self.site!r}: the share from {sender!r} has the wrong length"
                )
            self._held[sender] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        if len(self._held) < roster.threshold:
            raise BelowThreshold(
                f"site {self.site!r}: shares from {len(self._held)} sites, fewer than the threshold {roster.threshold}"
            )
        if vector_length(reference) != roster.length:
            raise ProtocolViolation(
                f"site {self.site!r}: the model has {vector_length(reference) - 1} parameters, the round {roster.length - 1}"
            )
        vector, self.clipped = quantise(weights, reference, num_samples, roster.spec)
        scratch = np.empty_like(vector)
        apply_mask(vector, mask_seed_self(self._seed), scratch=scratch)
        for peer_id in sorted(self._held):
            if peer_id == self.site:
                continue
            peer = public_from_bytes(roster.by_site[peer_id].mask_key, site=peer_id)
            seed = mask_seed(self.ctx, self._mask, self.site, peer, peer_id)
            apply_mask(vector, seed, subtract=self.site > peer_id, scratch=scratch)
        self.stage = Stage.MASKED
        return MaskedInput(self.ctx, self.site, vector.astype("<u4", copy=False).tobytes())

    # 4. consistency check: sign the survivor set this site was told
    def sign(self, request: UnmaskRequest) -> ConsistencySignature:
        """Sign the survivor set (once); the unmasking later needs t signatures over it."""
        self._expect(Stage.MASKED, "signing the survivor list")
        self._same_round(request.ctx, "the survivor list")
        self._check_survivors(request)
        self._signed = tuple(sorted(set(request.survivors)))
        self.stage = Stage.SIGNED
        return ConsistencySignature(
            self.ctx,
            self.site,
            consistency.sign_survivors(self._sign, self.ctx, self.site, self._signed),
        )

    def _check_survivors(self, request: UnmaskRequest) -> None:
        roster = self._roster
        assert roster is not None
        survivors = set(request.survivors)
        if self.site not in survivors:
            raise ProtocolViolation(
                f"site {self.site!r}: sent its masked input but is not listed as a survivor"
            )
        unknown = survivors - set(roster.by_site)
        if unknown:
            raise ProtocolViolation(
                f"site {self.site!r}: survivors not in the roster: {sorted(unknown)}"
            )

    # 5. unmask
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal seed shares of survivors and key shares of the others that shared; once,
        and only if at least t sites signed the same survivor set this site signed."""
        self._expect(Stage.SIGNED, "unmasking")
        self._same_round(request.ctx, "the unmask request")
        roster = self._roster
        assert roster is not None
        if tuple(sorted(set(request.survivors))) != self._signed:
            raise ProtocolViolation(
                f"site {self.site!r}: the unmask request lists survivors "
                f"{sorted(set(request.survivors))}, but this site signed {list(self._signed or ())}; "
                "it reveals no share",
                code="secagg_inconsistent",
            )
        consistency.check_signatures(
            site=self.site,
            ctx=self.ctx,
            survivors=request.survivors,
            signatures=request.signatures,
            keys={e.site: e.sign_key for e in roster.entries},
            threshold=roster.threshold,
        )
        survivors = set(request.survivors)  # checked when signed: this site, all in the roster
        if len(survivors & set(self._held)) < roster.threshold:
            raise BelowThreshold(
                f"site {self.site!r}: {len(survivors & set(self._held))} surviving shareholders, fewer than the threshold {roster.threshold}"
            )
        seed_shares = {o: s for o, (s, _) in self._held.items() if o in survivors}
        key_shares = {o: k for o, (_, k) in self._held.items() if o not in survivors}
        self.stage = Stage.DONE
        self._held.clear()
        return UnmaskReply(self.ctx, self.site, seed_shares, key_shares)

    # state, for a site that restarts mid-protocol
    def export_state(self) -> dict[str, Any]:
        """Everything needed to resume, as JSON. Holds this site's private keys and seed:
        store it in site-private storage only (agent state folder, hosted site's storage)."""
        return {
            "ctx": wire.encode_ctx(self.ctx),
            "site": self.site,
            "stage": self.stage.value,
            "enc": wire.b64(private_bytes(self._enc)),
            "mask": wire.b64(private_bytes(self._mask)),
            "seed": wire.b64(self._seed),
            "sign": wire.b64(consistency.signing_private_bytes(self._sign)),
            "signed": None if self._signed is None else list(self._signed),
            "roster": None if self._roster is None else wire.encode(self._roster),
            "held": {o: [wire.b64(s), wire.b64(k)] for o, (s, k) in self._held.items()},
            "clipped": self.clipped,
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> SiteSession:
        """The session ``export_state`` saved, at the same stage (a step it already took
        is still refused: a restarted site cannot answer twice)."""
        session = cls(wire.decode_ctx(state["ctx"]), state["site"])
        session.stage = Stage(state["stage"])
        session._enc = private_from_bytes(wire.unb64(state["enc"], "enc"))
        session._mask = private_from_bytes(wire.unb64(state["mask"], "mask"))
        session._seed = wire.unb64(state["seed"], "seed")
        session._sign = consistency.signing_from_bytes(wire.unb64(state["sign"], "sign"))
        session._signed = None if state["signed"] is None else tuple(state["signed"])
        roster = None if state["roster"] is None else wire.decode(state["roster"])
        if roster is not None and not isinstance(roster, Roster):
            raise ProtocolViolation("saved state: 'roster' is not a roster")
        session._roster = roster
        session._held = {
            o: (wire.unb64(s, "held"), wire.unb64(k, "held")) for o, (s, k) in state["held"].items()
        }
        session.clipped = int(state["clipped"])
        return session


def mask_seed_self(seed: bytes) -> bytes:
    """The self mask is the keystream of the seed itself (it is random and used once)."""
    return seed


def as_array(vector: bytes) -> np.ndarray:
    """A masked vector's bytes as uint32 (little-endian), for the server."""
    return np.frombuffer(vector, dtype="<u4").astype(np.uint32)

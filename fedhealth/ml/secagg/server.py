"""The server side of one secure round: a relay that only ever learns the sum.

``AggregationSession`` checks every message against the authenticated sender, the current
stage and round, and the roster; closes each stage (fail closed below the threshold); and
at the end reconstructs the survivors' self-mask seeds and the dropped sites' mask keys,
verifies each against its public commitment or key, removes the masks and dequantises.
It never holds a single site's update in the clear: each masked vector is uniformly random
on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from fedhealth.ml.types import Weights

from . import consistency, shamir, wire
from .errors import BelowThreshold, ProtocolViolation
from .graph import check_degree
from .keys import RoundContext, mask_seed, private_from_bytes, public_bytes, public_from_bytes
from .masking import QuantSpec, apply_mask, dequantise, vector_length
from .messages import (
    Advertise,
    ConsistencySignature,
    MaskedInput,
    Roster,
    RosterEntry,
    SharePackage,
    UnmaskReply,
    UnmaskRequest,
    seed_commitment,
)


class Phase(StrEnum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"


def default_threshold(n_sites: int) -> int:
    """A majority of the selected sites, at least 2."""
    return max(2, n_sites // 2 + 1)


def check_threshold(threshold: int, n_sites: int, degree: int | None) -> None:
    """ValueError unless a majority of each site's shareholders <= threshold <= their number."""
    check_degree(degree)
    holders = n_sites if degree is None or degree >= n_sites - 1 else degree + 1
    low = max(2, holders // 2 + 1)
    if not low <= threshold <= holders:
        raise ValueError(
            f"secure-aggregation threshold must be between {low} and {holders} for {n_sites} sites"
            + (f" with neighbour degree {degree}" if degree is not None else "")
            + f", got {threshold}"
        )


@dataclass(frozen=True)
class SecureResult:
    """The unmasked FedAvg of the survivors: mean weights, their total weight, who counted."""

    weights: Weights
    total_weight: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # shared keys, then sent no masked input (their masks were removed)
    error_bound: float  # max per-coordinate |weights - FedAvg| from quantisation (float64)


class AggregationSession:
    """One secure round on the server for ``sites`` (the selected sites' ids)."""

    def __init__(
        self,
        ctx: RoundContext,
        *,
        sites: list[str],
        reference: Weights,
        threshold: int,
        clip: float = 8.0,
        max_weight: int = 1 << 20,
        degree: int | None = None,
    ) -> None:
        if len(set(sites)) != len(sites) or not sites:
            raise ValueError("sites must be distinct and non-empty")
        check_threshold(threshold, len(sites), degree)
        self.ctx = ctx
        self.sites = sorted(sites)
        self.threshold = threshold
        self.degree = degree
        self.reference = reference
        self.spec = QuantSpec(clip=clip, max_weight=max_weight, n_sites=len(sites))
        self.length = vector_length(reference)
        self.phase = Phase.ADVERTISE
        self.roster: Roster | None = None
        self._adverts: dict[str, Advertise] = {}
        self._packages: dict[str, SharePackage] = {}
        self._sum = np.zeros(self.length, dtype=np.uint32)
        self._survivors: list[str] = []
        self._signatures: dict[str, bytes] = {}
        self._replies: dict[str, UnmaskReply] = {}

    def _check(
        self,
        authenticated: str,
        msg_site: str,
        ctx: RoundContext,
        phase: Phase,
        allowed: set[str] | list[str],
    ) -> None:
        if ctx != self.ctx:
            raise ProtocolViolation(
                f"message for session {ctx.session!r} round {ctx.round}, this is {self.ctx.session!r} round {self.ctx.round}"
            )
        if msg_site != authenticated:
            raise ProtocolViolation(
                f"site {authenticated!r} posted a message for site {msg_site!r}"
            )
        if self.phase is not phase:
            raise ProtocolViolation(
                f"site {authenticated!r} sent a {phase.value} message during the {self.phase.value} phase"
            )
        if authenticated not in allowed:
            raise ProtocolViolation(
                f"site {authenticated!r} is not taking part in the {phase.value} phase"
            )

    # 1. advertise keys
    def receive_advertise(self, authenticated: str, msg: Advertise) -> None:
        self._check(authenticated, msg.site, msg.ctx, Phase.ADVERTISE, self.sites)
        if msg.site in self._adverts:
            raise ProtocolViolation(
                f"site {msg.site!r} already advertised keys this round (replay)"
            )
        public_from_bytes(msg.enc_key, site=msg.site)
        public_from_bytes(msg.mask_key, site=msg.site)
        if len(msg.seed_commit) != 32:
            raise ProtocolViolation(f"site {msg.site!r}: a seed commitment is 32 bytes")
        consistency.check_public(msg.sign_key, site=msg.site)
        self._adverts[msg.site] = msg

    def close_advertise(self) -> Roster:
        if self.phase is not Phase.ADVERTISE:
            raise ProtocolViolation(f"cannot close advertising during the {self.phase.value} phase")
        self._need(len(self._adverts), "advertised keys")
        entries = tuple(
            RosterEntry(
                s,
                i + 1,
                self._adverts[s].enc_key,
                self._adverts[s].mask_key,
                self._adverts[s].seed_commit,
                self._adverts[s].sign_key,
            )
            for i, s in enumerate(sorted(self._adverts))
        )
        self.roster = Roster(self.ctx, self.threshold, self.degree, self.spec, self.length, entries)
        self.phase = Phase.SHARE
        return self.roster

    # 2. share keys
    def receive_shares(self, authenticated: str, pkg: SharePackage) -> None:
        roster = self._roster()
        self._check(authenticated, pkg.site, pkg.ctx, Phase.SHARE, set(roster.by_site))
        if pkg.site in self._packages:
            raise ProtocolViolation(
                f"site {pkg.site!r} already sent its shares this round (replay)"
            )
        expected = roster.holders(pkg.site)
        if set(pkg.ciphertexts) != expected:
            raise ProtocolViolation(
                f"site {pkg.site!r} sent shares for {sorted(pkg.ciphertexts)}, expected {sorted(expected)}"
            )
        self._packages[pkg.site] = pkg

    def close_shares(self) -> dict[str, dict[str, bytes]]:
        """recipient -> {sender: ciphertext} for each site that shared (the relay step)."""
        if self.phase is not Phase.SHARE:
            raise ProtocolViolation(f"cannot close sharing during the {self.phase.value} phase")
        self._need(len(self._packages), "shared keys")
        out: dict[str, dict[str, bytes]] = {s: {} for s in self._packages}
        for sender, pkg in self._packages.items():
            for recipient, blob in pkg.ciphertexts.items():
                if recipient in out:
                    out[recipient][sender] = blob
        self.phase = Phase.MASKED
        return out

    # 3. masked input
    def receive_masked(self, authenticated: str, msg: MaskedInput) -> None:
        self._check(authenticated, msg.site, msg.ctx, Phase.MASKED, set(self._packages))
        if msg.site in self._survivors:
            raise ProtocolViolation(
                f"site {msg.site!r} already sent its masked input this round (replay)"
            )
        if len(msg.vector) != 4 * self.length:
            raise ProtocolViolation(
                f"site {msg.site!r} sent a masked vector of {len(msg.vector)} bytes, expected {4 * self.length}"
            )
        np.add(self._sum, np.frombuffer(msg.vector, dtype="<u4"), out=self._sum)
        self._survivors.append(msg.site)

    def close_masked(self) -> UnmaskRequest:
        """The survivor set, without signatures: each survivor is asked to sign it."""
        if self.phase is not Phase.MASKED:
            raise ProtocolViolation(
                f"cannot close masked input during the {self.phase.value} phase"
            )
        self._need(len(self._survivors), "sent masked inputs")
        self.phase = Phase.CONSISTENCY
        return UnmaskRequest(self.ctx, tuple(sorted(self._survivors)))

    # 4. consistency check
    def receive_signature(self, authenticated: str, msg: ConsistencySignature) -> None:
        """A survivor's signature over the survivor set; an honest server relays only valid ones."""
        roster = self._roster()
        self._check(authenticated, msg.site, msg.ctx, Phase.CONSISTENCY, set(self._survivors))
        if msg.site in self._signatures:
            raise ProtocolViolation(
                f"site {msg.site!r} already signed the survivor list this round (replay)"
            )
        if not consistency.valid(
            roster.by_site[msg.site].sign_key, self.ctx, msg.site, self._survivors, msg.signature
        ):
            raise ProtocolViolation(
                f"site {msg.site!r}: the signature does not verify over this round's survivor list"
            )
        self._signatures[msg.site] = msg.signature

    def close_consistency(self) -> UnmaskRequest:
        """The survivor set with every signature, for the signers to check before unmasking."""
        if self.phase is not Phase.CONSISTENCY:
            raise ProtocolViolation(
                f"cannot close the consistency check during the {self.phase.value} phase"
            )
        self._need(len(self._signatures), "signed the survivor list")
        self.phase = Phase.UNMASK
        return UnmaskRequest(
            self.ctx, tuple(sorted(self._survivors)), dict(sorted(self._signatures.items()))
        )

    # 5. unmask
    def receive_unmask(self, authenticated: str, reply: UnmaskReply) -> None:
        roster = self._roster()
        self._check(authenticated, reply.site, reply.ctx, Phase.UNMASK, set(self._signatures))
        if reply.site in self._replies:
            raise ProtocolViolation(
                f"site {reply.site!r} already answered the unmask request (replay)"
            )
        survivors = set(self._survivors)
        dropped = set(self._packages) - survivors
        if set(reply.seed_shares) - survivors or set(reply.key_shares) - dropped:
            raise ProtocolViolation(
                f"site {reply.site!r} revealed shares for the wrong sites (seed shares are for survivors, key shares for dropped sites)"
            )
        index = roster.by_site[reply.site].index
        for owner, blob in [*reply.seed_shares.items(), *reply.key_shares.items()]:
            if reply.site not in roster.holders(owner):
                raise ProtocolViolation(f"site {reply.site!r} does not hold shares of {owner!r}")
            try:
                share = shamir.Share.decode(blob)
            except ValueError as exc:
                raise ProtocolViolation(
                    f"site {reply.site!r}: malformed share of {owner!r}: {exc}"
                ) from None
            if share.x != index:
                raise ProtocolViolation(
                    f"site {reply.site!r} revealed a share that is not its own (index {share.x})"
                )
        self._replies[reply.site] = reply

    def finish(self) -> SecureResult:
        """Reconstruct, remove every mask, dequantise; exactly once. Fails closed."""
        if self.phase is not Phase.UNMASK:
            raise ProtocolViolation(f"cannot unmask during the {self.phase.value} phase")
        roster = self._roster()
        survivors = sorted(self._survivors)
        dropped = sorted(set(self._packages) - set(survivors))
        total = self._sum.copy()
        scratch = np.empty_like(total)
        for u in survivors:
            seed = self._reconstruct(u, "seed_shares")
            if seed_commitment(self.ctx, u, seed) != roster.by_site[u].seed_commit:
                raise ProtocolViolation(
                    f"the reconstructed self-mask seed of {u!r} does not match its commitment"
                )
            apply_mask(total, seed, subtract=True, scratch=scratch)
        for v in dropped:
            secret = private_from_bytes(self._reconstruct(v, "key_shares"))
            if public_bytes(secret) != roster.by_site[v].mask_key:
                raise ProtocolViolation(
                    f"the reconstructed mask key of {v!r} does not match its public key"
                )
            for u in sorted(roster.graph[v] & set(survivors)):
                peer = public_from_bytes(roster.by_site[u].mask_key, site=u)
                # u added +mask if u < v, else -mask: remove exactly what u added.
                apply_mask(
                    total, mask_seed(self.ctx, secret, v, peer, u), subtract=u < v, scratch=scratch
                )
        try:
            weights, weight = dequantise(total, self.reference, self.spec)
        except ValueError as exc:
            raise ProtocolViolation(f"the unmasked sum is not valid: {exc}") from None
        self.phase = Phase.DONE
        self._sum[:] = 0
        return SecureResult(
            weights,
            weight,
            tuple(survivors),
            tuple(dropped),
            self.spec.error_bound(len(survivors), weight),
        )

    # driving the phases (the platform: close when nobody is pending or the deadline passed)
    def pending(self) -> list[str]:
        """Sites the current phase still waits for (empty when it may close early)."""
        if self.phase is Phase.ADVERTISE:
            waiting = set(self.sites) - set(self._adverts)
        elif self.phase is Phase.SHARE:
            waiting = set(self._roster().by_site) - set(self._packages)
        elif self.phase is Phase.MASKED:
            waiting = set(self._packages) - set(self._survivors)
        elif self.phase is Phase.CONSISTENCY:
            waiting = set(self._survivors) - set(self._signatures)
        elif self.phase is Phase.UNMASK:
            waiting = set(self._signatures) - set(self._replies)
        else:
            waiting = set()
        return sorted(waiting)

    def close_phase(self) -> Roster | dict[str, dict[str, bytes]] | UnmaskRequest | SecureResult:
        """Close whichever phase is open (at its deadline, or once ``pending()`` is empty);
        the sites still pending count as dropped. Raises ``BelowThreshold`` to fail closed."""
        if self.phase is Phase.ADVERTISE:
            return self.close_advertise()
        if self.phase is Phase.SHARE:
            return self.close_shares()
        if self.phase is Phase.MASKED:
            return self.close_masked()
        if self.phase is Phase.CONSISTENCY:
            return self.close_consistency()
        return self.finish()

    # state, for a server that restarts mid-round (holds no secret: shares are encrypted
    # for their holders; revealed shares are what the server is meant to see)
    def export_state(self) -> dict[str, Any]:
        """Everything needed to resume this session, as JSON (the reference model apart)."""
        return {
            "ctx": wire.encode_ctx(self.ctx),
            "sites": self.sites,
            "threshold": self.threshold,
            "degree": self.degree,
            "clip": self.spec.clip,
            "max_weight": self.spec.max_weight,
            "phase": self.phase.value,
            "roster": None if self.roster is None else wire.encode(self.roster),
            "adverts": [wire.encode(m) for m in self._adverts.values()],
            "packages": [wire.encode(m) for m in self._packages.values()],
            "sum": wire.b64(self._sum.astype("<u4").tobytes()),
            "survivors": list(self._survivors),
            "signatures": {k: wire.b64(v) for k, v in self._signatures.items()},
            "replies": [wire.encode(m) for m in self._replies.values()],
        }

    @classmethod
    def restore(cls, state: dict[str, Any], reference: Weights) -> AggregationSession:
        """The session ``export_state`` saved; ``reference``: the round's global model."""
        session = cls(
            wire.decode_ctx(state["ctx"]),
            sites=list(state["sites"]),
            reference=reference,
            threshold=state["threshold"],
            clip=state["clip"],
            max_weight=state["max_weight"],
            degree=state["degree"],
        )
        session.phase = Phase(state["phase"])
        if state["roster"] is not None:
            roster = wire.decode(state["roster"])
            assert isinstance(roster, Roster)
            session.roster = roster
        for data in state["adverts"]:
            advert = wire.decode(data)
            assert isinstance(advert, Advertise)
            session._adverts[advert.site] = advert
        for data in state["packages"]:
            pkg = wire.decode(data)
            assert isinstance(pkg, SharePackage)
            session._packages[pkg.site] = pkg
        total = wire.unb64(state["sum"], "sum")
        if len(total) != 4 * session.length:
            raise ProtocolViolation("saved state: the running sum does not fit this model")
        session._sum = np.frombuffer(total, dtype="<u4").astype(np.uint32)
        session._survivors = list(state["survivors"])
        session._signatures = wire.bytes_map(state["signatures"], "signatures")
        for data in state["replies"]:
            reply = wire.decode(data)
            assert isinstance(reply, UnmaskReply)
            session._replies[reply.site] = reply
        return session

    # helpers
    def _roster(self) -> Roster:
        if self.roster is None:
            raise ProtocolViolation("the roster is not fixed yet (advertising is still open)")
        return self.roster

    def _need(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise BelowThreshold(
                f"only {count} sites {what}, fewer than the threshold {self.threshold}: "
                "the round fails closed and the previous global model stays"
            )

    def _reconstruct(self, owner: str, kind: str) -> bytes:
        shares = sorted(
            shamir.Share.decode(getattr(r, kind)[owner])
            for r in self._replies.values()
            if owner in getattr(r, kind)
        )
        if len(shares) < self.threshold:
            raise BelowThreshold(
                f"only {len(shares)} shares of {owner!r} were revealed, fewer than the threshold "
                f"{self.threshold}: the round fails closed and the previous global model stays"
            )
        try:
            # t shares determine the secret; the lowest-indexed t make the same holder set
            # for most owners, so the Lagrange coefficients are computed once per round.
            return shamir.combine(shares[: self.threshold], 32)
        except ValueError:
            raise ProtocolViolation(
                f"the shares of {owner!r} do not combine (a share was altered)"
            ) from None

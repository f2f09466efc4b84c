"""The whole protocol in one process: what ``simulate --secure-aggregation`` and the
benchmarks run. Each site gets its own ``SiteSession``; the server only sees the messages.

Dropouts are simulated at the costliest point: after a site has shared its keys and before
its masked input, so the server must reconstruct its mask key and remove its pairwise masks.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from fedhealth.ml.types import Update, Weights

from .client import SiteSession
from .keys import RoundContext
from .server import AggregationSession, SecureResult


def secure_round(
    ctx: RoundContext,
    updates: Sequence[Update],
    reference: Weights,
    *,
    threshold: int,
    drop_after_sharing: Collection[str] = (),
    clip: float = 8.0,
    max_weight: int = 1 << 20,
    degree: int | None = None,
) -> SecureResult:
    """Run the five stages (with the consistency check) for ``updates`` (one per site,
    ``Update.site`` its id).

    Sites in ``drop_after_sharing`` share keys and then vanish. Raises ``BelowThreshold``
    (fail closed) when too few remain, ``ProtocolViolation`` on a broken message.
    """
    sites = [u.site for u in updates]
    server = AggregationSession(
        ctx,
        sites=sites,
        reference=reference,
        threshold=threshold,
        clip=clip,
        max_weight=max_weight,
        degree=degree,
    )
    sessions = {s: SiteSession(ctx, s) for s in sites}
    for s, session in sessions.items():
        server.receive_advertise(s, session.advertise())
    roster = server.close_advertise()
    for s, session in sessions.items():
        server.receive_shares(s, session.share_keys(roster))
    inbox = server.close_shares()
    alive = [u for u in updates if u.site not in set(drop_after_sharing)]
    for u in alive:
        server.receive_masked(
            u.site,
            sessions[u.site].masked_input(inbox[u.site], u.weights, u.num_samples, reference),
        )
    told = server.close_masked()
    for s in told.survivors:
        server.receive_signature(s, sessions[s].sign(told))
    request = server.close_consistency()
    for s in request.survivors:
        server.receive_unmask(s, sessions[s].unmask(request))
    return server.finish()

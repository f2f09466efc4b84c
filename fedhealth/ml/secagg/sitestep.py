"""The site side of a secure round as one restartable step: what hosted workers and agents call.

``site_step(state, task, ...)`` takes the site's saved state (``None`` before the round),
the server's task for the current phase, and for the masked phase the site's trained update;
it returns the new state and the message to post. The caller **saves the state before
posting** (in site-private storage: it holds the site's private keys and seed).

Restart rule: a step already taken is never computed again. Asked again for a phase it has
done (a worker killed after saving, before or after posting), the step returns the message it
saved, byte for byte. Computing it again would be unsafe: a second masked vector of a
different update under the same masks would show the server the difference of the two.
The server refuses the resent copy as a replay if the first arrived; either way it counts once.

Consistency rule (Bonawitz et al. 2017, section 4): a site answers one task per phase. The
same task again gets the saved message; a *different* task for a phase already answered is
refused (``ProtocolViolation``, code ``secagg_inconsistent``). This is what stops a server
from asking a survivor first for a site's self-mask share (listing it as a survivor) and
then for its mask-key share (listing it as dropped): with both, that site's update is
unmasked.

Tasks (JSON, from the server):
``{"phase": "advertise", "ctx": {...}}``, ``{"phase": "share", "roster": {...}}``,
``{"phase": "masked", "ctx": {...}, "inbox": {sender: base64}}``,
``{"phase": "consistency", "request": {...}}`` (the survivor list to sign),
``{"phase": "unmask", "request": {...}}`` (the same list with every signature: the site
reveals shares only if t of them verify over the list it signed, ``consistency``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedhealth.ml.types import Weights

from . import wire
from .client import SiteSession
from .errors import ProtocolViolation
from .messages import Roster, UnmaskRequest

PHASES = ("advertise", "share", "masked", "consistency", "unmask")


def site_step(
    state: dict[str, Any] | None,
    task: dict[str, Any],
    *,
    site: str,
    weights: Weights | None = None,
    num_samples: int = 0,
    reference: Weights | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(new state, message to post)`` for ``task``; see the module docstring.

    ``weights``/``num_samples``/``reference`` (the round's global model) are needed for
    the masked phase only. ProtocolViolation on a task out of order or for another round.
    """
    phase = task.get("phase") if isinstance(task, dict) else None
    if phase not in PHASES:
        raise ProtocolViolation(
            f"field 'phase': expected one of {list(PHASES)}, got {phase!r}", code="secagg_malformed"
        )
    done: dict[str, Any] = {} if state is None else dict(state.get("outbox", {}))
    asked: dict[str, Any] = {} if state is None else dict(state.get("asked", {}))
    if phase in done:  # taken before a restart: the same bytes again, never a new computation
        assert state is not None
        if phase in asked and asked[phase]["digest"] != _digest(task):
            raise _inconsistent(site, phase, asked[phase], task)
        return state, done[phase]
    if phase == "advertise":
        if state is not None:
            raise ProtocolViolation(f"site {site!r}: a round's keys are advertised once")
        session = SiteSession(wire.decode_ctx(task.get("ctx")), site)
        message = wire.encode(session.advertise())
    else:
        if state is None:
            raise ProtocolViolation(f"site {site!r}: the {phase} phase before advertising keys")
        session = SiteSession.restore(state["session"])
        if phase == "share":
            roster = wire.decode(task.get("roster"))
            if not isinstance(roster, Roster):
                raise ProtocolViolation("field 'roster': not a roster", code="secagg_malformed")
            message = wire.encode(session.share_keys(roster))
        elif phase == "masked":
            if weights is None or reference is None:
                raise ValueError(
                    "the masked phase needs the site's weights, num_samples and the global model"
                )
            ctx = wire.decode_ctx(task.get("ctx"))
            if ctx != session.ctx:
                raise ProtocolViolation(
                    f"site {site!r}: a masked-input task for round {ctx.round} of {ctx.session!r}"
                )
            inbox = wire.bytes_map(task.get("inbox"), "inbox")
            message = wire.encode(session.masked_input(inbox, weights, num_samples, reference))
        else:
            request = wire.decode(task.get("request"))
            if not isinstance(request, UnmaskRequest):
                raise ProtocolViolation(
                    "field 'request': not an unmask request", code="secagg_malformed"
                )
            step = session.sign if phase == "consistency" else session.unmask
            message = wire.encode(step(request))
    done[phase] = message
    asked[phase] = {"digest": _digest(task)}
    if phase == "unmask":
        asked[phase]["survivors"] = sorted(task["request"]["survivors"])
    return {"session": session.export_state(), "outbox": done, "asked": asked}, message


def protocol_range(state: dict[str, Any] | None) -> tuple[int, float] | None:
    """``(threshold, per-coordinate clip)`` of the roster this site shared its secrets
    under, from its saved state (None before the share phase): what the site itself knows
    of the round's protocol, whatever a later task says."""
    roster = None if state is None else state.get("session", {}).get("roster")
    if roster is None:
        return None
    decoded = wire.decode(roster)
    assert isinstance(decoded, Roster)
    return decoded.threshold, float(decoded.spec.clip)


def _digest(task: dict[str, Any]) -> str:
    """SHA-256 of a task's canonical JSON: the same task asked again has the same digest."""
    return hashlib.sha256(
        json.dumps(task, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _inconsistent(
    site: str, phase: str, answered: dict[str, Any], task: dict[str, Any]
) -> ProtocolViolation:
    if phase == "unmask" and "survivors" in answered:
        request = task.get("request")
        now = request.get("survivors") if isinstance(request, dict) else None
        before = set(answered["survivors"])
        now_set = set(now) if isinstance(now, list) else set()
        moved = sorted(before ^ now_set, key=str)
        return ProtocolViolation(
            f"site {site!r} already revealed shares for survivors {sorted(before)}; a second "
            f"unmask request that lists {moved} differently is refused: answering it could "
            "reveal both a site's self-mask share and its mask-key share",
            code="secagg_inconsistent",
        )
    return ProtocolViolation(
        f"site {site!r} already answered a different {phase} task this round; it answers "
        "one task per phase",
        code="secagg_inconsistent",
    )

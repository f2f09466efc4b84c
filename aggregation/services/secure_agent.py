"""A secure round for agent sites: the same protocol as hosted sites, over the agent API.

An agent trains as in a plain round but never uploads its weights: it reports that it
trained (``report_trained``: sample count, loss, local metrics) and keeps the update in its
own state folder. When the round closes, ``secure_round.start`` opens the protocol for every
site that trained, hosted or agent alike. An agent polls its task for the open phase
(``task_for``: the roster, the ciphertexts addressed to it, the unmask request), takes the
step with the core's ``site_step`` on its own machine, and posts the message (``post_for``),
which goes through the same ``secure_round.post`` the hosted sites' steps use: one row
lock, one count per message, the same deadlines and the same fail-closed rule.

What the server ever receives from an agent in a secure experiment: public keys and a seed
commitment, shares encrypted for other sites, a masked vector (uniformly random on its own)
and the shares it reveals at the unmasking. Never its update in the clear.
"""

from __future__ import annotations

from typing import Any

from clients.models import Site
from fedhealth.ml.secagg import ProtocolViolation
from fedhealth.ml.types import Metrics

from ..models import ClientUpdate, Round, SecureRound, SecureSite
from ..reasons import Reason
from . import site_dp
from .rounds import OPEN_UPDATE, UpdateRefused, _check_sample_count
from .secure_round import TERMINAL, _site_task, mark_kept, post

# Which message kind each agent endpoint takes (one endpoint per protocol step).
KINDS = {
    "advertise": "advertise",
    "shares": "shares",
    "masked": "masked",
    "consistency": "signature",
    "unmask": "unmask_reply",
}


class NotInProtocol(Exception):
    """The site has no part in this round's protocol (not selected, or it did not train)."""


def report_trained(
    update: ClientUpdate, *, num_samples: int, loss: float | None, metrics: Metrics
) -> bool:
    """An agent trained its update for a secure round and keeps it. True when it counted,
    False when it had already (a retried request). UpdateRefused otherwise."""
    round_ = update.round
    if not round_.experiment.secure_aggregation:
        raise UpdateRefused(
            "this experiment does not use secure aggregation: upload the weights to "
            f"/agent/rounds/{round_.pk}/update/",
            code=Reason.UPDATE_INVALID,
        )
    if update.status == ClientUpdate.Status.RECEIVED:
        return False
    if update.status not in OPEN_UPDATE or round_.status != Round.Status.OPEN:
        raise UpdateRefused(
            f"round {round_.number} is {round_.status} and this site's update is {update.status}"
        )
    _check_sample_count(update, num_samples)
    if not mark_kept(
        update.pk, num_samples=num_samples, loss=loss, metrics=metrics, source="agent"
    ):
        update.refresh_from_db()
        if update.status != ClientUpdate.Status.RECEIVED:
            raise UpdateRefused(f"round {round_.number} closed before this site's report arrived")
        return False
    return True


def _place(round_: Round, site: Site) -> tuple[SecureRound, SecureSite]:
    secure = SecureRound.objects.filter(round=round_).first()
    place = (
        None
        if secure is None
        else SecureSite.objects.filter(secure_round=secure, site=site).first()
    )
    if place is None:
        raise NotInProtocol(
            f"site {site.slug} has no part in the secure protocol of round {round_.number}"
            + (
                " (it has not opened: the round is still training, or failed before it)"
                if secure is None
                else " (only the sites that trained take part)"
            )
        )
    return secure, place


def task_for(round_: Round, site: Site) -> dict[str, Any]:
    """What ``site`` is asked to do now: the open phase, its deadline and the site's task
    (None when it owes nothing: counted already, dropped, not addressed, or the round over).
    Phase "training" before the protocol opens; "over" when it will never include this
    site (the round ended first, or the site did not train): the agent forgets the round."""
    try:
        secure, place = _place(round_, site)
    except NotInProtocol:
        waiting = (
            round_.status == Round.Status.OPEN
            and not SecureRound.objects.filter(round=round_).exists()
        )
        return {
            "round": round_.pk,
            "phase": "training" if waiting else "over",
            "deadline": None,
            "threshold": None,
            "status": "",
            "last_phase": "",
            "dropped_in": "",
            "protocol_id": "",
            "task": None,
        }
    task = None
    if (
        secure.phase not in TERMINAL
        and round_.status == Round.Status.AGGREGATING
        and place.status == SecureSite.Status.ACTIVE
        and place.last_phase != secure.phase
    ):
        task = _site_task(secure, place.protocol_id)
        if task is not None and task["phase"] == "masked":
            # Site-level DP: the noise share the agent is asked to add (it checks it).
            request = site_dp.share_request(round_, secure.threshold)
            if request is not None:
                task["site_dp"] = request
    return {
        "round": round_.pk,
        "phase": secure.phase,
        "deadline": secure.phase_deadline,
        "threshold": secure.threshold,
        "status": place.status,
        "last_phase": place.last_phase,
        "dropped_in": place.dropped_in,
        # this site's own name in the round's protocol (others appear by theirs only)
        "protocol_id": place.protocol_id,
        "task": task,
    }


def post_for(round_: Round, site: Site, kind: str, message: Any) -> str:
    """Take ``site``'s message for the step ``kind`` ("advertise", "shares", "masked",
    "consistency", "unmask"). Returns "posted", or "replay" for a message already counted.
    ProtocolViolation (the sender's fault, a 400) names the field, site, stage or value;
    NotInProtocol and PhaseClosed are the round's state (409)."""
    expected = KINDS[kind]
    got = message.get("kind") if isinstance(message, dict) else None
    if got != expected:
        raise ProtocolViolation(
            f"field 'kind': this endpoint takes {expected!r} messages, got {got!r}",
            code="secagg_malformed",
        )
    secure, place = _place(round_, site)
    if secure.phase in TERMINAL or round_.status != Round.Status.AGGREGATING:
        raise PhaseClosed(
            f"the secure protocol of round {round_.number} is over ({secure.get_phase_display()})"
        )
    if place.status == SecureSite.Status.DROPPED and place.last_phase != _phase_of(kind):
        raise PhaseClosed(
            f"site {site.slug} was counted as dropped in the {place.dropped_in} phase of round {round_.number}"
        )
    outcome = post(round_.pk, site.slug, message)
    if outcome == "late":
        raise PhaseClosed(
            f"the {_phase_of(kind)} phase of round {round_.number} is not open "
            f"(the round is in the {SecureRound.objects.get(pk=secure.pk).phase} phase)"
        )
    return outcome


class PhaseClosed(Exception):
    """A message for a phase that is not open (closed at its deadline, or not yet open)."""


def _phase_of(kind: str) -> str:
    return {
        "advertise": "advertise",
        "shares": "share",
        "masked": "masked",
        "consistency": "consistency",
        "unmask": "unmask",
    }[kind]

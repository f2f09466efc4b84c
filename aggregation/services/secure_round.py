"""A secure round for hosted sites: the protocol's phases in the database, the site side on
each site's queue, the server a relay that unmasks the sum exactly once.

Flow (docs/secure-aggregation.md): a secure experiment's hosted site trains as today, but
keeps its update in its own private storage (``keep_at_site``); the round closes as today
and, instead of aggregating, ``start`` opens the protocol for the sites that trained. Each
phase is one ``secure_site_step`` task per site on the site's queue (``run_site_phase``):
it restores the site's protocol state from the site's private storage, takes the step
(``fedhealth.ml.secagg.sitestep``), saves the new state *before* posting, then ``post``s
the message. ``post`` feeds it to the server's session under the ``SecureRound`` row lock;
when nobody is pending, or at the phase's deadline (``advance``, from the aggregation task
the sweeper re-sends), the phase closes under the same lock, the sites still pending count
as dropped, and the next phase's tasks are sent on commit. The last close unmasks and
publishes the version in the same transaction: a retried or duplicated task finds the
phase moved on and does nothing. Below the threshold the round fails closed.

Site-private storage: ``datasets/<site>/secagg/`` (next to the site's CSVs; see
docs/architecture.md). Nothing the server's tables, pages or API read holds a site's
secret or its update in the clear: ``SecureRound.state`` is the relay's state (public
keys, encrypted shares, the running masked sum, revealed shares).
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from clients.models import Site
from fedhealth.files import read_bytes, write_bytes
from fedhealth.ml.secagg import (
    AggregationSession,
    BelowThreshold,
    ProtocolViolation,
    RoundContext,
    wire,
)
from fedhealth.ml.secagg.federated import AGGREGATE_SITE
from fedhealth.ml.secagg.messages import (
    Advertise,
    ConsistencySignature,
    MaskedInput,
    SharePackage,
    UnmaskReply,
)
from fedhealth.ml.secagg.server import SecureResult, default_threshold
from fedhealth.ml.secagg.sitestep import site_step
from fedhealth.ml.strategies.checks import update_problem
from fedhealth.ml.types import Metrics, Update, Weights
from fedhealth.ml.weights_io import weights_from_bytes, weights_to_bytes

from .. import dispatch
from ..models import ClientUpdate, Experiment, ModelVersion, Round, SecureRound, SecureSite
from ..reasons import Reason
from ..reasons import text as reason_text
from . import artifacts, site_dp
from .rounds import (
    OPEN_UPDATE,
    UpdateRefused,
    _check_sample_count,
    _load_strategy,
    fail_aggregation,
    maybe_close_round,
    publish_aggregate,
    reason_for,
    reference_weights,
    sample_limit,
)

log = logging.getLogger(__name__)

Phase = SecureRound.Phase
TERMINAL = (Phase.DONE, Phase.FAILED)
_MESSAGE_PHASE = {Advertise: Phase.ADVERTISE, SharePackage: Phase.SHARE, MaskedInput: Phase.MASKED,
                  ConsistencySignature: Phase.CONSISTENCY, UnmaskReply: Phase.UNMASK}
ORDER = [p.value for p in (Phase.ADVERTISE, Phase.SHARE, Phase.MASKED, Phase.CONSISTENCY, Phase.UNMASK)]


def session_id(experiment_id: int) -> str:
    return f"fedhealth-experiment-{experiment_id}"


def is_secure(round_id: int) -> bool:
    return Round.objects.filter(pk=round_id, experiment__secure_aggregation=True).exists()


# -- the site's private storage ----------------------------------------------------------

def _site_prefix(site: Site, round_: Round) -> str:
    return f"datasets/{site.slug}/secagg/e{round_.experiment_id}-r{round_.number}"


def _state_name(site: Site, round_: Round) -> str:
    return f"{_site_prefix(site, round_)}-state.json"


def _update_name(site: Site, round_: Round) -> str:
    return f"{_site_prefix(site, round_)}-update.safetensors"


def _read_json(name: str) -> dict[str, Any] | None:
    if not default_storage.exists(name):
        return None
    return json.loads(read_bytes(name))


def forget_at_site(site: Site, round_: Round) -> None:
    """A finished round's secrets and update are of no further use: the site deletes them."""
    for name in (_state_name(site, round_), _update_name(site, round_)):
        if default_storage.exists(name):
            default_storage.delete(name)


def keep_at_site(update_id: int, weights: Weights, *, num_samples: int, loss: float | None, metrics: Metrics) -> None:
    """A hosted site's trained update in a secure experiment: checked here (the server can
    no longer check one update), kept in the site's private storage for the masked phase,
    and only its figures reported. UpdateRefused as ``submit_update`` would refuse it."""
    update = ClientUpdate.objects.select_related("round__experiment", "site").get(pk=update_id)
    _check_sample_count(update, num_samples)
    problem = update_problem(Update(weights, num_samples, update.site.slug), reference_weights(update.round.experiment))
    if problem:
        raise UpdateRefused(f"update rejected: {problem.reason}", code=reason_for(problem.code), bad_input=True)
    write_bytes(_update_name(update.site, update.round), weights_to_bytes(weights))
    write_bytes(_state_name(update.site, update.round), json.dumps({"num_samples": num_samples, "protocol": None}).encode())
    mark_kept(update_id, num_samples=num_samples, loss=loss, metrics=metrics, source="hosted")


def mark_kept(update_id: int, *, num_samples: int, loss: float | None, metrics: Metrics, source: str) -> bool:
    """The site trained and keeps its update for the protocol: its figures count, its
    weights stay at the site (hosted storage or the agent's folder). False if the update
    was no longer open (a replay or a closed round)."""
    changed = ClientUpdate.objects.filter(pk=update_id, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN).update(
        status=ClientUpdate.Status.RECEIVED, num_samples=num_samples, loss=loss, metrics=metrics,
        source=source, received_at=timezone.now(), error="",
    )
    if changed:
        maybe_close_round(ClientUpdate.objects.values_list("round_id", flat=True).get(pk=update_id))
    return bool(changed)


# -- opening the protocol -------------------------------------------------------------------

def _deadline(round_: Round) -> Any:
    return timezone.now() + timedelta(seconds=round_.experiment.round_timeout)


def start(round_: Round, sites: list[Site]) -> SecureRound | None:
    """Open the protocol for the sites that trained (inside the round's closing transaction).
    Too few sites for the threshold: the round fails closed at once."""
    experiment = round_.experiment
    n = len(sites)
    threshold = experiment.secagg_threshold or default_threshold(n)
    if n < max(2, threshold):
        fail_aggregation(round_.pk, Reason.SECAGG_THRESHOLD, f"({n} sites trained, the threshold is {threshold}.)")
        return None
    # The selected sites' threshold can be below a majority of the fewer sites that trained.
    threshold = max(threshold, default_threshold(n))
    max_weight = max(sample_limit(experiment.pk, s.pk) for s in sites)
    ids = pseudonyms(len(sites))
    # Site-level DP: weight 1 per site and a range wide enough for the noise (site_dp).
    spec = {"max_weight": max(1, max_weight)} | site_dp.secure_spec(round_, threshold)
    session = AggregationSession(
        RoundContext(session_id(experiment.pk), round_.number), sites=ids,
        reference=reference_weights(experiment), threshold=threshold, **spec,
    )
    secure = SecureRound.objects.create(
        round=round_, phase=Phase.ADVERTISE, phase_deadline=_deadline(round_), threshold=threshold,
        state=session.export_state(), task={"ctx": wire.encode_ctx(session.ctx)},
    )
    SecureSite.objects.bulk_create(
        [SecureSite(secure_round=secure, site=s, protocol_id=i) for s, i in zip(sites, ids, strict=True)]
    )
    transaction.on_commit(lambda: dispatch.queue_secure_phase(round_.pk))
    return secure


def pseudonyms(n: int) -> list[str]:
    """``n`` distinct protocol ids for one round: 64 random bits each (``secrets``), drawn
    afresh every round, so an id says nothing about the site (not its slug, pk or position)
    and links nothing across rounds. The roster is sorted by id, so its order is random too."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(f"p{secrets.token_hex(8)}")
    return sorted(ids)


# -- the site side (on the site's queue) ----------------------------------------------------

def _site_task(secure: SecureRound, protocol_id: str) -> dict[str, Any] | None:
    """The server's task for the site named ``protocol_id`` in this round's protocol, in the
    open phase, or None if it has no part in it. Sites appear in it by protocol id only."""
    task = secure.task
    if secure.phase == Phase.ADVERTISE:
        return {"phase": "advertise", "ctx": task["ctx"]}
    if secure.phase == Phase.SHARE:
        return {"phase": "share", "roster": task["roster"]}
    if secure.phase == Phase.MASKED:
        inbox = task["inbox"].get(protocol_id)
        return None if inbox is None else {"phase": "masked", "ctx": task["ctx"], "inbox": inbox}
    if secure.phase == Phase.CONSISTENCY:
        return {"phase": "consistency", "request": task["request"]}
    return {"phase": "unmask", "request": task["request"]}


def run_site_phase(round_id: int, site_id: int) -> str:
    """One hosted site's step of the open phase (safe to run twice: a step taken before a
    restart resends its saved message byte for byte, and the server counts it once)."""
    secure = SecureRound.objects.select_related("round__experiment").get(round_id=round_id)
    site = Site.objects.get(pk=site_id)
    round_ = secure.round
    if secure.phase in TERMINAL or round_.status != Round.Status.AGGREGATING:  # done, failed or cancelled
        forget_at_site(site, round_)
        return "forgotten: round over"
    place = SecureSite.objects.get(secure_round=secure, site=site)
    if place.status == SecureSite.Status.DROPPED:
        return "skipped: dropped"
    if place.last_phase == secure.phase:
        return "skipped: already counted"
    task = _site_task(secure, place.protocol_id)
    if task is None:
        return "skipped: no part in this phase"
    saved = _read_json(_state_name(site, round_))
    if saved is None:
        raise ProtocolViolation(f"site {site.slug!r} has no saved state for this secure round")
    extra: dict[str, Any] = {}
    if task["phase"] == "masked":
        extra = {
            "weights": weights_from_bytes(read_bytes(_update_name(site, round_))),
            "num_samples": saved["num_samples"],
            "reference": artifacts.global_weights_for(round_)[0],
        }
        # Site-level DP: the site clips its change and adds its noise share before masking.
        extra = site_dp.noised_input(round_, secure.threshold, extra)
    state, message = site_step(saved["protocol"], task, site=place.protocol_id, **extra)
    # Saved before posting: a worker killed in between resends the same bytes.
    write_bytes(_state_name(site, round_), json.dumps({**saved, "protocol": state}).encode())
    return post(round_id, site.slug, message)


# -- the server side ------------------------------------------------------------------------

def post(round_id: int, slug: str, message: dict[str, Any]) -> str:
    """Take one site's message for the open phase (``slug``: the authenticated sender, whose
    protocol id in this round the session checks the message against).
    A message already counted is harmless ("replay"); one for a phase that has closed is
    refused ("late"). ProtocolViolation for anything else the session refuses."""
    decoded = wire.decode(message)
    phase = _MESSAGE_PHASE[type(decoded)]
    reference = None
    if phase == Phase.UNMASK:  # the unmasking adds the mean change to the global model
        reference = artifacts.global_weights_for(Round.objects.select_related("experiment").get(pk=round_id))[0]
    with transaction.atomic():
        secure = SecureRound.objects.select_for_update().select_related("round__experiment").get(round_id=round_id)
        place = SecureSite.objects.select_for_update().get(secure_round=secure, site__slug=slug)
        if place.last_phase == phase or (place.last_phase and _after(place.last_phase, phase)):
            return "replay"
        if secure.phase != phase:
            return "late"
        session = _session(secure, reference)
        receive = {Phase.ADVERTISE: session.receive_advertise, Phase.SHARE: session.receive_shares,
                   Phase.MASKED: session.receive_masked, Phase.CONSISTENCY: session.receive_signature,
                   Phase.UNMASK: session.receive_unmask}[phase]
        receive(place.protocol_id, decoded)
        place.last_phase = phase
        place.save(update_fields=["last_phase"])
        if session.pending():
            secure.state = session.export_state()
            secure.save(update_fields=["state", "updated_at"])
        else:
            _close(secure, session)
    return "posted"


def _after(done: str, phase: str) -> bool:
    return done in ORDER and phase in ORDER and ORDER.index(done) > ORDER.index(phase)


def _session(secure: SecureRound, reference: Weights | None) -> AggregationSession:
    if reference is None:  # every phase but the unmasking needs only the model's shape
        reference = reference_weights(secure.round.experiment)
    return AggregationSession.restore(secure.state, reference)


def advance(round_id: int, *, now: Any = None) -> ModelVersion | None:
    """Close the open phase if its deadline passed (the sites still pending count as
    dropped), else re-send its tasks to the sites still pending (a lost message). Called by
    the aggregation task, which the sweeper re-sends while the round aggregates."""
    now = now or timezone.now()
    round_ = Round.objects.select_related("experiment").get(pk=round_id)
    try:
        secure = round_.secure
    except SecureRound.DoesNotExist:
        return None  # never opened (failed closed at the start)
    reference = artifacts.global_weights_for(round_)[0] if secure.phase == Phase.UNMASK else None
    with transaction.atomic():
        secure = SecureRound.objects.select_for_update().select_related("round__experiment").get(round_id=round_id)
        Round.objects.filter(pk=round_id).update(aggregation_started_at=now)
        if secure.phase in TERMINAL:
            return ModelVersion.objects.filter(round_id=round_id).first()
        session = _session(secure, reference)
        if session.pending() and now < secure.phase_deadline:
            transaction.on_commit(lambda: dispatch.queue_secure_phase(round_id))
            return None
        _close(secure, session)
    return ModelVersion.objects.filter(round_id=round_id).first()


def _close(secure: SecureRound, session: AggregationSession) -> None:
    """Close the open phase, under the row lock the caller holds; exactly once per phase."""
    round_ = secure.round
    closing = secure.phase
    late = session.pending()
    if late:
        SecureSite.objects.filter(secure_round=secure, protocol_id__in=late).update(
            status=SecureSite.Status.DROPPED, dropped_in=closing)
    if closing == Phase.UNMASK:
        reference = session.reference
    try:
        out = session.close_phase()
    except BelowThreshold as exc:
        _fail_closed(secure, Reason.SECAGG_THRESHOLD, str(exc))
        return
    except ProtocolViolation as exc:
        _fail_closed(secure, Reason.SECAGG_FAILED, str(exc))
        return
    if isinstance(out, SecureResult):
        secure.phase = Phase.DONE
        secure.state, secure.task = {}, {}
        secure.save(update_fields=["phase", "state", "task", "updated_at"])
        _publish(round_, out, reference)
        transaction.on_commit(lambda: dispatch.queue_secure_phase(round_.pk))  # sites forget
        return
    ctx = wire.encode_ctx(session.ctx)
    if closing == Phase.ADVERTISE:
        secure.phase, secure.task = Phase.SHARE, {"ctx": ctx, "roster": wire.encode(out)}
    elif closing == Phase.SHARE:
        inbox = {r: {s: wire.b64(blob) for s, blob in senders.items()} for r, senders in out.items()}
        secure.phase, secure.task = Phase.MASKED, {"ctx": ctx, "inbox": inbox}
    elif closing == Phase.MASKED:  # the survivor list, for each survivor to sign
        secure.phase, secure.task = Phase.CONSISTENCY, {"ctx": ctx, "request": wire.encode(out)}
    else:  # the same list with every signature relayed
        secure.phase, secure.task = Phase.UNMASK, {"ctx": ctx, "request": wire.encode(out)}
    secure.state = session.export_state()
    secure.phase_deadline = _deadline(round_)
    secure.save(update_fields=["phase", "task", "state", "phase_deadline", "updated_at"])
    transaction.on_commit(lambda: dispatch.queue_secure_phase(round_.pk))


def _fail_closed(secure: SecureRound, code: str, why: str) -> None:
    log.warning("round %s: secure aggregation failed closed: %s", secure.round_id, why)
    secure.phase = Phase.FAILED
    secure.state, secure.task = {}, {}
    secure.save(update_fields=["phase", "state", "task", "updated_at"])
    dropped = list(SecureSite.objects.filter(secure_round=secure, status=SecureSite.Status.DROPPED)
                   .values_list("site__slug", flat=True))
    round_id = secure.round_id
    Round.objects.filter(pk=round_id, status=Round.Status.AGGREGATING).update(
        metrics={"accepted": [], "rejected": [_dropped(s) for s in dropped],
                 "secure": {"survivors": 0, "dropped": dropped, "error_bound": None}})
    fail_aggregation(round_id, code)
    transaction.on_commit(lambda: dispatch.queue_secure_phase(round_id))  # sites forget


def _dropped(slug: str) -> dict[str, str]:
    return {"site": slug, "code": Reason.SECAGG_DROPPED, "reason": reason_text(Reason.SECAGG_DROPPED)}


def _publish(round_: Round, secure: SecureResult, previous: Weights) -> ModelVersion | None:
    """The unmasked mean, through the experiment's strategy (FedAvg's mean, or a server
    optimiser's step from it), checked and stored as the next version."""
    experiment = round_.experiment
    slug = dict(SecureSite.objects.filter(secure_round__round=round_).values_list("protocol_id", "site__slug"))
    survivors, dropped = [slug[i] for i in secure.survivors], [slug[i] for i in secure.dropped]
    if len(survivors) < experiment.min_sites:
        fail_aggregation(round_.pk, Reason.QUORUM, f"{len(secure.survivors)} usable of the {experiment.min_sites} required.")
        return None
    strategy = _load_strategy(experiment)
    extra_metrics = None
    if experiment.dp_mode == Experiment.DPMode.SITE:  # a mean of noisy clipped changes, weight 1
        result, figures = site_dp.secure_result(round_, secure.weights, len(survivors), previous)
        extra_metrics = {"site_dp": figures}
    else:
        result = strategy.aggregate(previous, [Update(secure.weights, secure.total_weight, AGGREGATE_SITE)])
    result.accepted = sorted(survivors)
    result.num_samples = secure.total_weight
    rejected = [_dropped(s) for s in sorted(dropped)]
    rejected += [
        {"site": slug, "code": code or Reason.TRAINING_FAILED, "reason": reason_text(code or Reason.TRAINING_FAILED)}
        for slug, code in round_.updates.filter(status=ClientUpdate.Status.FAILED).values_list("site__slug", "error_code")
    ]
    used = list(round_.updates.filter(status=ClientUpdate.Status.RECEIVED, site__slug__in=survivors))
    if extra_metrics:  # each site's weight was 1: the rows behind the version are the reports'
        result.num_samples = sum(u.num_samples for u in used)
    version = publish_aggregate(round_, strategy, result, rejected, used, extra_metrics=extra_metrics)
    # What the page shows of the protocol: counts and the quantisation bound, no update.
    metrics = Round.objects.values_list("metrics", flat=True).get(pk=round_.pk)
    Round.objects.filter(pk=round_.pk).update(metrics={**metrics, "secure": {
        "survivors": len(survivors), "dropped": sorted(dropped), "error_bound": secure.error_bound,
    }})
    return version

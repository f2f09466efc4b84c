"""The round state machine: accepting updates, closing a round once, aggregating once.

Hosted workers and remote site agents both report through ``submit_update`` and
``fail_update``. A round closes exactly once, under its row lock, either when every
selected site has reported or at its deadline if the quorum (``min_sites``) holds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from fedhealth.files import write_bytes
from fedhealth.ml.metrics import stored_metrics
from fedhealth.ml.robust import find_outliers, update_distance
from fedhealth.ml.strategies import Rejected, get_strategy
from fedhealth.ml.strategies.checks import check_aggregate, update_problem
from fedhealth.ml.types import Metrics, Update, Weights
from fedhealth.ml.weights_io import (
    ChecksumMismatch,
    WeightsFormatError,
    sha256_hex,
    weights_to_bytes,
)

from .. import dispatch
from ..models import ClientUpdate, Experiment, ModelVersion, Participant, Round
from ..reasons import Reason, clean_note
from ..reasons import text as reason_text
from . import artifacts, consent, health
from .lifecycle import advance

log = logging.getLogger(__name__)

OPEN_UPDATE = (ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING)


class UpdateRefused(Exception):
    """An update the server will not take; the message says why (shown to the sender).

    ``code`` is one of ``aggregation.reasons.Reason``; ``bad_input`` tells the API
    whether the sender's data was wrong (400) or the round's state refuses it (409).
    """

    def __init__(self, message: str, *, code: str = Reason.UPDATE_INVALID, bad_input: bool = False):
        super().__init__(message)
        self.code = code
        self.bad_input = bad_input


@dataclass(frozen=True)
class Submission:
    update: ClientUpdate
    replayed: bool  # True when the same update had already been received


def claim_update(update_id: int, *, loaded: ClientUpdate | None = None) -> bool:
    """Mark a pending (or interrupted) update as training. False when there is nothing
    left to do: the update was already reported, its round has closed, or its site has
    no valid consent (never accepted these terms, withdrew, or withdrew its dataset):
    then the update is closed as a dropout with that reason, so no round waits for it.

    Every path that starts site work comes through here: the hosted task (first
    delivery, retry, redelivery, the sweeper's re-send) and the agent's claim.
    ``loaded``: the update with its round and experiment, when the caller read them
    already (its status is not trusted: the conditional UPDATE decides).
    """
    update = loaded or ClientUpdate.objects.select_related("round__experiment").filter(pk=update_id).first()
    if update is None:
        return False
    if not consent.has_consent(update.round.experiment, update.site_id):
        fail_update(update_id, consent.refusal_code(update.round.experiment, update.site_id))
        return False
    # The consent is checked again in the same UPDATE: a withdrawal committed since the
    # check above leaves nothing to claim.
    return bool(
        ClientUpdate.objects.filter(
            pk=update_id, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN,
        )
        .filter(Exists(Participant.objects.filter(
            experiment_id=OuterRef("round__experiment_id"), site_id=OuterRef("site_id"),
            consent=Participant.Consent.ACCEPTED, dataset__withdrawn_at__isnull=True,
        )))
        .update(status=ClientUpdate.Status.TRAINING, started_at=timezone.now(), attempts=F("attempts") + 1)
    )


def reference_weights(experiment: Experiment) -> Weights:
    from fedhealth.ml.model import weight_spec  # torch: imported on use (web processes skip it)

    return {k: np.zeros(shape, dtype=np.float32) for k, shape in weight_spec(experiment.model_config).items()}


def sample_limit(experiment_id: int, site_id: int) -> int:
    """The most training rows a site can claim in an experiment: the row count of the
    dataset it takes part with (stored for a hosted site, registered by an agent)."""
    row_count = (
        Participant.objects.filter(experiment_id=experiment_id, site_id=site_id)
        .values_list("dataset__row_count", flat=True)
        .first()
    )
    return int(row_count or 0)


def _check_sample_count(update: ClientUpdate, num_samples: int) -> None:
    # FedAvg weights each update by its sample count, so an inflated count is a
    # single site taking over the global model: never taken on faith. (That it is a
    # positive integer, update_problem has checked already.)
    limit = sample_limit(update.round.experiment_id, update.site_id)
    if num_samples > limit:
        raise UpdateRefused(
            f"update rejected: num_samples {num_samples} is more than the {limit} rows "
            "this site's dataset holds",
            code=Reason.SAMPLE_COUNT, bad_input=True,
        )


def submit_update(
    update_id: int,
    weights: Weights,
    *,
    num_samples: int,
    loss: float | None,
    metrics: Metrics,
    source: str,
    loaded: ClientUpdate | None = None,
) -> Submission:
    """Accept a site's trained weights for a round.

    Refused (``UpdateRefused``) when the round is closed, the update was already
    received with other weights, the weights do not fit the experiment's model
    (shape, dtype, NaN/Inf, implausible magnitudes), or ``num_samples`` is more than
    the site holds. Replaying the same weights is harmless. ``loaded``: the update with
    its round, experiment and site when the caller read them already (a stale status
    is harmless: the conditional UPDATE below decides, and a refusal re-reads the row).
    """
    update = loaded or ClientUpdate.objects.select_related("round__experiment", "site").get(pk=update_id)
    experiment = update.round.experiment
    if experiment.secure_aggregation:  # never in the clear: the site sends it masked, in the protocol
        raise UpdateRefused(
            "this experiment uses secure aggregation: a site's update is sent only masked, "
            "through the protocol's steps, never in the clear", code=Reason.UPDATE_INVALID,
        )
    problem = update_problem(Update(weights, num_samples, update.site.slug), reference_weights(experiment))
    if problem:
        raise UpdateRefused(f"update rejected: {problem.reason}", code=reason_for(problem.code), bad_input=True)
    _check_sample_count(update, num_samples)
    # The file goes first, outside any transaction: its name carries the checksum, so a
    # retry rewrites identical bytes and an unclaimed file is merely garbage.
    data = weights_to_bytes(weights)
    sha = sha256_hex(data)
    if update.status == ClientUpdate.Status.RECEIVED:
        if update.sha256 == sha:
            return Submission(update, replayed=True)
        raise UpdateRefused("this site already reported a different update for this round")
    name = artifacts.update_name(update, sha)
    write_bytes(name, data)
    received = {
        "status": ClientUpdate.Status.RECEIVED, "weights_file": name, "sha256": sha,
        # An undefined metric (NaN) is stored as null, never as 0 or NaN.
        "num_samples": num_samples, "loss": loss, "metrics": stored_metrics(metrics), "source": source,
        "received_at": timezone.now(), "error": "",
    }
    with transaction.atomic():
        changed = ClientUpdate.objects.filter(
            pk=update_id, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN
        ).update(**received)
    if not changed:
        update.refresh_from_db()
        if update.status == ClientUpdate.Status.RECEIVED and update.sha256 == sha:
            return Submission(update, replayed=True)
        if update.round.status != Round.Status.OPEN:
            raise UpdateRefused(f"round {update.round.number} is closed ({update.round.status})")
        raise UpdateRefused(f"this update is {update.status} and cannot be changed")
    for field, value in received.items():  # what the row now holds: no need to read it back
        setattr(update, field, value)
    maybe_close_round(update.round_id)
    return Submission(update, replayed=False)


def fail_update(update_id: int, code: str, *, detail: str = "", note: str = "") -> bool:
    """Record that a site's part in a round failed, with a reason code (shown with the
    product's text) and, from an agent, its own note (kept for that site only)."""
    changed = ClientUpdate.objects.filter(pk=update_id, status__in=OPEN_UPDATE).update(
        status=ClientUpdate.Status.FAILED, error_code=code, error=reason_text(code, detail),
        site_note=clean_note(note),
    )
    if changed:
        maybe_close_round(ClientUpdate.objects.values_list("round_id", flat=True).get(pk=update_id))
    return bool(changed)


def maybe_close_round(round_id: int, *, now: Any = None) -> str:
    """Close an open round if everyone reported or its deadline passed. Returns the
    round's status afterwards. Safe to call any number of times from anywhere."""
    now = now or timezone.now()
    with transaction.atomic():
        # The experiment is read only when the round closes (not on every report).
        round_ = Round.objects.select_for_update().get(pk=round_id)
        if round_.status != Round.Status.OPEN:
            return round_.status
        deadline_passed = now >= round_.deadline
        # Most calls come from a site reporting while others still train: one indexed
        # EXISTS then, rather than every update row of the round (each of a round's N
        # reports read all N rows: quadratic in the sites).
        if not deadline_passed and round_.updates.filter(status__in=OPEN_UPDATE).exists():
            return round_.status
        updates = list(round_.updates.select_related("site"))
        waiting = [u for u in updates if u.status in OPEN_UPDATE]
        received = [u for u in updates if u.status == ClientUpdate.Status.RECEIVED]
        if waiting and not deadline_passed:
            return round_.status
        if waiting:  # the deadline passed: sites still training are left out
            # A hosted site whose queue had no live worker did not miss the deadline:
            # nobody took its work (a stopped worker, or one cut off from the broker).
            unattended = health.no_worker_at_deadline(round_, waiting)
            for code, ids in ((Reason.NO_WORKER, [u.pk for u in waiting if u.pk in unattended]),
                              (Reason.MISSED_DEADLINE, [u.pk for u in waiting if u.pk not in unattended])):
                ClientUpdate.objects.filter(pk__in=ids, status__in=OPEN_UPDATE).update(
                    status=ClientUpdate.Status.FAILED, error_code=code, error=reason_text(code)
                )
        experiment = round_.experiment
        round_.closed_at = now
        if len(received) >= experiment.min_sites:
            round_.status = Round.Status.AGGREGATING
            round_.save(update_fields=["status", "closed_at"])
            if experiment.secure_aggregation:  # the protocol's phases, then the unmasked sum
                from .secure_round import start

                start(round_, [u.site for u in received])
            else:
                transaction.on_commit(lambda: dispatch.queue_aggregation(round_id))
            return round_.status
        round_.status = Round.Status.FAILED
        round_.failure_code = Reason.QUORUM
        round_.failure_reason = reason_text(
            Reason.QUORUM,
            f"(only {len(received)} of the {experiment.min_sites} sites required reported"
            + (" before the deadline)" if deadline_passed else ")"),
        )
        round_.save(update_fields=["status", "closed_at", "failure_code", "failure_reason"])
    from .lifecycle import TransitionError, fail_experiment

    with contextlib.suppress(TransitionError):  # cancelled or failed meanwhile
        fail_experiment(experiment.pk, f"Round {round_.number} failed: {round_.failure_reason}", code=Reason.QUORUM)
    return Round.Status.FAILED


def _load_received(round_: Round, only: set[int] | None = None) -> Iterator[tuple[ClientUpdate, Weights | None]]:
    """The round's received updates with their weights read from storage (checksum
    verified), one at a time and in a stable order; ``None`` weights when the stored
    file is missing or corrupt (the cause goes to the log, not to any page)."""
    updates = round_.updates.filter(status=ClientUpdate.Status.RECEIVED).select_related("site")
    if only is not None:
        updates = updates.filter(pk__in=only)
    for u in updates.order_by("site__slug"):
        try:
            weights = artifacts.load_weights(u.weights_file, u.sha256)
        except (ChecksumMismatch, WeightsFormatError, FileNotFoundError, OSError) as exc:
            log.warning("round %s: stored update %s of %s unreadable: %s", round_.pk, u.pk, u.site.slug, exc)
            yield u, None
            continue
        yield u, weights


# The core's machine codes (fedhealth.ml.strategies.checks) in the product's words.
_CORE_CODES = {
    "invalid": Reason.UPDATE_INVALID,
    "nonfinite": Reason.UPDATE_INVALID,
    "implausible": Reason.IMPLAUSIBLE,
    "duplicate": Reason.DUPLICATE,
    "outlier": Reason.OUTLIER,
    "not_selected": Reason.NOT_SELECTED,
    "too_few": Reason.AGGREGATE_INVALID,
    "failed": Reason.TRAINING_FAILED,
}


def reason_for(code: str) -> str:
    """A ``Reason`` for a core code; a code that already is a ``Reason`` stays."""
    if code in _CORE_CODES:
        return _CORE_CODES[code]
    return code if code in Reason.values else Reason.INTERNAL


def _reject(site: str, code: str, detail: str = "") -> Rejected:
    return Rejected(site, reason_text(code, detail), code=code)


def screen_stored_updates(
    round_: Round, previous: Weights, *, outliers: bool = True
) -> tuple[set[int], list[Rejected]]:
    """First pass over a round's stored updates: which may be aggregated.

    Refused here: an unreadable file, an update that does not fit the model, and an
    update whose distance from the global model is more than the experiment's
    ``outlier_factor`` times the median of the round's other updates (one site's
    update must not be able to drag the model anywhere). Holds one update at a time.
    ``outliers=False`` (site-level DP): only what depends on the update alone, since a
    rejection decided by comparing the sites' updates would let one site change whether
    another's counts, beyond the clipping bound the accounting assumes.
    """
    experiment = round_.experiment
    kept: dict[str, int] = {}
    distances: dict[str, float] = {}
    rejected: list[Rejected] = []
    for u, weights in _load_received(round_):
        slug = u.site.slug
        if weights is None:
            rejected.append(_reject(slug, Reason.UNREADABLE))
            continue
        problem = update_problem(Update(weights, u.num_samples, slug), previous)
        if problem:
            rejected.append(_reject(slug, reason_for(problem.code), f"({problem.reason})"))
            continue
        distances[slug] = update_distance(weights, previous)
        kept[slug] = u.pk
        del weights
    for slug, why in (find_outliers(distances, experiment.outlier_factor) if outliers else {}).items():
        rejected.append(_reject(slug, Reason.OUTLIER, f"({why})"))
        kept.pop(slug)
    return set(kept.values()), rejected


def _aggregation_input(round_: Round, ids: set[int], late: list[Rejected]) -> Iterator[Update]:
    """Second pass: stream the screened updates to the strategy (FedAvg keeps only a
    running sum). A file that vanished since the first pass is rejected, not skipped
    silently: the quorum is checked on what was actually used."""
    for u, weights in _load_received(round_, ids):
        if weights is None:
            late.append(_reject(u.site.slug, Reason.UNREADABLE))
            continue
        yield Update(weights, u.num_samples, u.site.slug, u.metrics)


def publishable(weights: Weights) -> bool:
    """A global model may be stored only if every weight is finite and plausible."""
    return check_aggregate(weights) is None


def _load_strategy(experiment: Experiment):
    strategy = get_strategy(experiment.strategy, **experiment.strategy_params)
    if experiment.strategy_state:
        saved = experiment.strategy_state
        arrays = (
            artifacts.load_weights(experiment.strategy_state_file, saved["arrays_sha256"])
            if experiment.strategy_state_file else {}
        )
        strategy.load_state_dict({"json": saved.get("json", {}), "arrays": arrays})
    return strategy


def fail_aggregation(round_id: int, code: str, detail: str = "") -> bool:
    """End an aggregating round as failed (the previous global model stays) and fail
    its experiment. False when the round was no longer aggregating."""
    reason = reason_text(code, detail)
    with transaction.atomic():
        changed = Round.objects.filter(pk=round_id, status=Round.Status.AGGREGATING).update(
            status=Round.Status.FAILED, failure_code=code, failure_reason=reason,
            completed_at=timezone.now(),
        )
    if not changed:
        return False
    round_ = Round.objects.get(pk=round_id)
    from .lifecycle import TransitionError, fail_experiment

    with contextlib.suppress(TransitionError):  # cancelled or failed meanwhile
        fail_experiment(round_.experiment_id, f"round {round_.number} failed: {reason}", code=code)
    return True


def aggregate_round(round_id: int) -> ModelVersion | None:
    """Combine a closed round's updates into the next model version, exactly once.

    No single site is trusted: updates are screened first (unreadable, misfit,
    outlier), the strategy refuses a non-finite or implausible aggregate, and the
    quorum (``min_sites``) is checked on the updates actually used. A round under its
    quorum fails closed: the previous global model stays, never one site's update.

    The heavy part (reading updates, aggregating, writing the version file) runs
    outside the transaction; the commit re-checks the round is still aggregating, so
    two concurrent runs create one version. A crash before the commit leaves the round
    aggregating for the sweeper to retry.
    """
    round_ = Round.objects.select_related("experiment").get(pk=round_id)
    if round_.status != Round.Status.AGGREGATING:
        return ModelVersion.objects.filter(round=round_).first()
    experiment = round_.experiment
    if experiment.secure_aggregation:  # no update is stored: the protocol's phases run instead
        from .secure_round import advance

        return advance(round_id)
    if experiment.dp_mode == Experiment.DPMode.SITE:  # DP-FedAvg: clip, noise, fixed denominator
        from .site_dp import aggregate_site_dp

        return aggregate_site_dp(round_)
    previous, _ = artifacts.global_weights_for(round_)
    strategy = _load_strategy(experiment)
    failed = [
        _reject(slug, code or Reason.TRAINING_FAILED)
        for slug, code in round_.updates.filter(status=ClientUpdate.Status.FAILED).values_list("site__slug", "error_code")
    ]
    ids, screened_out = screen_stored_updates(round_, previous)
    late: list[Rejected] = []
    result = strategy.aggregate(previous, _aggregation_input(round_, ids, late), failures=failed)
    rejections = [*result.rejected, *screened_out, *late]
    rejected = [{"site": r.site, "code": reason_for(r.code), "reason": r.reason} for r in rejections]
    # Valid updates a robust strategy looked at but did not select (Krum) were used to
    # choose the model: they count toward the quorum, screened-out ones never do.
    considered = len(result.accepted) + sum(r.code == "not_selected" for r in result.rejected)
    if considered < experiment.min_sites:
        _record_rejections(round_, rejected)
        fail_aggregation(
            round_id, Reason.QUORUM,
            f"{considered} usable of the {experiment.min_sites} required.",
        )
        return None
    used = list(round_.updates.filter(status=ClientUpdate.Status.RECEIVED, site__slug__in=result.accepted))
    return publish_aggregate(round_, strategy, result, rejected, used)


def publish_aggregate(
    round_: Round, strategy: Any, result: Any, rejected: list[dict[str, str]], used: list[ClientUpdate],
    *, extra_metrics: dict[str, Any] | None = None,
) -> ModelVersion | None:
    """Store an aggregating round's result as the next version and complete the round,
    once: the commit re-checks the round is still aggregating. A non-finite or
    implausible aggregate is refused (the previous model stays). ``used``: the updates
    whose loss makes the round's training loss. ``extra_metrics``: kept in the round's
    metrics and log line (site-level DP's figures)."""
    round_id = round_.pk
    experiment = round_.experiment
    weights = result.weights
    refused = result.refused
    if weights is not None and not publishable(weights):
        weights, refused = None, "the aggregate has non-finite or implausible weights"
    if refused:
        log.warning("round %s: aggregate refused: %s", round_id, refused)

    version_file = sha = ""
    if weights is not None:
        version_file = artifacts.version_name(experiment, round_.number)
        sha = artifacts.save_weights(version_file, weights, {"experiment": str(experiment.pk), "round": str(round_.number)})
    # A refused aggregate must not leave a stateful strategy's moments corrupted.
    state = strategy.state_dict() if weights is not None else {}
    saved_state: dict[str, Any] = {"json": state.get("json", {})}
    state_file = ""
    if state.get("arrays"):
        state_file = artifacts.state_name(experiment, round_.number)
        saved_state["arrays_sha256"] = artifacts.save_weights(state_file, state["arrays"])

    total = sum(u.num_samples for u in used)
    train_loss = sum((u.loss or 0.0) * u.num_samples for u in used) / total if total else None
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        round_ = Round.objects.select_for_update().get(pk=round_id)
        if round_.status != Round.Status.AGGREGATING:
            return ModelVersion.objects.filter(round=round_).first()
        version = None
        if weights is not None:
            version = ModelVersion.objects.create(
                experiment=experiment, version=round_.number, round=round_,
                weights_file=version_file, sha256=sha, normalizer=experiment.normalizer,
                model_config=experiment.model_config.to_dict(), schema=experiment.schema,
            )
        if state.get("json") or state_file:
            experiment.strategy_state = saved_state
            experiment.strategy_state_file = state_file
            experiment.save(update_fields=["strategy_state", "strategy_state_file"])
        now = timezone.now()
        round_.status = Round.Status.COMPLETED
        round_.completed_at = now
        round_.metrics = {
            "train_loss": train_loss, "num_samples": result.num_samples,
            "accepted": result.accepted, "rejected": rejected,
            "kept_previous_model": weights is None,
            "refused": reason_text(Reason.AGGREGATE_INVALID) if refused else None,
            "duration_seconds": (now - round_.started_at).total_seconds(),
            **(extra_metrics or {}),
        }
        round_.save(update_fields=["status", "completed_at", "metrics"])
        artifacts.write_log_event(experiment, {
            "event": "round_completed", "round": round_.number, "at": now.isoformat(),
            "version": version.version if version else None, "sha256": sha or None,
            **round_.metrics,
        })
        if version is not None:
            # Registered before advance's own on-commit work: at the last round the
            # sites evaluate the final version before their end-of-experiment
            # comparisons (each a full local-only training), not after them.
            transaction.on_commit(lambda: dispatch.queue_evaluations(version.pk))
        advance(experiment, round_.number)
    return version


def _record_rejections(round_: Round, rejected: list[dict[str, str]]) -> None:
    """Keep why each update was not used on a round that is about to fail."""
    Round.objects.filter(pk=round_.pk, status=Round.Status.AGGREGATING).update(
        metrics={**(round_.metrics or {}), "accepted": [], "rejected": rejected}
    )

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

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fedhealth.files import write_bytes
from fedhealth.ml.model import weight_spec
from fedhealth.ml.strategies import Rejected, check_update, get_strategy
from fedhealth.ml.types import Metrics, Update, Weights
from fedhealth.ml.weights_io import (
    ChecksumMismatch,
    WeightsFormatError,
    sha256_hex,
    weights_to_bytes,
)

from ..models import ClientUpdate, Experiment, ModelVersion, Round
from . import artifacts
from .lifecycle import advance

log = logging.getLogger(__name__)

OPEN_UPDATE = (ClientUpdate.Status.PENDING, ClientUpdate.Status.TRAINING)


class UpdateRefused(Exception):
    """An update the server will not take; the message says why (shown to the sender)."""


@dataclass(frozen=True)
class Submission:
    update: ClientUpdate
    replayed: bool  # True when the same update had already been received


def claim_update(update_id: int) -> bool:
    """Mark a pending (or interrupted) update as training. False when there is nothing
    left to do: the update was already reported, or its round has closed."""
    return bool(
        ClientUpdate.objects.filter(
            pk=update_id, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN
        ).update(status=ClientUpdate.Status.TRAINING, started_at=timezone.now(), attempts=F("attempts") + 1)
    )


def reference_weights(experiment: Experiment) -> Weights:
    import numpy as np

    return {k: np.zeros(shape, dtype=np.float32) for k, shape in weight_spec(experiment.model_config).items()}


def submit_update(
    update_id: int,
    weights: Weights,
    *,
    num_samples: int,
    loss: float | None,
    metrics: Metrics,
    source: str,
) -> Submission:
    """Accept a site's trained weights for a round.

    Refused (``UpdateRefused``) when the round is closed, the update was already
    received with other weights, or the weights do not fit the experiment's model
    (shape, dtype, NaN/Inf). Replaying the same weights is harmless.
    """
    update = ClientUpdate.objects.select_related("round__experiment", "site").get(pk=update_id)
    experiment = update.round.experiment
    reason = check_update(Update(weights, num_samples, update.site.slug), reference_weights(experiment))
    if reason:
        raise UpdateRefused(f"update rejected: {reason}")
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
    with transaction.atomic():
        changed = ClientUpdate.objects.filter(
            pk=update_id, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN
        ).update(
            status=ClientUpdate.Status.RECEIVED, weights_file=name, sha256=sha,
            num_samples=num_samples, loss=loss, metrics=metrics, source=source,
            received_at=timezone.now(), error="",
        )
    update.refresh_from_db()
    if not changed:
        if update.status == ClientUpdate.Status.RECEIVED and update.sha256 == sha:
            return Submission(update, replayed=True)
        if update.round.status != Round.Status.OPEN:
            raise UpdateRefused(f"round {update.round.number} is closed ({update.round.status})")
        raise UpdateRefused(f"this update is {update.status} and cannot be changed")
    maybe_close_round(update.round_id)
    return Submission(update, replayed=False)


def fail_update(update_id: int, reason: str) -> bool:
    """Record that a site could not train this round, with the reason."""
    changed = ClientUpdate.objects.filter(pk=update_id, status__in=OPEN_UPDATE).update(
        status=ClientUpdate.Status.FAILED, error=reason[:2000]
    )
    if changed:
        maybe_close_round(ClientUpdate.objects.values_list("round_id", flat=True).get(pk=update_id))
    return bool(changed)


def maybe_close_round(round_id: int, *, now: Any = None) -> str:
    """Close an open round if everyone reported or its deadline passed. Returns the
    round's status afterwards. Safe to call any number of times from anywhere."""
    now = now or timezone.now()
    with transaction.atomic():
        round_ = Round.objects.select_for_update().select_related("experiment").get(pk=round_id)
        if round_.status != Round.Status.OPEN:
            return round_.status
        updates = list(round_.updates.all())
        waiting = [u for u in updates if u.status in OPEN_UPDATE]
        received = [u for u in updates if u.status == ClientUpdate.Status.RECEIVED]
        deadline_passed = now >= round_.deadline
        if waiting and not deadline_passed:
            return round_.status
        if waiting:  # the deadline passed: sites still training are left out
            ClientUpdate.objects.filter(pk__in=[u.pk for u in waiting], status__in=OPEN_UPDATE).update(
                status=ClientUpdate.Status.FAILED, error="missed the round deadline"
            )
        experiment = round_.experiment
        round_.closed_at = now
        if len(received) >= experiment.min_sites:
            round_.status = Round.Status.AGGREGATING
            round_.save(update_fields=["status", "closed_at"])
            from .. import tasks

            transaction.on_commit(lambda: tasks.queue_aggregation(round_id))
            return round_.status
        round_.status = Round.Status.FAILED
        round_.failure_reason = (
            f"only {len(received)} of the {experiment.min_sites} sites required reported"
            + ("" if not deadline_passed else " before the deadline")
        )
        round_.save(update_fields=["status", "closed_at", "failure_reason"])
    from .lifecycle import TransitionError, fail_experiment

    with contextlib.suppress(TransitionError):  # cancelled or failed meanwhile
        fail_experiment(experiment.pk, f"round {round_.number} failed: {round_.failure_reason}")
    return Round.Status.FAILED


def _received_updates(round_: Round, io_failures: list[Rejected]) -> Iterator[Update]:
    """Stream the round's updates from storage one at a time (FedAvg keeps only a
    running sum), checking each file's checksum as it is read."""
    for u in round_.updates.filter(status=ClientUpdate.Status.RECEIVED).select_related("site").order_by("site__slug"):
        try:
            weights = artifacts.load_weights(u.weights_file, u.sha256)
        except (ChecksumMismatch, WeightsFormatError, FileNotFoundError) as exc:
            io_failures.append(Rejected(u.site.slug, f"stored update unreadable: {exc}"))
            continue
        yield Update(weights, u.num_samples, u.site.slug, u.metrics)


def aggregate_round(round_id: int) -> ModelVersion | None:
    """Combine a closed round's updates into the next model version, exactly once.

    The heavy part (reading updates, aggregating, writing the version file) runs
    outside the transaction; the commit re-checks the round is still aggregating, so
    two concurrent runs create one version. A crash before the commit leaves the round
    aggregating for the sweeper to retry.
    """
    round_ = Round.objects.select_related("experiment").get(pk=round_id)
    if round_.status != Round.Status.AGGREGATING:
        return ModelVersion.objects.filter(round=round_).first()
    experiment = round_.experiment
    previous, _ = artifacts.global_weights_for(round_)
    strategy = get_strategy(experiment.strategy, **experiment.strategy_params)
    if experiment.strategy_state:
        saved = experiment.strategy_state
        arrays = (
            artifacts.load_weights(experiment.strategy_state_file, saved["arrays_sha256"])
            if experiment.strategy_state_file else {}
        )
        strategy.load_state_dict({"json": saved.get("json", {}), "arrays": arrays})
    io_failures: list[Rejected] = []
    failed = [
        Rejected(slug, err or "failed")
        for slug, err in round_.updates.filter(status=ClientUpdate.Status.FAILED).values_list("site__slug", "error")
    ]
    result = strategy.aggregate(previous, _received_updates(round_, io_failures), failures=failed)
    rejected = [{"site": r.site, "reason": r.reason} for r in [*result.rejected, *io_failures]]

    version_file = sha = ""
    if result.weights is not None:
        version_file = artifacts.version_name(experiment, round_.number)
        sha = artifacts.save_weights(version_file, result.weights, {"experiment": str(experiment.pk), "round": str(round_.number)})
    state = strategy.state_dict()
    saved_state: dict[str, Any] = {"json": state.get("json", {})}
    state_file = ""
    if state.get("arrays"):
        state_file = artifacts.state_name(experiment, round_.number)
        saved_state["arrays_sha256"] = artifacts.save_weights(state_file, state["arrays"])

    received = round_.updates.filter(status=ClientUpdate.Status.RECEIVED)
    total = sum(u.num_samples for u in received)
    train_loss = (
        sum((u.loss or 0.0) * u.num_samples for u in received) / total if total else None
    )
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        round_ = Round.objects.select_for_update().get(pk=round_id)
        if round_.status != Round.Status.AGGREGATING:
            return ModelVersion.objects.filter(round=round_).first()
        version = None
        if result.weights is not None:
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
            "kept_previous_model": result.weights is None,
            "duration_seconds": (now - round_.started_at).total_seconds(),
        }
        round_.save(update_fields=["status", "completed_at", "metrics"])
        artifacts.write_log_event(experiment, {
            "event": "round_completed", "round": round_.number, "at": now.isoformat(),
            "version": version.version if version else None, "sha256": sha or None,
            **round_.metrics,
        })
        advance(experiment, round_.number)
        if version is not None:
            from .. import tasks

            transaction.on_commit(lambda: tasks.queue_evaluations(version.pk))
    return version

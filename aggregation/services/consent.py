"""Consent per experiment: what a site is asked to agree to, and its decision.

A coordinator *invites* sites (``Participant`` rows, consent ``invited``); each site's
admin reads ``terms(experiment)`` and accepts with one of the site's ready datasets, or
declines with a reason; later it may withdraw. Only a site whose acceptance covers the
experiment's *current* terms (``terms_hash``) is ever trained on: a configuration change
after acceptance (``creation.update_experiment``) changes the hash, so the acceptance no
longer counts until the site accepts again. Every door that starts site work checks it
here: Start and round selection (lifecycle), the claim of an update (rounds.claim_update,
used by hosted workers, redeliveries, the sweeper's re-sends and agents), evaluations.

A withdrawal (of the site, or of the dataset it takes part with) applies from the next
round: the site is not selected again, and its updates nobody has claimed yet in open
rounds are closed as dropouts (``Reason.WITHDRAWN``) so no round waits for them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit import services as audit
from clients.models import Dataset, Site
from clients.permissions import is_site_admin, site_of
from clients.policy import join_problems

from ..models import ClientUpdate, Experiment, Participant, Round
from ..reasons import Reason
from ..reasons import text as reason_text
from .schema_fit import fit_problems

Consent = Participant.Consent
MAX_REASON = 500  # Participant.decline_reason's column

# What reaches the server from a site that takes part (docs/architecture.md, "Rules").
LEAVES_SITE = (
    "model weights after each round of local training (masked, when secure aggregation is on)",
    "the number of rows trained on in each round",
    "sufficient statistics of the dataset: row count and, per feature, sum and sum of squares",
    "aggregate metrics of the models on the site's held-out rows (never a row or a prediction)",
)
STAYS_AT_SITE = "Patient rows never leave the site's storage."

# The states a viewer reads; ``terms_changed`` is an acceptance of terms that changed since.
TERMS_CHANGED = "terms_changed"
STATE_TEXT = {
    Consent.INVITED: "Invited: waiting for the site's decision",
    Consent.ACCEPTED: "Accepted",
    Consent.DECLINED: "Declined",
    Consent.WITHDRAWN: "Withdrawn",
    TERMS_CHANGED: "Terms changed, accept again",
}


class ConsentError(Exception):
    """A decision that cannot be recorded; the message says why (shown to the site)."""


# -- the terms ----------------------------------------------------------------------


def _coordinator(experiment: Experiment) -> str:
    user = experiment.created_by
    if user is None:
        return "the platform's operator"
    # Plain fields only (no methods): the migration that backfills consent calls this
    # with historical models.
    full = f"{user.first_name} {user.last_name}".strip()
    return full or user.username


def terms(experiment: Experiment) -> dict[str, Any]:
    """What a site is asked to agree to: purpose, features, model, schedule, privacy,
    who else takes part (how many, never which), who coordinates, what leaves the site."""
    schema = experiment.schema or {}
    # Record-level or site-level: the figures a site agrees to (off: none).
    record_dp = experiment.dp_mode in ("record", "site")
    return {
        "experiment": experiment.pk,
        "name": experiment.name,
        "purpose": experiment.description,
        "coordinator": _coordinator(experiment),
        "features": [f["name"] for f in schema.get("features", [])],
        "label": schema.get("label", ""),
        "model": {"hidden_layers": list(experiment.hidden_layers), "dropout": experiment.dropout},
        "rounds": experiment.num_rounds,
        "local_epochs": experiment.local_epochs,
        "batch_size": experiment.batch_size,
        "learning_rate": experiment.lr,
        "strategy": experiment.strategy,
        "strategy_params": dict(experiment.strategy_params or {}),
        "privacy": {
            "mode": experiment.dp_mode,
            "epsilon": experiment.dp_epsilon if record_dp else None,
            "delta": experiment.dp_delta if record_dp else None,
            "clip_norm": experiment.dp_clip_norm if record_dp else None,
        },
        "secure_aggregation": bool(experiment.secure_aggregation),
        "secagg_threshold": experiment.secagg_threshold,
        "sites_invited": experiment.participants.count(),
        "quorum": experiment.min_sites,
        "fraction_fit": experiment.fraction_fit,
        "test_fraction": experiment.test_fraction,
        "leaves_site": list(LEAVES_SITE),
        "stays_at_site": STAYS_AT_SITE,
    }


def hash_terms(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``body`` (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def terms_hash(experiment: Experiment) -> str:
    return hash_terms(terms(experiment))


# -- states ---------------------------------------------------------------------------


def state(participant: Participant, current_hash: str) -> str:
    """``invited``, ``accepted``, ``declined``, ``withdrawn`` or ``terms_changed``."""
    if participant.consent == Consent.ACCEPTED and participant.terms_hash != current_hash:
        return TERMS_CHANGED
    return participant.consent


def is_valid(participant: Participant, current_hash: str) -> bool:
    """May this participant be trained on now? Accepted, these terms, a dataset it chose
    that is still ready and not withdrawn."""
    dataset = participant.dataset
    return (
        participant.consent == Consent.ACCEPTED
        and participant.terms_hash == current_hash
        and dataset is not None
        and dataset.status == Dataset.Status.READY
        and dataset.withdrawn_at is None
    )


def consenting(experiment: Experiment) -> list[Participant]:
    """The participants with valid consent, in site order (site and dataset loaded)."""
    current = terms_hash(experiment)
    rows = experiment.participants.filter(consent=Consent.ACCEPTED).select_related(
        "site", "dataset"
    )
    return [p for p in rows.order_by("site__slug") if is_valid(p, current)]


def has_consent(experiment: Experiment, site_id: int) -> bool:
    # Asked before every piece of site work: the dataset's JSON columns, which is_valid
    # does not read, are left in the database.
    p = (
        Participant.objects.select_related("dataset")
        .defer("dataset__schema", "dataset__stats", "dataset__summary", "dataset__validation_report")
        .filter(experiment=experiment, site_id=site_id)
        .first()
    )
    return p is not None and is_valid(p, terms_hash(experiment))


def refusal_code(experiment: Experiment, site_id: int) -> str:
    """Why a site without valid consent is not trained on: WITHDRAWN (the site or its
    dataset withdrew, or it declined) or NO_CONSENT (never accepted these terms)."""
    p = (
        Participant.objects.select_related("dataset")
        .filter(experiment=experiment, site_id=site_id)
        .first()
    )
    if p is None:
        return Reason.NO_CONSENT
    withdrawn = p.consent in (Consent.WITHDRAWN, Consent.DECLINED) or (
        p.dataset is not None and p.dataset.withdrawn_at is not None
    )
    return Reason.WITHDRAWN if withdrawn else Reason.NO_CONSENT


# -- who may decide --------------------------------------------------------------------


def _is_site_token(user: Any) -> bool:
    # A site token's principal (clients/api/authentication.py) is no person.
    return getattr(user, "site", None) is not None and not hasattr(user, "get_username")


def invitations(user: Any) -> QuerySet[Participant]:
    """The caller's own site's invitations (every state); nobody else's."""
    site = site_of(user)
    if site is None:
        return Participant.objects.none()
    return (
        Participant.objects.filter(site=site)
        .select_related("experiment", "experiment__created_by", "dataset", "site")
        .order_by("-experiment__created_at")
    )


def _locked(participant_id: int, user: Any, *, person_only: bool) -> Participant:
    """The caller's own site's participant, locked. Another site's is not found."""
    if person_only and not is_site_admin(user):
        raise PermissionError("Only a site admin of this site may accept an experiment.")
    if not person_only and not (is_site_admin(user) or _is_site_token(user)):
        raise PermissionError("Only a site admin of this site (or its site token) may do this.")
    site = site_of(user)
    # of=self: the dataset is a nullable join, and PostgreSQL cannot lock the nullable
    # side of an outer join (SQLite ignores FOR UPDATE, so only PostgreSQL's pass saw it).
    return (
        Participant.objects.select_for_update(of=("self",))
        .select_related("experiment", "site", "dataset")
        .get(pk=participant_id, site=site)
    )


def _actor(user: Any) -> Any:
    return None if _is_site_token(user) else user


# -- decisions --------------------------------------------------------------------------


def dataset_problems(experiment: Experiment, dataset: Dataset, site: Site) -> list[str]:
    """Why ``dataset`` cannot be the one ``site`` takes part with (empty: it can)."""
    if dataset.site_id != site.pk:
        return [f"dataset {dataset.pk} is not one of {site.name}'s datasets"]
    if dataset.status != Dataset.Status.READY:
        return [f"dataset {dataset.pk} is {dataset.status}, not ready"]
    if dataset.withdrawn_at is not None:
        return [f"dataset {dataset.pk} was withdrawn and can join no experiment"]
    if fit := fit_problems(dataset, experiment.schema):  # columns, and the experiment's hard limits
        return fit
    if site.mode == Site.Mode.AGENT and dataset.file:
        return [f"dataset {dataset.pk} is a stored upload, but {site.name} runs a site agent"]
    if site.mode == Site.Mode.HOSTED and not dataset.file:
        return [f"dataset {dataset.pk} is an agent's summary, but {site.name} is hosted"]
    return join_problems(dataset)


def eligible_datasets(experiment: Experiment, site: Site) -> list[Dataset]:
    """The site's datasets it could accept ``experiment`` with."""
    rows = Dataset.objects.filter(site=site, status=Dataset.Status.READY, withdrawn_at__isnull=True)
    return [d for d in rows.select_related("site") if not dataset_problems(experiment, d, site)]


def record_acceptance(
    participant: Participant, *, dataset: Dataset | None = None, by: Any = None
) -> Participant:
    """Record that ``participant``'s site accepts the experiment's current terms with
    ``dataset`` (default: the one proposed). The one write behind ``accept``; callers
    outside a request (``seed_demo``, test fixtures) act for the site's admin.

    Raises ``ConsentError`` naming what is wrong.
    """
    with transaction.atomic():
        p = (
            Participant.objects.select_for_update()
            .select_related("experiment", "site")
            .get(pk=participant.pk)
        )
        experiment = Experiment.objects.get(pk=p.experiment_id)
        if experiment.status in Experiment.FINISHED:
            raise ConsentError(
                f"experiment {experiment.name!r} is {experiment.status}; there is nothing to accept"
            )
        if p.consent == Consent.WITHDRAWN:
            raise ConsentError("this site withdrew from the experiment; a withdrawal is final")
        chosen = dataset if dataset is not None else p.dataset
        if chosen is None:
            raise ConsentError("choose one of the site's ready datasets to take part with")
        chosen = Dataset.objects.select_related("site").get(pk=chosen.pk)
        problems = dataset_problems(experiment, chosen, p.site)
        if problems:
            raise ConsentError("; ".join(problems))
        if experiment.status != Experiment.Status.DRAFT and p.dataset_id not in (None, chosen.pk):
            raise ConsentError("the experiment has started: the dataset cannot change now")
        digest = terms_hash(experiment)
        p.consent = Consent.ACCEPTED
        p.dataset = chosen
        p.terms_hash = digest
        p.decided_by = by if getattr(by, "is_authenticated", False) else None
        p.decided_at = timezone.now()
        p.decline_reason = ""
        p.save(
            update_fields=[
                "consent",
                "dataset",
                "terms_hash",
                "decided_by",
                "decided_at",
                "decline_reason",
            ]
        )
        audit.record(
            audit.Kind.CONSENT_ACCEPT,
            actor=p.decided_by,
            site=p.site,
            target=f"experiment {experiment.pk}",
            details={"name": experiment.name, "dataset": chosen.pk, "terms_sha256": digest},
        )
    return p


def accept(participant_id: int, user: Any, dataset: Dataset | int) -> Participant:
    """A site admin accepts their site's invitation with one of the site's datasets.
    Raises ``Participant.DoesNotExist`` (another site's), ``PermissionError``, ``ConsentError``."""
    with transaction.atomic():
        p = _locked(participant_id, user, person_only=True)
        dataset_id = dataset.pk if isinstance(dataset, Dataset) else dataset
        chosen = Dataset.objects.filter(pk=dataset_id, site=p.site).first()
        if chosen is None:
            raise ConsentError(f"dataset {dataset_id} is not one of {p.site.name}'s datasets")
        return record_acceptance(p, dataset=chosen, by=user)


def decline(participant_id: int, user: Any, reason: str) -> Participant:
    """The site says no (before taking part); the reason is shown to the coordinator."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise ConsentError("say why the site declines (the coordinator reads it)")
    if len(reason) > MAX_REASON:
        raise ConsentError(
            f"the reason is {len(reason)} characters long; the limit is {MAX_REASON}"
        )
    with transaction.atomic():
        p = _locked(participant_id, user, person_only=False)
        experiment = p.experiment
        if p.consent == Consent.WITHDRAWN:
            raise ConsentError("this site already withdrew from the experiment")
        if experiment.status != Experiment.Status.DRAFT and p.consent == Consent.ACCEPTED:
            raise ConsentError("the experiment has started with this site: withdraw instead")
        p.consent = Consent.DECLINED
        p.decline_reason = reason
        p.decided_by = _actor(user)
        p.decided_at = timezone.now()
        p.save(update_fields=["consent", "decline_reason", "decided_by", "decided_at"])
        audit.record(
            audit.Kind.CONSENT_DECLINE,
            actor=p.decided_by,
            site=p.site,
            target=f"experiment {experiment.pk}",
            details={"name": experiment.name, "reason": reason},
        )
        _drop_unclaimed(experiment, [p.site_id], Reason.WITHDRAWN)
    return p


def withdraw(participant_id: int, user: Any) -> Participant:
    """The site leaves the experiment: from the next round it is not selected, and its
    unclaimed updates in open rounds close as dropouts. Final."""
    with transaction.atomic():
        p = _locked(participant_id, user, person_only=False)
        if p.consent == Consent.WITHDRAWN:
            return p
        _withdraw(p, by=_actor(user), why="site")
    return p


def _withdraw(p: Participant, *, by: Any, why: str) -> None:
    """Caller holds the participant's row lock."""
    experiment = Experiment.objects.select_for_update().get(pk=p.experiment_id)
    current = experiment.rounds.order_by("-number").values_list("number", flat=True).first() or 0
    p.consent = Consent.WITHDRAWN
    p.withdrawn_at = timezone.now()
    p.withdrawn_from_round = current + 1
    p.decided_by = by
    p.decided_at = p.withdrawn_at
    p.save(
        update_fields=[
            "consent",
            "withdrawn_at",
            "withdrawn_from_round",
            "decided_by",
            "decided_at",
        ]
    )
    audit.record(
        audit.Kind.CONSENT_WITHDRAW,
        actor=by,
        site=p.site,
        target=f"experiment {experiment.pk}",
        details={"name": experiment.name, "from_round": p.withdrawn_from_round, "cause": why},
    )
    _drop_unclaimed(experiment, [p.site_id], Reason.WITHDRAWN)


def _drop_unclaimed(experiment: Experiment, site_ids: list[int], code: str) -> None:
    """Close the sites' pending (unclaimed) updates in open rounds as dropouts, then let
    each round close if nobody else is waiting. Work already claimed may finish."""
    from .rounds import maybe_close_round  # rounds imports this module

    open_rounds = Round.objects.filter(experiment=experiment, status=Round.Status.OPEN)
    pending = ClientUpdate.objects.filter(
        round__in=open_rounds, site_id__in=site_ids, status=ClientUpdate.Status.PENDING
    )
    round_ids = set(pending.values_list("round_id", flat=True))
    pending.update(status=ClientUpdate.Status.FAILED, error_code=code, error=reason_text(code))
    for round_id in round_ids:
        transaction.on_commit(lambda rid=round_id: maybe_close_round(rid))


def withdraw_dataset(dataset_id: int, user: Any) -> Dataset:
    """A site admin withdraws one of the site's datasets: it joins no new experiment, and
    every unfinished experiment that uses it stops using it from its next round (as if
    the site withdrew from them). Raises ``Dataset.DoesNotExist`` for another site's."""
    if not is_site_admin(user):
        raise PermissionError("Only a site admin of this site may withdraw a dataset.")
    with transaction.atomic():
        dataset = Dataset.objects.select_for_update().get(pk=dataset_id, site=site_of(user))
        if dataset.withdrawn_at is not None:
            return dataset
        dataset.withdrawn_at = timezone.now()
        dataset.save(update_fields=["withdrawn_at"])
        audit.record(
            audit.Kind.DATASET_WITHDRAW,
            actor=user,
            site=dataset.site,
            target=f"dataset {dataset.pk}",
            details={"name": dataset.name},
        )
        using = (
            Participant.objects.select_for_update()
            .filter(dataset=dataset)
            .exclude(consent__in=[Consent.WITHDRAWN, Consent.DECLINED])
            .exclude(experiment__status__in=Experiment.FINISHED)
        )
        for p in using.select_related("site", "experiment"):
            if p.experiment.status == Experiment.Status.DRAFT:
                # Nothing trained yet: the site is asked again, to choose another dataset.
                p.consent, p.dataset, p.terms_hash = Consent.INVITED, None, ""
                p.save(update_fields=["consent", "dataset", "terms_hash"])
            else:
                _withdraw(p, by=user, why=f"dataset {dataset.pk} withdrawn")
    return dataset


__all__ = [
    "LEAVES_SITE",
    "STATE_TEXT",
    "TERMS_CHANGED",
    "ConsentError",
    "accept",
    "consenting",
    "dataset_problems",
    "decline",
    "eligible_datasets",
    "has_consent",
    "invitations",
    "is_valid",
    "record_acceptance",
    "refusal_code",
    "state",
    "terms",
    "terms_hash",
    "withdraw",
    "withdraw_dataset",
]

"""Consent for tests that create experiments through a door (API, web, service) and then
start them: each invited site's admin accepts, through the consent service."""

from __future__ import annotations

from collections.abc import Iterable


def accept_invitations(experiment_id: int, *, sites: Iterable[str] | None = None) -> int:
    """Each invited site (or only ``sites``, by slug) accepts the experiment's current terms
    with the dataset proposed: by its site admin when it has one (``consent.accept``, as
    the site-home page does), else recorded for it (``consent.record_acceptance``, as the
    shared ``make_experiment`` fixture does). Returns how many accepted."""
    from aggregation.models import Participant
    from aggregation.services import consent
    from clients.models import Membership

    only = set(sites) if sites is not None else None
    accepted = 0
    for p in Participant.objects.filter(experiment_id=experiment_id).select_related("site"):
        if only is not None and p.site.slug not in only:
            continue
        admin = (
            Membership.objects.filter(site=p.site, role=Membership.Role.SITE_ADMIN)
            .select_related("user")
            .first()
        )
        if admin is not None:
            consent.accept(p.pk, admin.user, p.dataset_id)
        else:
            consent.record_acceptance(p)
        accepted += 1
    return accepted

"""Scoping of experiments and their records (see clients/permissions.py for the rules)."""

from __future__ import annotations

from django.db.models import QuerySet

from clients.permissions import is_coordinator, site_of

from .models import ClientUpdate, Experiment, ModelVersion, Round, SiteEvaluation


def visible_experiments(user) -> QuerySet[Experiment]:
    if is_coordinator(user):
        return Experiment.objects.all()
    site = site_of(user)
    if site is None:
        return Experiment.objects.none()
    return Experiment.objects.filter(participants__site=site).distinct()


def visible_rounds(user) -> QuerySet[Round]:
    return Round.objects.filter(experiment__in=visible_experiments(user))


def visible_versions(user) -> QuerySet[ModelVersion]:
    """Global models: shared with every participating site, and the coordinator."""
    return ModelVersion.objects.filter(experiment__in=visible_experiments(user))


def visible_updates(user) -> QuerySet[ClientUpdate]:
    """A site's own updates only; coordinators see all (metadata and metrics, no rows)."""
    if is_coordinator(user):
        return ClientUpdate.objects.select_related("site", "round")
    site = site_of(user)
    if site is None:
        return ClientUpdate.objects.none()
    return ClientUpdate.objects.filter(site=site).select_related("site", "round")


def visible_evaluations(user) -> QuerySet[SiteEvaluation]:
    """Per-site evaluations: a site sees its own; coordinators see every site's."""
    if is_coordinator(user):
        return SiteEvaluation.objects.select_related("site", "version")
    site = site_of(user)
    if site is None:
        return SiteEvaluation.objects.none()
    return SiteEvaluation.objects.filter(site=site).select_related("site", "version")

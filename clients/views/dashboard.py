"""The coordinator's overview: every site's aggregate figures and every experiment."""

from __future__ import annotations

from django.db.models import Count, Max, Q
from django.shortcuts import render

from aggregation import policy
from aggregation.models import Participant
from aggregation.permissions import visible_experiments
from aggregation.services import health
from aggregation.views.progress import experiment_progress
from clients.models import Dataset, Membership
from clients.permissions import visible_sites
from clients.policy import site_totals_visible
from fedhealth.ops.status import backup_is_stale, last_backup

from .access import coordinator_required


@coordinator_required
def dashboard(request):
    ready = Q(datasets__status=Dataset.Status.READY)
    # One join only (datasets): a second to-many join would multiply the sums.
    sites = list(visible_sites(request.user).annotate(
        ready_datasets=Count("datasets", filter=ready),
        last_upload=Max("datasets__created_at"),
    ).order_by("name"))
    members = dict(Membership.objects.filter(site__in=sites).values_list("site").annotate(n=Count("id")).order_by())
    distinct = _distinct_ready(sites)
    for site in sites:
        counted = distinct.get(site.pk, [])
        site.rows = sum(d[0] for d in counted) or None
        site.positives = sum(d[1] for d in counted)
        site.distinct_datasets = len(counted)
        site.copies = site.ready_datasets - len(counted)
        # The disclosure limits (clients/policy.py): no balance from fewer rows than the limit.
        site.balance = site.positives / site.rows if site_totals_visible(site.rows) else None
        site.members = members.get(site.pk, 0)
    viewer = policy.viewer_of(request.user)
    experiments = [(e, experiment_progress(e, viewer)) for e in visible_experiments(request.user).order_by("-created_at")]
    totals = {
        "sites": sum(s.is_active for s in sites),
        "rows": sum(s.rows or 0 for s in sites),
        "running": sum(e.status == "running" for e, _ in experiments),
        "experiments": len(experiments),
    }
    # Running experiments whose sites' work no worker is taking (stopped, or cut off from the broker).
    running = [e for e, _ in experiments if e.status == "running"]
    worker_notices = health.worker_notices(running, sites, named=True)
    backup = last_backup()
    return render(request, "clients/dashboard.html", {"sites": sites, "experiments": experiments, "totals": totals,
                                                      "worker_notices": worker_notices, "backup": backup,
                                                      "backup_stale": backup_is_stale(backup)})


def _distinct_ready(sites) -> dict[int, list[tuple[int, int]]]:
    """Each site's datasets in use, counted once per content.

    In use: chosen by an experiment. A site that has not joined one yet counts its
    ready datasets instead. Either way the same file uploaded again (same SHA-256)
    adds no patients, so its rows are not added twice."""
    in_use = set(Participant.objects.filter(site__in=sites, dataset__isnull=False).values_list("dataset_id", flat=True))
    rows = list(Dataset.objects.filter(site__in=sites, status=Dataset.Status.READY).values_list(
        "site_id", "pk", "sha256", "row_count", "positive_count"))
    using = {site_id for site_id, pk, *_ in rows if pk in in_use}
    seen: dict[int, dict[str, tuple[int, int]]] = {}
    for site_id, pk, sha, n, positives in rows:
        if site_id in using and pk not in in_use:
            continue
        seen.setdefault(site_id, {}).setdefault(sha or f"pk:{pk}", (n, positives))
    return {site_id: list(by_sha.values()) for site_id, by_sha in seen.items()}

"""Where an experiment stands, and each visible site's local vs global figures.

Shared by the experiment page, its JSON endpoint, the site home and the dashboard.
Per-site figures are read through the caller's scoped querysets only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from django.db.models import Count

from clients.models import Site
from clients.permissions import visible_sites

from .. import policy
from ..models import ClientUpdate, Experiment, Round, SecureRound
from ..permissions import visible_evaluations, visible_updates
from .charts import clean

# A site is done with a round when its update arrived or it gave up; only an arrived
# update counts as "reported" (the quorum's word), so the two are never mixed up.
FINISHED_UPDATE = (ClientUpdate.Status.RECEIVED, ClientUpdate.Status.FAILED)


@dataclass(frozen=True)
class Progress:
    status: str
    status_label: str
    round: int  # the latest round opened; 0 before the start
    num_rounds: int
    rounds_completed: int
    round_status: str  # of the latest round ("" before the start)
    sites_selected: int
    sites_reported: int  # updates arrived (coordinator); done, arrived or not (a site)
    percent: int
    text: str
    finished: bool
    failure: str = ""  # why it failed or was cancelled, as the viewer may read it (policy)
    sites_failed: int = 0  # the coordinator's only: a site must not learn another's status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_progress(experiment: Experiment, viewer: policy.Viewer | None = None) -> Progress:
    rounds = list(experiment.rounds.order_by("number"))
    completed = sum(r.status == Round.Status.COMPLETED for r in rounds)
    current = rounds[-1] if rounds else None
    selected = finished = received = 0
    if current is not None:
        counts = dict(current.updates.order_by().values_list("status").annotate(n=Count("id")))
        selected = sum(counts.values())
        finished = sum(counts.get(s, 0) for s in FINISHED_UPDATE)
        received = counts.get(ClientUpdate.Status.RECEIVED, 0)
    coordinator = viewer is not None and viewer.is_coordinator
    reported = received if coordinator else finished
    failed = finished - received if coordinator else 0
    n = experiment.num_rounds
    status = experiment.status
    if status == Experiment.Status.COMPLETED:
        fraction = 1.0
    else:
        partial = finished / selected if current and current.status != Round.Status.COMPLETED and selected else 0.0
        fraction = min(1.0, (completed + partial) / n) if n else 0.0
    return Progress(
        status=status,
        status_label=experiment.get_status_display(),
        round=current.number if current else 0,
        num_rounds=n,
        rounds_completed=completed,
        round_status=current.status if current else "",
        sites_selected=selected,
        sites_reported=reported,
        percent=math.floor(fraction * 100),
        text=_progress_text(experiment, current, completed, selected, reported, failed, coordinator),
        finished=status in Experiment.FINISHED,
        failure=_failure(experiment, viewer),
        sites_failed=failed,
    )


def _failure(experiment: Experiment, viewer: policy.Viewer | None) -> str:
    if experiment.status not in Experiment.FINISHED:
        return ""
    why = policy.ending(
        viewer or policy.Viewer(policy.NOBODY), experiment.failure_code, experiment.failure_reason, experiment.status
    )
    return why["text"] if why else ""


def _progress_text(experiment: Experiment, current: Round | None, completed: int, selected: int, reported: int,
                   failed: int, coordinator: bool) -> str:
    n = experiment.num_rounds
    status = experiment.status
    if status == Experiment.Status.DRAFT or current is None:
        return f"Not started · {n} rounds planned"
    if status == Experiment.Status.COMPLETED:
        return f"Completed · {completed} of {n} rounds"
    if status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
        return f"{experiment.get_status_display()} in round {current.number} of {n}"
    prefix = "Paused · " if status == Experiment.Status.PAUSED else ""
    where = f"Round {current.number} of {n}"
    if current.status == Round.Status.OPEN:
        if not coordinator:
            return f"{prefix}{where} · {reported} of {selected} sites done"
        return f"{prefix}{where} · {reported} of {selected} sites reported" + (f" · {failed} failed" if failed else "")
    if current.status == Round.Status.AGGREGATING:
        return f"{prefix}{where} · aggregating"
    return f"{prefix}{where} · {current.get_status_display().lower()}"


@dataclass
class SiteFigures:
    """A site's latest local model (after its own training) and the latest global
    model, both scored on the site's own test rows."""

    site: Site
    local: dict[str, float] | None = None
    local_round: int | None = None
    global_: dict[str, float] | None = None
    global_version: int | None = None


def participant_sites(experiment: Experiment, user) -> list[Site]:
    """The experiment's sites the user may see: all for a coordinator, else their own."""
    return list(visible_sites(user).filter(participations__experiment=experiment).order_by("name"))


def site_figures(experiment: Experiment, user) -> list[SiteFigures]:
    figures = {s.pk: SiteFigures(site=s) for s in participant_sites(experiment, user)}
    updates = (
        visible_updates(user)
        .filter(round__experiment=experiment, status=ClientUpdate.Status.RECEIVED, site__in=list(figures))
        .order_by("round__number")
    )
    for u in updates:
        figures[u.site_id].local, figures[u.site_id].local_round = clean(u.metrics), u.round.number
    evaluations = (
        visible_evaluations(user)
        .filter(version__experiment=experiment, site__in=list(figures))
        .order_by("version__version")
    )
    for e in evaluations:
        figures[e.site_id].global_, figures[e.site_id].global_version = clean(e.metrics), e.version.version
    return list(figures.values())


def round_grid(experiment: Experiment, user) -> tuple[list[int], list[dict[str, Any]]]:
    """Round numbers, and one row per visible site with its update in each round as the
    policy represents it, plus its status label (None where the site was not selected)."""
    viewer = policy.viewer_of(user)
    numbers = list(experiment.rounds.order_by("number").values_list("number", flat=True))
    sites = participant_sites(experiment, user)
    cells: dict[tuple[int, int], dict[str, Any] | None] = {
        (u.site_id, u.round.number): _cell(viewer, u)
        for u in visible_updates(user).filter(round__experiment=experiment, site__in=sites)
    }
    rows = [{"site": s, "cells": [cells.get((s.pk, n)) for n in numbers]} for s in sites]
    return numbers, rows


def round_table_context(numbers: list[int], rows: list[dict[str, Any]], viewer: policy.Viewer) -> dict[str, Any]:
    """The rounds section's context: the per-site strips, the same cells by round for
    the drill-down table, and each failed update's reason in words (not a tooltip)."""
    by_round = [{"number": n, "cells": [(row["site"].name, row["cells"][i]) for row in rows]} for i, n in enumerate(numbers)]
    failures = [
        {"round": n, "site": row["site"].name, "error": cell["error"], "site_note": cell["site_note"]}
        for i, n in enumerate(numbers) for row in rows
        if (cell := row["cells"][i]) is not None and cell["status"] == ClientUpdate.Status.FAILED and cell["error"]
    ]
    strips = [{"site": row["site"], "cells": list(zip(numbers, row["cells"], strict=True))} for row in rows]
    return {"numbers": numbers, "grid": rows, "strips": strips, "by_round": by_round, "failures": failures,
            "show_site": viewer.is_coordinator}


# A site's last step that counted, in words.
_SITE_STEP = {"advertise": "keys advertised", "share": "keys shared", "masked": "masked update sent",
              "consistency": "survivor list signed", "unmask": "shares revealed"}


def secure_table(experiment: Experiment, viewer: policy.Viewer) -> list[dict[str, Any]]:
    """Each secure round's protocol phase and each visible site's place in it (newest first),
    as the policy shows them: every site to the coordinator, a site its own."""
    if not experiment.secure_aggregation:
        return []
    labels = dict(SecureRound.Phase.choices)
    out = []
    for round_ in experiment.rounds.filter(secure__isnull=False).select_related("secure").order_by("-number"):
        shown = policy.secure_phases(viewer, round_)
        if shown is None:
            continue
        sites = [{**p, "label": _SITE_STEP.get(p["last_phase"], "not started") if p["status"] == "active"
                  else f"dropped while {labels.get(p['dropped_in'], p['dropped_in']).lower()}"} for p in shown["sites"]]
        out.append({"number": round_.number, "phase": labels.get(shown["phase"], shown["phase"]),
                    "threshold": shown["threshold"], "dropped": shown.get("dropped"), "sites": sites})
    return out


def _cell(viewer: policy.Viewer, update: ClientUpdate) -> dict[str, Any] | None:
    shown = policy.update(viewer, update)
    return None if shown is None else {**shown, "label": update.get_status_display()}

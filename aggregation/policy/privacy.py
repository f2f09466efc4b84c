"""Each site's privacy spend in an experiment, as each viewer may see it.

The coordinator sees every site's epsilon after each round and the noise it trained
with; a site sees its own only (another site's spend would tell its row count and how
often it trained). The experiment page, live.json and the API all read these rows.
"""

from __future__ import annotations

from typing import Any

from ..models import Experiment, PrivacyLedgerEntry
from .viewer import Viewer


def privacy_rounds(viewer: Viewer, experiment: Experiment) -> list[dict[str, Any]]:
    """One row per site and round (the latest attempt's figures), ordered by site, round.

    ``epsilon`` is the experiment's spend at that site after the round (all its rounds so
    far composed), at ``delta``; ``noise_multiplier`` and ``clip_norm`` what it trained with.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    entries = PrivacyLedgerEntry.objects.filter(experiment=experiment).select_related("dataset__site")
    for e in entries.order_by("created_at", "pk"):
        site = e.dataset.site
        if not viewer.sees_site(site.pk):
            continue
        rows[(site.slug, e.round_number)] = {
            "site": site.slug, "round": e.round_number, "epsilon": e.epsilon_total,
            "epsilon_round": e.epsilon, "delta": e.delta, "noise_multiplier": e.noise_multiplier,
            "clip_norm": e.clip_norm,
        }
    return [rows[k] for k in sorted(rows)]


def guarantee(experiment: Experiment) -> str:
    """The guarantee an experiment asks of each site, in words ('' without DP)."""
    settings = experiment.privacy_settings
    if settings is None:
        return ""
    delta = "1/(10 x rows)" if settings.delta is None else f"{settings.delta:g}"
    return (
        f"({settings.epsilon:g}, {delta})-DP for each patient at each site over the whole "
        f"experiment (record-level DP-SGD, clip {settings.clip_norm:g}); each site's own "
        "budget may stop it earlier."
    )


__all__ = ["guarantee", "privacy_rounds"]

"""What each viewer may see of an experiment: one rule, behind every door.

The API serializers, the web pages, live.json and the exports all build what they show
of experiments, participants, rounds, updates, versions, evaluations and log lines with
the functions here (healthchecks' ``Check.to_dict()`` idea: one representation per
object and viewer), so a rule cannot hold in one door and be forgotten in another.
Querysets are still scoped by ``aggregation/permissions.py`` (another site's object is
a 404); this layer decides which *fields* of a visible object a viewer gets.

Viewers (``viewer_of(user)``): the coordinator; a member or a site admin of one site;
a site's agent token, acting for its site. The three site viewers see the same things.

The coordinator sees every participant, each site's status and the product's reasons
(code + message), per-site figures and the running means; never a row of data, and
never an agent's own free-text note.

A site sees:
- its own participation, its own updates (status, the product's reason for a failure
  by code, its agent's own note), its own evaluations and local figures;
- how many sites take part (not in a draft), never their names, slugs or statuses;
- whether its own update was accepted or rejected in a round, and why; never the lists;
- aggregate figures only, and only final ones backed by at least
  ``FEDHEALTH_MIN_FIGURE_SITES`` (default 3) sites:
  * a version's mean metrics, once its evaluations are closed: every participant
    reported (or gave up), or ``FEDHEALTH_EVALUATION_GRACE_SECONDS`` passed since the
    version was made. The mean is over the reports that had arrived at that moment and
    never moves afterwards (a later report is left out), so no two published figures
    of one version exist to subtract;
  * a round's training loss (sample-weighted mean over the accepted updates), when at
    least that many updates were combined;
  * a round's sample total only when, in addition, every participant was accepted: all
    such totals are then the same sum over all participants, so no two rounds' totals
    differ by one site's rows (a total over a partial set would: round 1 over {A,B,C}
    and round 2 over {A,B,C,D} give D's row count).

What a site can still infer, and why it is accepted:
- From a published mean over k >= 3 sites and its own figure, the mean of the other
  k-1 (>= 2) sites: never one site's figure. The same holds for the training loss
  (each round's loss comes from a different global model, so rounds do not subtract
  to one site's loss).
- From the total sample count of full rounds and its own rows, the sum of the other
  sites' rows (>= 2 sites).
- From the normaliser (global mean/std, fixed at start from every participant's sums)
  and its own summary, the other sites' pooled feature means and standard deviations
  weighted by their row counts; with only two participants these are the other
  site's own. The experiment form and the API docs say so when fewer than three sites
  take part.
- From two consecutive global models and its own update, the weighted sum of the other
  sites' updates of that round; with two participants, the other's update. Only secure
  aggregation would close this; it is the price of sharing the model at all.
- How many sites reported in the current round ("2 of 3 sites reported"): a count,
  not who.

Failure reasons shown to anyone are the product's own (``aggregation.reasons``). A
legacy row without a code reads as an internal error to everyone but the coordinator.
"""

from .comparison import comparison
from .figures import VersionFigures, ending, min_sites, reason, round_metrics, version_figures
from .privacy import guarantee, guarantee_text, privacy_rounds, version_privacy
from .represent import (
    CONFIG_FIELDS,
    evaluation,
    experiment,
    log_event,
    metrics_history,
    participant_slugs,
    participants,
    round_,
    secure_phases,
    update,
    version,
    version_metrics,
)
from .viewer import AGENT, COORDINATOR, MEMBER, NOBODY, SITE_ADMIN, Viewer, viewer_of

__all__ = [
    "guarantee",
    "guarantee_text",
    "privacy_rounds",
    "version_privacy",
    "AGENT",
    "COORDINATOR",
    "MEMBER",
    "NOBODY",
    "SITE_ADMIN",
    "CONFIG_FIELDS",
    "Viewer",
    "comparison",
    "VersionFigures",
    "ending",
    "evaluation",
    "experiment",
    "log_event",
    "metrics_history",
    "min_sites",
    "participant_slugs",
    "participants",
    "reason",
    "round_",
    "secure_phases",
    "round_metrics",
    "update",
    "version",
    "version_figures",
    "version_metrics",
    "viewer_of",
]

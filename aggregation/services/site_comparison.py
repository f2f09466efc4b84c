"""Alone / global / personalised at each site, once per experiment (docs/quality.md).

When an experiment completes, every hosted participant gets a pending
``SiteComparison`` (``open_comparisons``, in the completing transaction) and a
``compare_site`` task on its own queue; an agent site measures the same on its own
machine. Either way the figures arrive through ``record_site_comparison``, the one
door, which checks them like every other figure a site sends (known metric names
only, finite, in range; undefined as null) and stores them once per participant.

The models behind the figures never reach a table: a hosted site's local-only and
personalised models go to its own storage (``datasets/<site>/personal/``), an agent's
stay in its folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.db.models import F

from clients.models import Site
from fedhealth.ml.config import PERSONALIZE_MODES
from fedhealth.ml.metrics import METRIC_KEYS, stored_metrics

from .. import dispatch
from ..models import Experiment, ModelVersion, Participant, SiteComparison

log = logging.getLogger(__name__)

#: The figure sets a site reports, each a metrics dict or None (not measured).
FIGURE_KEYS = ("alone", "global", "personalized")
#: Keys ``figures`` may hold: the three sets and the mode are required, ``version``
#: (the global version number the site compared) is optional.
REQUIRED_KEYS = (*FIGURE_KEYS, "mode")
OPTIONAL_KEYS = ("version",)
#: Metric names a set may hold (fedhealth.ml.metrics plus the training core's "loss").
ALLOWED_METRICS = frozenset(METRIC_KEYS) | {"loss"}
#: Metrics that are probabilities or rates: in [0, 1].
UNIT_METRICS = frozenset(
    {"accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "brier"}
)
#: Losses: in [0, MAX_LOSS].
LOSS_METRICS = frozenset({"log_loss", "loss"})
MAX_LOSS = 1e6
MAX_ROWS = 2**31 - 1


class SiteComparisonInvalid(ValueError):
    """The figures or the moment are refused. ``errors`` maps a field (``alone``,
    ``mode``, ``experiment``, ...) to messages naming the value."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors = {field: list(messages) for field, messages in errors.items()}
        super().__init__("; ".join(f"{f}: {m}" for f, ms in self.errors.items() for m in ms))


def _metric_problem(name: str, value: Any) -> str | None:
    if name not in ALLOWED_METRICS:
        return f"{name!r} is not a metric the platform knows."
    if value is None:
        return None  # undefined at this site (AUROC with one class)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} must be a number or null, not {value!r}."
    if not math.isfinite(value):
        return f"{name} must be finite (null when undefined), not {value!r}."
    if name in UNIT_METRICS and not 0.0 <= value <= 1.0:
        return f"{name} must be between 0 and 1; got {value!r}."
    if name in LOSS_METRICS and not 0.0 <= value <= MAX_LOSS:
        return f"{name} must be between 0 and {MAX_LOSS:g}; got {value!r}."
    if name == "n" and not (0 <= value <= MAX_ROWS and float(value).is_integer()):
        return f"n must be a whole number of rows; got {value!r}."
    return None


def check_figures(figures: Any) -> dict[str, Any]:
    """``figures`` cleaned: each set as stored (``stored_metrics``: every metric present,
    undefined ones null), ``mode`` and ``version``. Raises ``SiteComparisonInvalid``
    naming every problem: unknown or missing keys, unknown metric names, NaN or
    infinite values (undefined is null), values out of range, a mode not in
    ``PERSONALIZE_MODES``, personalised figures without a mode."""
    errors: dict[str, list[str]] = {}

    def fail(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    if not isinstance(figures, Mapping):
        raise SiteComparisonInvalid({"figures": ["figures must be an object."]})
    for key in sorted(set(figures) - {*REQUIRED_KEYS, *OPTIONAL_KEYS}):
        fail(str(key)[:64], f"{str(key)[:64]!r} is not part of a site comparison.")
    for key in REQUIRED_KEYS:
        if key not in figures:
            fail(key, f"{key} is required (null when not measured).")
    clean: dict[str, Any] = {}
    for key in FIGURE_KEYS:
        value = figures.get(key)
        if value is None:
            clean[key] = None
            continue
        if not isinstance(value, Mapping) or not value:
            fail(key, f"{key} must be an object of metrics or null.")
            continue
        problems = [p for name, v in value.items() if (p := _metric_problem(str(name)[:64], v))]
        for problem in problems:
            fail(key, problem)
        if not problems:
            clean[key] = stored_metrics({str(k): (None if v is None else float(v)) for k, v in value.items()})
    mode = figures.get("mode")
    if mode is not None and mode not in PERSONALIZE_MODES:
        fail("mode", f"mode must be one of {', '.join(PERSONALIZE_MODES)} or null, not {mode!r}.")
    elif figures.get("personalized") is not None and mode is None:
        fail("mode", "personalised figures need the mode that built the model.")
    clean["mode"] = mode
    version = figures.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_ROWS):
        fail("version", f"version must be a model version number, not {version!r}.")
    clean["version"] = version
    if errors:
        raise SiteComparisonInvalid(errors)
    return clean


def selected_version(experiment: Experiment) -> ModelVersion | None:
    """The global version a site compares against: the best by validation loss, else
    the latest (what the experiment offers for predictions)."""
    from .selection import best_version

    versions = list(experiment.versions.all())
    return best_version(versions) or (max(versions, key=lambda v: v.version) if versions else None)


def record_site_comparison(
    participant: Participant,
    figures: Mapping[str, Any],
    *,
    source: str,
    personal_file: str = "",
    personal_sha256: str = "",
) -> SiteComparison:
    """Store a site's alone / global / personalised figures, once per participant.

    ``figures``: ``{"alone", "global", "personalized"}`` each a metrics dict
    (fedhealth.ml.metrics; undefined metrics null or left out) or None, ``"mode"``
    (``PERSONALIZE_MODES`` or None) and optionally ``"version"`` (the global version
    number compared; default the selected version). ``source``: "hosted" or "agent".
    Accepted only from a participant that accepted the experiment and holds its
    consent, once the experiment has completed. The first report stands: a repeat
    returns the stored row unchanged. Raises ``SiteComparisonInvalid``.
    """
    if source not in SiteComparison.Source.values:
        raise SiteComparisonInvalid({"source": [f"source must be hosted or agent, not {source!r}."]})
    clean = check_figures(figures)
    with transaction.atomic():
        locked = Participant.objects.select_for_update(of=("self",)).select_related("experiment").get(pk=participant.pk)
        experiment = locked.experiment
        if experiment.status != Experiment.Status.COMPLETED:
            raise SiteComparisonInvalid({"experiment": [f"the experiment is {experiment.status}, not completed."]})
        if locked.consent != Participant.Consent.ACCEPTED:
            raise SiteComparisonInvalid({"participant": ["this site did not take part with consent."]})
        if clean["version"] is not None:
            version = experiment.versions.filter(version=clean["version"]).first()
            if version is None:
                raise SiteComparisonInvalid({"version": [f"this experiment has no version {clean['version']}."]})
        else:
            version = selected_version(experiment)
        row = SiteComparison.objects.select_for_update().filter(participant=locked).first()
        if row is not None and row.status == SiteComparison.Status.DONE:
            return row  # a repeat: the first report stands
        if row is not None and row.source != source:
            raise SiteComparisonInvalid({"source": [f"this site's comparison is measured by its {row.source} worker."]})
        row = row or SiteComparison(participant=locked, source=source)
        row.status = SiteComparison.Status.DONE
        row.mode = clean["mode"] or ""
        row.version = version
        row.alone, row.global_metrics, row.personalized = (clean[k] for k in FIGURE_KEYS)
        row.personal_file, row.personal_sha256 = personal_file, personal_sha256
        row.error_code = ""
        row.save()
    return row


def open_comparisons(experiment: Experiment) -> int:
    """At completion (caller holds the experiment's lock): a pending comparison for each
    hosted participant that took part with consent, and their tasks once the
    transaction commits. A participant that has one already keeps it."""
    hosted = experiment.participants.filter(
        consent=Participant.Consent.ACCEPTED, site__mode=Site.Mode.HOSTED, dataset__isnull=False,
        comparison__isnull=True,
    )
    rows = [SiteComparison(participant=p, source=SiteComparison.Source.HOSTED) for p in hosted]
    SiteComparison.objects.bulk_create(rows, ignore_conflicts=True)
    if rows:
        experiment_id = experiment.pk
        transaction.on_commit(lambda: dispatch.queue_site_comparisons(experiment_id))
    return len(rows)


def begin_comparison(comparison_id: int) -> int:
    """Claim a hosted comparison for a try: pending (or interrupted) -> running, with
    ``attempts`` counted. Returns the try number, 0 when there is nothing to do (done
    or given up): a retried or redelivered task stops here."""
    claimed = SiteComparison.objects.filter(
        pk=comparison_id, status__in=[SiteComparison.Status.PENDING, SiteComparison.Status.RUNNING],
    ).update(status=SiteComparison.Status.RUNNING, attempts=F("attempts") + 1)
    if not claimed:
        return 0
    return SiteComparison.objects.values_list("attempts", flat=True).get(pk=comparison_id)


def fail_comparison(comparison_id: int, code: str) -> bool:
    """Give a comparison up with a reason code (aggregation.reasons); False when it had
    finished already."""
    return bool(SiteComparison.objects.filter(
        pk=comparison_id, status__in=[SiteComparison.Status.PENDING, SiteComparison.Status.RUNNING],
    ).update(status=SiteComparison.Status.FAILED, error_code=code))


def personal_name(site: Site, experiment: Experiment, kind: str) -> str:
    """Where a hosted site keeps its ``kind`` ("personal" or "local") model of an
    experiment: under its own private prefix, which no page or endpoint serves."""
    return f"datasets/{site.slug}/personal/e{experiment.pk}-{kind}.safetensors"


def ready_to_compare(comparison_id: int) -> bool:
    """Whether the selected version is settled: the last version's evaluations are
    closed (every site reported or gave up, or the evaluation grace passed), as an
    agent waits for too, so hosted sites and agents compare against the same version.
    The site evaluates the last version itself first if it has not yet. A row that is
    not ready is touched, so the sweeper does not take the wait for a lost message."""
    from django.utils import timezone

    from ..policy.figures import version_figures
    from .sitework import evaluate_hosted

    row = SiteComparison.objects.select_related("participant__experiment").get(pk=comparison_id)
    experiment = row.participant.experiment
    latest = experiment.versions.order_by("-version").first()
    if latest is None or row.status not in (SiteComparison.Status.PENDING, SiteComparison.Status.RUNNING):
        return True  # nothing to wait for: the task's claim decides
    evaluate_hosted(latest.pk, row.participant.site_id)
    if version_figures([latest])[latest.pk].final:
        return True
    SiteComparison.objects.filter(pk=comparison_id).update(updated_at=timezone.now())
    return False


def compare_hosted(comparison_id: int) -> str:
    """A hosted site's end-of-experiment work, on its own queue: its local-only model
    and its personalised model (the experiment's mode, from the selected global
    version), scored with the global model on its own test rows; both models saved to
    its private storage, the figures recorded. A SiteDataError propagates (the task
    gives the comparison up with its code)."""
    import json

    from fedhealth.ml.comparison import compare_at_site
    from fedhealth.ml.metrics import json_safe
    from fedhealth.ml.stats import Normalizer

    from . import artifacts, consent
    from .sitework import evaluate_hosted, site_split

    row = SiteComparison.objects.select_related("participant__experiment", "participant__site").get(pk=comparison_id)
    participant = row.participant
    experiment, site = participant.experiment, participant.site
    if not consent.has_consent(experiment, site.pk):  # withdrawn since: its rows are not read
        fail_comparison(comparison_id, consent.refusal_code(experiment, site.pk))
        return "skipped: no consent"
    latest = experiment.versions.order_by("-version").first()
    if latest is None:
        fail_comparison(comparison_id, "comparison_failed")
        return "failed: no global model"
    # The site holds the last version's evaluation in its own hands: its validation
    # loss must count before the selected version is chosen.
    evaluate_hosted(latest.pk, site.pk)
    version = selected_version(experiment) or latest
    split = site_split(experiment, site)
    mode = None if experiment.personalize == Experiment.Personalize.OFF else experiment.personalize
    result = compare_at_site(
        split, experiment.federated_config(), artifacts.load_weights(version.weights_file, version.sha256),
        Normalizer.from_dict(experiment.normalizer), mode=mode,
    )
    meta = {"experiment": str(experiment.pk), "site": site.slug}
    artifacts.save_weights(
        personal_name(site, experiment, "local"), result.local,
        meta | {"kind": "local", "normalizer": json.dumps(result.local_normalizer.to_dict())},
    )
    personal_file = personal_sha = ""
    if result.personal is not None:
        personal_file = personal_name(site, experiment, "personal")
        personal_sha = artifacts.save_weights(
            personal_file, result.personal,
            meta | {"kind": "personal", "mode": mode or "", "chosen": result.chosen, "version": str(version.version)},
        )
    figures = json_safe({**result.figures, "version": version.version})
    record_site_comparison(
        participant, figures, source=SiteComparison.Source.HOSTED,
        personal_file=personal_file, personal_sha256=personal_sha,
    )
    return "compared"


__all__ = [
    "ALLOWED_METRICS",
    "SiteComparisonInvalid",
    "begin_comparison",
    "check_figures",
    "compare_hosted",
    "fail_comparison",
    "open_comparisons",
    "ready_to_compare",
    "record_site_comparison",
    "selected_version",
]

"""Work done *at a site*: local training and evaluation on the site's own rows.

In the hosted mode these run in a Celery worker consuming only the site's queue
(``site.<slug>``), next to the site's private storage. Only weights and aggregate
figures leave these functions; the rows stay in memory here. A remote site agent
does the same with the same core functions on its own machine.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from django.db import transaction
from django.utils import timezone

from clients.models import Site
from clients.services import DatasetFileChanged, load_dataset_arrays, verify_dataset_file
from fedhealth.ml.federation import SiteSplit, split_site
from fedhealth.ml.metrics import defined_counts, json_safe, mean_metrics, stored_metrics
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.sitework import (
    SitePlan,
    evaluate_at_site,
    plan_site_round,
    privacy_spend,
    train_at_site,
)
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.strategies import get_strategy
from fedhealth.ml.types import Metrics

from ..models import ClientUpdate, Experiment, ModelVersion, Participant, SiteEvaluation
from ..reasons import Reason
from . import artifacts, consent, failures, privacy
from .rounds import claim_update, fail_update, submit_update
from .selection import validation_summary

log = logging.getLogger(__name__)


class SiteDataError(Exception):
    """The site's data cannot be used (missing, changed or invalid); not worth retrying."""

    code = Reason.DATA_UNUSABLE


class SiteDataChanged(SiteDataError):
    """The dataset's stored file disappeared or changed after it was validated."""

    code = Reason.DATA_CHANGED


def site_split(experiment: Experiment, site: Site) -> SiteSplit:
    """The site's rows split into train/test with the experiment's seed (stable across
    rounds, so the test rows are never trained on)."""
    participant = (
        Participant.objects.select_related("dataset")
        .defer("dataset__summary", "dataset__validation_report")  # JSON this never reads
        .get(experiment=experiment, site=site)
    )
    dataset = participant.dataset
    if dataset is None or not dataset.file:
        raise SiteDataError(f"site {site.slug} has no hosted dataset for this experiment")
    try:
        # Every task, before the cached split is trusted: a file removed or replaced
        # under a running worker must not be trained on from memory (one stat call
        # while the file is unchanged; see verify_dataset_file).
        verify_dataset_file(dataset)
    except DatasetFileChanged as exc:
        for stale in [k for k in _splits if k[0] == dataset.pk]:
            del _splits[stale]
        raise SiteDataChanged(str(exc)) from exc
    key = (dataset.pk, dataset.file.name, dataset.sha256, experiment.test_fraction, experiment.seed)
    if key in _splits:
        _splits.move_to_end(key)
        return _splits[key]
    try:
        data = load_dataset_arrays(dataset)
        split = split_site(site.slug, data.X, data.y, test_fraction=experiment.test_fraction, seed=experiment.seed)
    except (ValueError, OSError) as exc:
        raise SiteDataError(str(exc)) from exc
    _splits[key] = split
    while len(_splits) > 1 and sum(_split_bytes(s) for s in _splits.values()) > _SPLIT_CACHE_BYTES:
        _splits.popitem(last=False)
    return split


def _split_bytes(split: SiteSplit) -> int:
    return split.X_train.nbytes + split.y_train.nbytes + split.X_test.nbytes + split.y_test.nbytes


# A site's worker re-reads the same validated CSV every round; keeping the parsed
# splits in this process (keyed by the file's checksum) saves a parse per task. The
# rows stay in the site's own worker process, as they would on disk. Bounded by bytes,
# not entries: an all-in-one worker serves every hosted site in turn, and an entry
# bound below the number of sites evicted each split just before its next use (10
# sites, 8 entries: every task re-parsed its CSV).
_splits: OrderedDict[tuple, SiteSplit] = OrderedDict()
_SPLIT_CACHE_BYTES = 256 * 2**20


def train_hosted_update(update_id: int) -> str:
    """Train one site's update for a round and submit it. Returns what happened."""
    # Read once for the claim, the work and the submission (each query of these joined
    # rows cost more to build in the ORM than to run).
    update = ClientUpdate.objects.select_related("round__experiment", "site").filter(pk=update_id).first()
    if update is None or not claim_update(update_id, loaded=update):  # checks the site's consent first
        return "skipped: already reported, round closed, or no consent"
    experiment = update.round.experiment
    try:
        split = site_split(experiment, update.site)
    except SiteDataError as exc:
        log.warning("update %s: the site's data cannot be used: %s", update_id, exc)
        fail_update(update_id, getattr(exc, "code", Reason.DATA_UNUSABLE))
        return "failed: site data"
    plan = site_plan(experiment, update.site, update.round.number)
    version = artifacts.global_version_for(update.round)
    weights, _ = artifacts.start_weights(experiment, version)
    # The site has the latest global model in hand: evaluating it here saves a
    # separate evaluation task (and a second load of rows and weights) per round.
    if version is not None and not SiteEvaluation.objects.filter(version=version, site=update.site).exists():
        record_evaluation(version.pk, update.site.pk, *evaluate_at_site(
            plan.model, weights, plan.normalizer, split, positive=plan.train.positive,
            validation_fraction=plan.validation_fraction, split_seed=plan.split_seed,
        ))
    spend = None
    if plan.privacy is not None:
        # The site's own ledger and budget decide, whatever the experiment asks: the spend
        # is derived from its own rows and recorded before it trains.
        try:
            spend = privacy_spend(plan, split)
            assert spend is not None
            dataset_id = Participant.objects.values_list("dataset_id", flat=True).get(
                experiment=experiment, site=update.site
            )
            privacy.reserve_round(dataset_id, experiment, spend)
        except ValueError:
            log.warning("update %s: the privacy settings cannot be met at this site", update_id)
            fail_update(update_id, Reason.PRIVACY_SETTINGS)
            return "failed: privacy settings"
        except privacy.PrivacyBudgetExceeded as exc:
            log.warning("update %s: refused by the site's privacy budget: %s", update_id, exc.detail)
            fail_update(update_id, Reason.PRIVACY_BUDGET, detail=exc.detail)
            return "failed: privacy budget"
    try:
        # The local model's figures on the site's own test rows, from the same call.
        result = train_at_site(plan, weights, split, spend=spend)
    except ValueError:
        log.exception("update %s: local training failed", update_id)
        fail_update(update_id, Reason.TRAINING_FAILED)
        return "failed: training"
    local = json_safe(result.metrics)  # NaN (undefined at this site) travels as null
    if experiment.secure_aggregation:  # the update stays here until it leaves masked
        from .secure_round import keep_at_site

        keep_at_site(update_id, result.weights, num_samples=result.num_samples, loss=result.loss, metrics=local)
        return "kept for secure aggregation"
    submit_update(
        update_id, result.weights, num_samples=result.num_samples, loss=result.loss,
        metrics=local, source="hosted", loaded=update,
    )
    return "submitted"


def evaluate_hosted(version_id: int, site_id: int) -> str:
    """Evaluate a global model version on a hosted site's held-out rows."""
    version = ModelVersion.objects.select_related("experiment").get(pk=version_id)
    site = Site.objects.get(pk=site_id)
    if SiteEvaluation.objects.filter(version=version, site=site).exists():
        return "skipped: already evaluated"
    if not consent.has_consent(version.experiment, site.pk):  # withdrawn: its rows are not used
        failures.fail_evaluation(version.pk, site.pk, consent.refusal_code(version.experiment, site.pk))
        return "skipped: no consent"
    # A SiteDataError propagates: the evaluate_site task records it as given up.
    split = site_split(version.experiment, site)
    weights = artifacts.load_weights(version.weights_file, version.sha256)
    model = ModelConfig.from_dict(version.model_config)
    normalizer = Normalizer.from_dict(version.normalizer)
    positive = version.experiment.schema_obj.positive_value
    experiment = version.experiment
    record_evaluation(version.pk, site.pk, *evaluate_at_site(
        model, weights, normalizer, split, positive=positive,
        validation_fraction=experiment.validation_fraction, split_seed=experiment.seed,
    ))
    return "evaluated"


def site_plan(experiment: Experiment, site: Site, round_number: int) -> SitePlan:
    """The site-work contract for one site and round: the hosted worker trains with it
    and an agent receives it, as is, in its claim response."""
    return plan_site_round(
        site=site.slug, round_number=round_number, experiment_seed=experiment.seed,
        model=experiment.model_config, train=experiment.train_config(experiment.seed),
        strategy=get_strategy(experiment.strategy, **experiment.strategy_params),
        normalizer=Normalizer.from_dict(experiment.normalizer), test_fraction=experiment.test_fraction,
        privacy=experiment.privacy_settings, validation_fraction=experiment.validation_fraction,
    )


def record_evaluation(version_id: int, site_id: int, metrics: Metrics, curves: dict | None = None) -> bool:
    """Store a site's evaluation of a version (once) and refresh the version's mean.

    An undefined metric (NaN: AUROC at a site with one class) is stored as null, never
    as 0 or NaN (PostgreSQL's jsonb has no NaN); the mean is over the sites where each
    metric is defined, and ``defined`` says over how many.
    """
    metrics, curves = stored_metrics(metrics), json_safe(curves or {})
    with transaction.atomic():
        # Every evaluation of a version is recorded here, under this row lock: the
        # check below and the insert cannot race (the unique constraint stays as the
        # backstop). Only the metrics are read back, never the other sites' curves.
        version = ModelVersion.objects.select_for_update().get(pk=version_id)
        earlier = list(version.evaluations.order_by("pk").values_list("site_id", "metrics"))
        if any(site == site_id for site, _ in earlier):
            return False  # a duplicate delivery: the first evaluation stands
        SiteEvaluation.objects.create(version=version, site_id=site_id, metrics=metrics, curves=curves)
        reported = [m for _, m in earlier] + [metrics]
        version.metrics = {
            "mean": json_safe(mean_metrics(reported)),
            "defined": defined_counts(reported),
            "sites_reported": len(reported),
        } | validation_summary(reported)  # what the best version is selected by
        version.save(update_fields=["metrics"])
        expected = Participant.objects.filter(
            experiment_id=version.experiment_id, consent=Participant.Consent.ACCEPTED
        ).count()
        if len(reported) == expected:
            per_site = version.evaluations.order_by("pk").values_list("site__slug", "metrics")
            artifacts.write_log_event(version.experiment, {
                "event": "evaluated", "round": version.version, "version": version.version,
                "at": timezone.now().isoformat(),
                "mean": version.metrics["mean"],
                "defined": version.metrics["defined"],
                "per_site": dict(per_site),
            })
    return True


__all__ = ["SiteDataChanged", "SiteDataError", "evaluate_hosted", "record_evaluation", "site_plan", "site_split", "train_hosted_update"]

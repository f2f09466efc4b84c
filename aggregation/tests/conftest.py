import pytest


def train_pending(experiment_id: int) -> bool:
    """Train every hosted site's pending update of the experiment's open rounds, in this
    process; True when there was any (the first step of every in-process driver)."""
    from aggregation import services
    from aggregation.models import ClientUpdate, Round

    pending = ClientUpdate.objects.filter(
        round__experiment_id=experiment_id, round__status=Round.Status.OPEN,
        status=ClientUpdate.Status.PENDING, site__mode="hosted",
    ).values_list("pk", flat=True)
    for update_id in pending:
        services.train_hosted_update(update_id)
    return bool(pending)


@pytest.fixture
def drive():
    """Run an experiment's work in this process, in the order Celery would: hosted
    training, aggregation, evaluation; until nothing is left to do."""
    from aggregation import services, tasks
    from aggregation.models import (
        EvaluationAttempt,
        Experiment,
        ModelVersion,
        Round,
        SiteEvaluation,
    )

    def run(experiment_id: int, *, max_steps: int = 500) -> Experiment:
        for _ in range(max_steps):
            progressed = train_pending(experiment_id)
            for round_id in Round.objects.filter(
                experiment_id=experiment_id, status=Round.Status.AGGREGATING
            ).values_list("pk", flat=True):
                services.aggregate_round(round_id)
                progressed = True
            for version in ModelVersion.objects.filter(experiment_id=experiment_id):
                done = set(SiteEvaluation.objects.filter(version=version).values_list("site_id", flat=True))
                done |= set(EvaluationAttempt.objects.filter(
                    version=version, status=EvaluationAttempt.Status.FAILED).values_list("site_id", flat=True))
                for site_id in version.experiment.participants.values_list("site_id", flat=True):
                    if site_id not in done:
                        # Through the task, as a worker would: a site whose data broke
                        # ends as a failed evaluation attempt instead of raising here.
                        tasks.evaluate_site.apply(args=[version.pk, site_id])
                        progressed = True
            if not progressed:
                break
        return Experiment.objects.get(pk=experiment_id)

    return run

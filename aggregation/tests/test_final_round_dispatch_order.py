"""At the last round the sites evaluate the final version before they start their
end-of-experiment comparisons: one worker takes a site's queue in order, and each
comparison is a full local-only training, so the other order held the experiment's
final figures back behind every site's comparison."""

from __future__ import annotations

import pytest
from celery.signals import before_task_publish

from aggregation import services
from aggregation.models import ClientUpdate, Round

pytestmark = pytest.mark.django_db


def test_final_evaluations_are_sent_before_the_comparisons(make_site, make_dataset, make_experiment,
                                                            django_capture_on_commit_callbacks):
    # Prepare: a one-round experiment whose sites have trained; the round is aggregating
    datasets = [make_dataset(make_site(f"site-{i}"), rows=120, seed=i) for i in range(2)]
    experiment = make_experiment(datasets, num_rounds=1)
    services.start_experiment(experiment.pk)
    for update in ClientUpdate.objects.filter(round__experiment=experiment):
        assert services.train_hosted_update(update.pk) == "submitted"
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.status == Round.Status.AGGREGATING
    sent: list[str] = []

    def record(sender=None, headers=None, **kwargs):
        sent.append(headers["task"])

    before_task_publish.connect(record)
    try:
        # Execute: the aggregation that completes the experiment, its commit hooks run
        with django_capture_on_commit_callbacks(execute=True):
            services.aggregate_round(round_.pk)
    finally:
        before_task_publish.disconnect(record)

    # Assert: both sites' evaluations, then both comparisons
    assert sent == ["aggregation.evaluate_site"] * 2 + ["aggregation.compare_site"] * 2

"""A referral centre whose patients all have the condition takes part through its agent
(issue 10): the agent validates its CSV (a warning), registers, trains and evaluates; the
metrics that need both classes are stored as null for it."""

from __future__ import annotations

import pytest

from aggregation.models import ClientUpdate, Experiment, ModelVersion
from fedhealth.ml.synthetic import generate_site

from .test_agent_loop import make_agent, start

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


def test_a_single_label_agent_site_trains_and_reads_na(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery, tmp_path
):
    (referral, referral_token), (general, general_token) = agent_sites
    pool = generate_site(400, seed=9, healthy_fraction=0.2)
    referral_csv = tmp_path / "referral.csv"
    pool[pool.healthy == 0].head(40).to_csv(referral_csv, index=False)
    agents = [make_agent(live_server.url, referral_token, referral_csv),
              make_agent(live_server.url, general_token, agent_csv(general.slug, rows=240, seed=21))]
    assert agents[0].data.report.counts == {"single_class": 1}  # a warning: the rows load
    ids = [a.register() for a in agents]
    experiment_id = start(client_for(charlie), ids)

    for _ in range(6):
        for a in agents:
            a.run_once()

    experiment = Experiment.objects.get(pk=experiment_id)
    assert experiment.status == "completed", experiment.failure_reason
    for version in ModelVersion.objects.filter(experiment=experiment):
        at = {e.site_id: e.metrics for e in version.evaluations.all()}
        assert at[referral.pk]["auroc"] is None and at[referral.pk]["balanced_accuracy"] is None
        assert at[referral.pk]["sensitivity"] is not None  # unhealthy patients flagged: defined
        assert isinstance(at[general.pk]["auroc"], float)
        assert version.metrics["defined"]["auroc"] == 1 and version.metrics["defined"]["accuracy"] == 2
    local = ClientUpdate.objects.filter(round__experiment=experiment, site=referral)
    assert local.count() == 2 and all(u.metrics["auroc"] is None for u in local)

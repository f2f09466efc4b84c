"""End to end (issue 10): gunicorn, a Celery worker, a hosted site and two agent processes,
one of them a referral centre whose patients all have the condition. With a validation
slice and FedPer, every site reports alone / global / personalised once; the agents keep
their two models in their own folders and send figures only (checked on the wire), and
the referral centre's two-class figures read n/a (null)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from aggregation.models import Experiment, SiteComparison
from aggregation.services.site_comparison import selected_version
from clients.models import ApiToken, Dataset
from fedhealth.ml.synthetic import generate_site
from tests.consent_support import accept_invitations
from tests.support import wait_until

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),
]


@pytest.fixture
def hosted(make_site, make_dataset):
    """The hosted site's dataset, created before the worker starts (it picks its queues then)."""
    return make_dataset(make_site("hosted-0"), rows=240, seed=50)


def compared(experiment_id: int) -> bool:
    experiment = Experiment.objects.get(pk=experiment_id)
    if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
        pytest.fail(f"experiment {experiment.status}: {experiment.failure_reason}")
    return SiteComparison.objects.filter(
        participant__experiment_id=experiment_id, status=SiteComparison.Status.DONE
    ).count() == 3


def test_a_referral_centre_agent_reports_its_comparison_with_na_figures(
    hosted, stack, start_agent, agent_sites, agent_csv, charlie, tmp_path_factory
):
    (referral, referral_token), (general, general_token) = agent_sites
    folder = tmp_path_factory.mktemp("site-referral-private")
    pool = generate_site(400, seed=9, healthy_fraction=0.2)
    referral_csv = folder / "local.csv"
    pool[pool.healthy == 0].head(40).to_csv(referral_csv, index=False)  # every patient unhealthy
    general_csv = agent_csv(general.slug, rows=240, seed=51)
    agents = [start_agent(referral_token, referral_csv, referral.slug),
              start_agent(general_token, general_csv, general.slug)]
    wait_until(lambda: Dataset.objects.filter(site__mode="agent").count() == 2, timeout=120,
               what="agent registrations", watch=[stack.web, *agents])

    coordinator = requests.Session()
    coordinator.headers["Authorization"] = f"Bearer {ApiToken.issue(user=charlie)[1]}"
    base = f"{stack.url}/api/v1"
    datasets = [hosted.pk, *Dataset.objects.filter(site__mode="agent").values_list("pk", flat=True)]
    created = coordinator.post(f"{base}/experiments/", json={
        "name": "referral e2e", "datasets": datasets, "num_rounds": 2, "local_epochs": 1,
        "min_sites": 3, "validation_fraction": 0.2,
    })
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    Experiment.objects.filter(pk=experiment_id).update(personalize="fedper")
    accept_invitations(experiment_id)
    assert coordinator.post(f"{base}/experiments/{experiment_id}/start/").status_code == 200

    wait_until(lambda: compared(experiment_id), timeout=500, what="the three comparisons",
               watch=[stack.web, stack.worker, *agents])

    experiment = Experiment.objects.get(pk=experiment_id)
    chosen = selected_version(experiment)
    for version in experiment.versions.all():  # the agents' validation losses counted
        assert version.metrics["validation_sites"] == 3
    rows = {c.participant.site.slug: c for c in SiteComparison.objects.select_related("participant__site")}
    assert {slug: r.source for slug, r in rows.items()} == {
        "hosted-0": "hosted", referral.slug: "agent", general.slug: "agent"}
    for slug in (referral.slug, general.slug):
        # An agent compares once every site's evaluations are final: the version the
        # experiment offers. (The hosted worker compares at completion, against the
        # selection at that moment, before the agents' last reports may have moved it.)
        assert rows[slug].version == chosen
    for row in rows.values():
        assert row.mode == "fedper" and row.version is not None
        assert all(isinstance(m["accuracy"], float) for m in (row.alone, row.global_metrics, row.personalized))
    for metrics in (rows[referral.slug].alone, rows[referral.slug].global_metrics, rows[referral.slug].personalized):
        assert metrics["auroc"] is None and metrics["balanced_accuracy"] is None  # n/a

    # The models stay in each agent's folder; on the wire, figures only.
    sent = [r for r in stack.proxy.requests if r.path.endswith("/comparison/")]
    assert len(sent) == 2 and all(r.method == "POST" and len(r.body) < 16 * 1024 for r in sent)
    for csv in (referral_csv, general_csv):
        state = Path(csv).parent / ".fedhealth-agent" / "comparisons"
        record = json.loads((state / f"e{experiment_id}.json").read_text())
        assert record["posted"] is True and record["figures"]["version"] == chosen.version
        for kind in ("local", "personal"):
            model = (state / f"e{experiment_id}-{kind}.safetensors").read_bytes()
            tensors = model[8 + int.from_bytes(model[:8], "little"):]  # past the JSON header
            assert len(tensors) > 100
            assert not any(tensors[:64] in r.everything for r in stack.proxy.requests)

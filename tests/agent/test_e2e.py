"""End to end: gunicorn, a Celery worker, two agent processes and one hosted site run a
3-round experiment; every byte the agents send is captured, and none of it is a row."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.services import artifacts
from clients.models import ApiToken, Dataset
from tests.consent_support import accept_invitations
from tests.support import wait_until

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),
]

FEATURES = ["heart_rate", "systolic_bp", "diastolic_bp", "spo2"]


def api(stack, user):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ApiToken.issue(user=user)[1]}"
    session.base = f"{stack.url}/api/v1"
    return session


def finished(experiment_id: int, sites: int) -> bool:
    experiment = Experiment.objects.get(pk=experiment_id)
    if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
        pytest.fail(f"experiment {experiment.status}: {experiment.failure_reason}")
    versions = ModelVersion.objects.filter(experiment_id=experiment_id)
    return experiment.status == Experiment.Status.COMPLETED and all(
        v.metrics.get("sites_reported") == sites for v in versions
    )


def row_needles(path: Path) -> list[bytes]:
    """Byte strings that would betray a row: every data line as written, and, for the
    rows holding a feature's extreme (whose single values do appear in the summary),
    the whole feature vector as text, JSON and packed float32/float64."""
    lines = [line for line in path.read_bytes().splitlines()[1:] if line.strip()]
    needles = list(lines)
    frame = pd.read_csv(path)
    extremes = {int(frame[c].idxmin()) for c in FEATURES} | {
        int(frame[c].idxmax()) for c in FEATURES
    }
    for i in sorted(extremes)[:20] + list(range(10)):
        values = frame.loc[i, FEATURES].to_numpy(dtype=np.float64)
        needles += [
            ",".join(frame.loc[i, FEATURES].astype(str)).encode(),
            ", ".join(repr(float(v)) for v in values).encode(),
            struct.pack("<4f", *values),
            struct.pack("<4d", *values),
        ]
    return needles


@pytest.fixture
def hosted(make_site, make_dataset):
    """The hosted site's dataset, created before the worker starts (it picks its queues then)."""
    return make_dataset(make_site("hosted-0"), rows=300, seed=30)


def test_two_agents_and_a_hosted_site_complete_three_rounds_without_sending_a_row(
    hosted, stack, start_agent, agent_sites, agent_csv, charlie, settings
):
    paths = [agent_csv(site.slug, rows=300, seed=31 + i) for i, (site, _) in enumerate(agent_sites)]
    media = Path(settings.MEDIA_ROOT).resolve()
    assert all(
        media not in p.resolve().parents for p in paths
    )  # the server never sees these folders
    agents = [
        start_agent(token, path, site.slug)
        for (site, token), path in zip(agent_sites, paths, strict=True)
    ]
    wait_until(
        lambda: Dataset.objects.filter(site__mode="agent").count() == 2,
        timeout=120,
        what="agent registrations",
        watch=[stack.web, *agents],
    )

    coordinator = api(stack, charlie)
    datasets = [
        hosted.pk,
        *Dataset.objects.filter(site__mode="agent")
        .order_by("site__slug")
        .values_list("pk", flat=True),
    ]
    created = coordinator.post(
        f"{coordinator.base}/experiments/",
        json={
            "name": "mixed e2e",
            "datasets": datasets,
            "num_rounds": 3,
            "local_epochs": 1,
            "min_sites": 3,
        },
    )
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    accept_invitations(experiment_id)  # each site's admin accepts, on the web
    assert (
        coordinator.post(f"{coordinator.base}/experiments/{experiment_id}/start/").status_code
        == 200
    )

    wait_until(
        lambda: finished(experiment_id, 3),
        timeout=400,
        what="the experiment",
        watch=[stack.web, stack.worker, *agents],
    )

    experiment = Experiment.objects.get(pk=experiment_id)
    for r in Round.objects.filter(experiment=experiment):
        received = r.updates.filter(status=ClientUpdate.Status.RECEIVED)
        assert received.count() == 3 and sorted(r.metrics["accepted"]) == sorted(
            received.values_list("site__slug", flat=True)
        )
        assert sorted(received.values_list("source", flat=True)) == ["agent", "agent", "hosted"]
    versions = ModelVersion.objects.filter(experiment=experiment).order_by("version")
    assert [v.version for v in versions] == [1, 2, 3]
    for v in versions:
        artifacts.load_weights(v.weights_file, v.sha256)
        assert v.evaluations.count() == 3
    history = coordinator.get(f"{coordinator.base}/experiments/{experiment_id}/metrics/").json()
    assert [r["sites_reported"] for r in history["rounds"]] == [3, 3, 3]

    # Every request body the agents sent, captured on the wire.
    sent = stack.proxy.requests
    uploads = [r for r in sent if r.method == "POST" and r.path.endswith("/update/")]
    assert len(uploads) == 6 and all(len(r.body) > 1000 for r in uploads)
    assert sum(r.path.endswith("/evaluation/") for r in sent) == 6
    registrations = [r for r in sent if r.path.endswith("/agent/datasets/")]
    assert len(registrations) == 2
    for path in paths:
        needles = row_needles(path)
        assert len(needles) > 300
        for request in sent:
            blob = request.everything
            leaked = [n for n in needles if n in blob]
            assert not leaked, f"{request.method} {request.path} carries row data: {leaked[:3]}"

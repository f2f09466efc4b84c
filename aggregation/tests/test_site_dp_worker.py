"""Site-level DP on a real worker (`manage.py worker` in its own process, the embedded
filesystem broker): hosted sites train, the server aggregates with DP-FedAvg, and every
version states the site-level guarantee that Opacus's accountant gives for its rounds."""

from __future__ import annotations

import pytest

from aggregation.models import Experiment, ModelVersion, Round
from aggregation.policy import guarantee_text, version_privacy
from aggregation.policy.viewer import COORDINATOR, Viewer
from aggregation.services import artifacts
from fedhealth.ml.privacy import site_epsilon
from tests.support import manage, process_env, wait_until, worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(900)]


def test_a_site_level_dp_experiment_runs_on_a_real_worker(settings, tmp_path, make_site, make_dataset, make_experiment):
    env = process_env(settings.MEDIA_ROOT) | {
        "CELERY_BROKER_URL": "filesystem://", "CELERY_FILESYSTEM_BROKER_DIR": str(tmp_path / "broker"),
    }
    datasets = [make_dataset(make_site(f"hospital-{i}"), rows=300, seed=20 + i) for i in range(3)]
    experiment = make_experiment(datasets, num_rounds=2, min_sites=3, dp_mode="site", dp_epsilon=40.0,
                                 dp_clip_norm=0.5)
    process = worker(env, tmp_path)
    process.start()
    try:
        manage(env, "experiment", "start", str(experiment.pk))

        def done() -> bool:
            e = Experiment.objects.get(pk=experiment.pk)
            if e.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                pytest.fail(f"experiment {e.status}: {e.failure_reason}")
            return e.status == Experiment.Status.COMPLETED

        wait_until(done, timeout=600, what="the site-level DP experiment", watch=[process])
    finally:
        process.kill()

    rounds = list(Round.objects.filter(experiment=experiment).order_by("number"))
    assert [r.number for r in rounds] == [1, 2]
    z = rounds[0].metrics["site_dp"]["noise_multiplier"]
    for r in rounds:
        figures = r.metrics["site_dp"]
        assert sorted(r.metrics["accepted"]) == ["hospital-0", "hospital-1", "hospital-2"]
        assert figures["noise_added_by"] == "server" and figures["denominator"] == 3
        assert figures["noise_multiplier"] == z and figures["clip_norm"] == 0.5
        assert figures["epsilon"] == pytest.approx(site_epsilon(z, 1.0, r.number, 1e-5))
    assert 0.9 * 40 <= rounds[-1].metrics["site_dp"]["epsilon"] <= 40
    versions = list(ModelVersion.objects.filter(experiment=experiment).select_related("round", "experiment"))
    shown = version_privacy(Viewer(role=COORDINATOR), versions)
    for v in versions:
        artifacts.load_weights(v.weights_file, v.sha256)
        assert shown[v.pk]["epsilon"] == v.round.metrics["site_dp"]["epsilon"]
        assert "for each site's whole contribution (site-level DP-FedAvg)" in guarantee_text(shown[v.pk])
    logged = [e for e in artifacts.read_log(experiment) if e["event"] == "round_completed"]
    assert [e["site_dp"]["epsilon"] for e in logged] == [r.metrics["site_dp"]["epsilon"] for r in rounds]

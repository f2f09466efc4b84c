"""Fixtures of the web tests: a small, fully populated world built through the ORM.

Site A ("Alderley") and site B ("Brookfield") share one completed experiment; A alone
takes part in a second one; a third is a draft. Site A's figures are distinctive
numbers (see ``World.a_secrets``) so a test can prove none of them reaches site B's member.
Experiments are written straight to the ORM (fast, exact figures); tests that need a
real run use ``drive`` from aggregation/tests/conftest.py. The aggregation web tests
import ``world`` from here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone

A_LOCAL = {"accuracy": 0.8137, "auroc": 0.9071, "loss": 0.4129}
A_GLOBAL = {"accuracy": 0.8263, "auroc": 0.9112, "loss": 0.3987}
B_LOCAL = {"accuracy": 0.7422, "auroc": 0.8415, "loss": 0.5311}
B_GLOBAL = {"accuracy": 0.7611, "auroc": 0.8533, "loss": 0.5127}
A_ERROR = "alderley ward-7 feed offline"
A_SAMPLES = 309


def metrics(figures: dict[str, float], n: float = 77.0) -> dict[str, float]:
    acc = figures["accuracy"]
    return {
        "accuracy": acc, "balanced_accuracy": acc, "auroc": figures["auroc"], "sensitivity": acc,
        "specificity": acc, "precision": acc, "f1": acc, "brier": 0.1234, "log_loss": figures["loss"],
        "n": n, "loss": figures["loss"],
    }


CURVES = {
    "roc": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.8, 1.0]},
    "calibration": {"mean_predicted": [0.2, 0.8], "fraction_positive": [0.25, 0.75], "count": [30.0, 47.0]},
    "confusion": {"tn": 20, "fp": 5, "fn": 6, "tp": 46},
}


@dataclass
class World:
    alice: object
    bob: object
    charlie: object
    site_a: object
    site_b: object
    ds_a: object
    ds_b: object
    rejected_a: object
    shared: object  # A and B, completed, 2 rounds
    only_a: object  # A alone, failed in round 2 (A's update failed) after 1 good round
    draft: object  # A and B, draft
    version: object  # shared's latest version
    version_a: object  # only_a's version

    def a_secrets(self) -> list[str]:
        """Strings that identify site A's data or figures: none may reach site B."""
        figures = [str(v) for d in (A_LOCAL, A_GLOBAL) for v in d.values()]
        rounded = [f"{v:.3f}" for d in (A_LOCAL, A_GLOBAL) for k, v in d.items() if k != "loss"]
        return [
            "Alderley", "alderley", self.ds_a.name, self.ds_a.sha256, self.rejected_a.name, A_ERROR,
            str(self.ds_a.row_count), str(A_SAMPLES), *figures, *rounded,
        ]


def _run(experiment, datasets, rounds: int, figures: dict, *, failed_site=None):
    """Write a completed experiment: rounds, updates, versions, evaluations and a log."""
    from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round, SiteEvaluation
    from aggregation.reasons import Reason
    from aggregation.reasons import text as reason_text
    from aggregation.services import artifacts
    from fedhealth.ml.model import init_weights
    from fedhealth.ml.stats import Normalizer, SufficientStats, merge_stats

    now = timezone.now()
    normalizer = Normalizer.from_stats(merge_stats([SufficientStats.from_dict(d.stats) for d in datasets]))
    experiment.normalizer = normalizer.to_dict()
    experiment.status = Experiment.Status.COMPLETED
    experiment.started_at, experiment.finished_at = now - timedelta(minutes=5), now - timedelta(hours=1)
    experiment.save()
    slugs = sorted(d.site.slug for d in datasets)
    artifacts.write_log_event(experiment, {"event": "started", "round": 0, "sites": slugs, "at": now.isoformat()})
    weights = init_weights(experiment.model_config, 0)
    version = None
    for n in range(1, rounds + 1):
        round_ = Round.objects.create(
            experiment=experiment, number=n, status=Round.Status.COMPLETED, deadline=now,
            metrics={"train_loss": 0.6 / n, "num_samples": 525, "accepted": slugs, "rejected": []},
        )
        for d in datasets:
            local, _ = figures[d.site.slug]
            ClientUpdate.objects.create(round=round_, site=d.site, status=ClientUpdate.Status.RECEIVED,
                                        num_samples=A_SAMPLES if d.site.slug == "alderley" else 216,
                                        loss=local["loss"], metrics=metrics(local), source="hosted")
        name = artifacts.version_name(experiment, n)
        version = ModelVersion.objects.create(
            experiment=experiment, version=n, round=round_, weights_file=name,
            sha256=artifacts.save_weights(name, weights), normalizer=normalizer.to_dict(),
            model_config=experiment.model_config.to_dict(), schema=experiment.schema,
        )
        per_site = {}
        for d in datasets:
            _, glob = figures[d.site.slug]
            SiteEvaluation.objects.create(version=version, site=d.site, metrics=metrics(glob), curves=CURVES)
            per_site[d.site.slug] = metrics(glob)
        mean = {k: sum(m[k] for m in per_site.values()) / len(per_site) for k in metrics(A_LOCAL)}
        version.metrics = {"mean": mean, "sites_reported": len(per_site)}
        version.save()
        artifacts.write_log_event(experiment, {"event": "round_completed", "round": n, "accepted": slugs,
                                               "rejected": [], "num_samples": 525, "at": now.isoformat()})
        artifacts.write_log_event(experiment, {"event": "evaluated", "round": n, "per_site": per_site,
                                               "mean": mean, "at": now.isoformat()})
    if failed_site is not None:  # one more round, in which the site failed
        reason = f"round {rounds + 1} failed: only 0 of the 1 sites required reported"
        round_ = Round.objects.create(experiment=experiment, number=rounds + 1, status=Round.Status.FAILED,
                                      deadline=now, failure_reason=reason)
        # The site's agent explained the failure in its own words: a note for its own site only.
        ClientUpdate.objects.create(round=round_, site=failed_site, status=ClientUpdate.Status.FAILED,
                                    error_code=Reason.SITE_REPORTED, error=reason_text(Reason.SITE_REPORTED),
                                    site_note=A_ERROR)
        experiment.status, experiment.failure_reason = Experiment.Status.FAILED, reason
        experiment.save()
    return version


@pytest.fixture
def world(alice, bob, charlie, site_a, site_b, make_dataset, make_experiment) -> World:
    from clients.services import ingest_dataset

    # Distinctive names, so that a page showing site A to bob cannot go unnoticed.
    for site, slug, name in ((site_a, "alderley", "Alderley Royal Infirmary"), (site_b, "brookfield", "Brookfield Clinic")):
        site.slug, site.name = slug, name
        site.save()

    ds_a = make_dataset(site_a, rows=413, seed=1)
    ds_a.name = "alderley-cardiology-2024.csv"
    ds_a.save()
    ds_b = make_dataset(site_b, rows=288, seed=2)
    ds_b.name = "brookfield-vitals.csv"
    ds_b.save()
    bad = b"heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n71,121,81,97,1\nALDERLEY-CELL,120,80,98,0\n"
    rejected_a = ingest_dataset(site_a, io.BytesIO(bad), name="alderley-rejected-export.csv").dataset
    figures = {"alderley": (A_LOCAL, A_GLOBAL), "brookfield": (B_LOCAL, B_GLOBAL)}
    shared = make_experiment([ds_a, ds_b], name="Shared vitals study", num_rounds=2)
    version = _run(shared, [ds_a, ds_b], 2, figures)
    only_a = make_experiment([ds_a], name="Alderley internal pilot", num_rounds=2)
    version_a = _run(only_a, [ds_a], 1, figures, failed_site=site_a)
    draft = make_experiment([ds_a, ds_b], name="Draft study", num_rounds=3)
    return World(alice, bob, charlie, site_a, site_b, ds_a, ds_b, rejected_a, shared, only_a, draft, version, version_a)

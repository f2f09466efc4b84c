"""Fixtures of the policy tests: sites in one experiment, written through the ORM with
distinctive names, reasons, notes and figures, and every persona of the observing site.

Site A ("Ashgrove") observes: a member, a site admin and its agent token, beside the
coordinator. Every other site's name, slug, reason, note and figure is a string no
page may show to A. A test module imports ``a_personas`` from here and loads
``pytest_plugins = ["clients.tests.api_fixtures"]`` (``client_for``, ``remote_dataset``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.utils import timezone

from aggregation.reasons import Reason
from aggregation.reasons import text as reason_text

# Per-request tokens in pages (CSRF, CSP nonces): neither figures nor names, and random
# enough to hold a short number by chance.
VOLATILE = re.compile(
    r'(csrfmiddlewaretoken" value="|csrf-token" content="|nonce="|nonce-)[^"\' ;]+'
)

NAMES = {
    "ashgrove": "Ashgrove Hospital",
    "brackenridge": "Brackenridge Clinic",
    "culverton": "Culverton Medical Centre",
    "dunmore": "Dunmore Infirmary",
}
# Figures of each site: its local model (update) and the global model on its data.
LOCAL = {
    "ashgrove": {"accuracy": 0.83311, "auroc": 0.90127, "loss": 0.41173},
    "brackenridge": {"accuracy": 0.61937, "auroc": 0.67391, "loss": 0.72219},
    "culverton": {"accuracy": 0.55183, "auroc": 0.58219, "loss": 0.80461},
    "dunmore": {"accuracy": 0.70529, "auroc": 0.74483, "loss": 0.63317},
}
GLOBAL = {
    "ashgrove": {"accuracy": 0.84471, "auroc": 0.91353, "loss": 0.39581},
    "brackenridge": {"accuracy": 0.63043, "auroc": 0.68867, "loss": 0.70913},
    "culverton": {"accuracy": 0.57919, "auroc": 0.59947, "loss": 0.78229},
    "dunmore": {"accuracy": 0.72161, "auroc": 0.75731, "loss": 0.61847},
}
# Each site's end-of-experiment comparison (alone / global / personalised on its own
# test rows): its own to each site, aggregates only to the coordinator.
COMPARE = {
    "ashgrove": {"alone": (0.77713, 0.81229, 0.78817), "global": (0.80137, 0.85561, 0.81449),
                 "personalized": (0.82273, 0.87119, 0.83391)},
    "brackenridge": {"alone": (0.52831, 0.56647, 0.53359), "global": (0.59377, 0.61773, 0.60911),
                     "personalized": (0.60619, 0.63187, 0.61453)},
    "culverton": {"alone": (0.66151, 0.69733, 0.67247), "global": (0.54283, 0.57811, 0.55529),
                  "personalized": (0.64417, 0.67959, 0.65863)},
}


def compare_figures(slug: str) -> dict:
    """``record_site_comparison``'s figures for ``slug`` (balanced accuracy, AUROC, accuracy)."""
    return {
        kind: {"balanced_accuracy": ba, "auroc": auc, "accuracy": acc, "n": 40.0}
        for kind, (ba, auc, acc) in COMPARE[slug].items()
    } | {"mode": "fedper"}


SAMPLES = {"ashgrove": 121, "brackenridge": 283, "culverton": 197, "dunmore": 241}
ROWS = {"brackenridge": 377, "culverton": 263, "dunmore": 322}
NOTES = {"ashgrove": "ashgrove-note-quokka", "brackenridge": "brackenridge-note-wombat"}
OUTLIER_DETAIL = "(distance 987.654 against a median of 1.234)"
LEGACY_ERROR = "Traceback: /srv/fedhealth/var/brackenridge/feed.py line 12"
OWN_LEGACY_ERROR = "OSError: /srv/fedhealth/var/ashgrove/secret-mount"


def metrics(figures: dict[str, float], n: float) -> dict[str, float]:
    acc = figures["accuracy"]
    return {
        "accuracy": acc,
        "auroc": figures["auroc"],
        "f1": acc,
        "brier": 0.1111,
        "loss": figures["loss"],
        "n": n,
    }


@dataclass
class Trio:
    sites: dict  # slug -> Site
    datasets: dict  # slug -> Dataset
    experiment: object
    draft: object
    rounds: list
    versions: list
    personas: dict = field(default_factory=dict)  # name -> (web client or None, API client)
    running: object = None  # set by tests that need a running experiment too

    def others(self) -> list[str]:
        return [s for s in self.sites if s != "ashgrove"]

    def other_secrets(self) -> list[str]:
        """What identifies another site or its data: none may reach site A's personas."""
        out = []
        for slug in self.others():
            ds = self.datasets[slug]
            out += [slug, NAMES[slug], ds.name, ds.sha256, str(SAMPLES[slug]), str(ROWS[slug])]
            for figures in (LOCAL[slug], GLOBAL[slug]):
                out += [str(v) for v in figures.values()]
                out += [f"{figures['accuracy']:.3f}", f"{figures['auroc']:.3f}"]
            for values in COMPARE.get(slug, {}).values():
                out += [str(v) for v in values] + [f"{v:.3f}" for v in values]
        out += [
            NOTES["brackenridge"],
            OUTLIER_DETAIL,
            "987.654",
            LEGACY_ERROR,
            "/srv/fedhealth",
            reason_text(Reason.OUTLIER),
            reason_text(Reason.DATA_CHANGED),
        ]
        return out


def build_world(make_site, make_dataset, remote_dataset, make_experiment, *, slugs, rounds):
    """Sites (A in agent mode, the others hosted), an experiment written round by round.

    ``rounds``: one dict per round, slug -> "accepted" | "rejected" | "failed:<code>" |
    "note" (failed, SITE_REPORTED with the site's note) | "legacy" (failed, free text, no
    code). A version is made for each round with at least one accepted update; no
    evaluation is recorded (tests add them).
    """
    from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
    from aggregation.services import artifacts
    from fedhealth.ml.model import init_weights
    from fedhealth.ml.stats import Normalizer, SufficientStats, merge_stats

    sites, datasets = {}, {}
    for slug in slugs:
        mode = "agent" if slug == "ashgrove" else "hosted"
        sites[slug] = make_site(slug, name=NAMES[slug], mode=mode)
        if mode == "agent":
            datasets[slug] = remote_dataset(sites[slug], rows=160, seed=7)
        else:
            datasets[slug] = make_dataset(sites[slug], rows=ROWS[slug], seed=len(slug))
    experiment = make_experiment(
        list(datasets.values()), name="Policy study", num_rounds=len(rounds)
    )
    draft = make_experiment(list(datasets.values()), name="Policy draft", num_rounds=2)
    now = timezone.now()
    stats = [SufficientStats.from_dict(d.stats) for d in datasets.values()]
    experiment.normalizer = Normalizer.from_stats(merge_stats(stats)).to_dict()
    experiment.status = Experiment.Status.COMPLETED
    experiment.started_at, experiment.finished_at = now - timedelta(minutes=30), now
    weights = init_weights(experiment.model_config, 0)
    experiment.initial_weights = artifacts.initial_name(experiment)
    experiment.initial_sha256 = artifacts.save_weights(experiment.initial_weights, weights)
    experiment.save()
    artifacts.write_log_event(
        experiment, {"event": "started", "round": 0, "at": now.isoformat(), "sites": sorted(slugs)}
    )
    made_rounds, versions = [], []
    for number, outcome in enumerate(rounds, start=1):
        accepted = sorted(s for s, o in outcome.items() if o == "accepted")
        rejected = [
            {
                "site": s,
                "code": Reason.OUTLIER,
                "reason": reason_text(Reason.OUTLIER, OUTLIER_DETAIL),
            }
            for s, o in sorted(outcome.items())
            if o == "rejected"
        ]
        used = [SAMPLES[s] for s in accepted]
        round_metrics = {
            "train_loss": sum(LOCAL[s]["loss"] * SAMPLES[s] for s in accepted) / sum(used)
            if used
            else None,
            "num_samples": sum(used),
            "accepted": accepted,
            "rejected": rejected,
            "kept_previous_model": not accepted,
            "duration_seconds": 12.5,
        }
        round_ = Round.objects.create(
            experiment=experiment,
            number=number,
            status=Round.Status.COMPLETED,
            deadline=now,
            completed_at=now,
            metrics=round_metrics,
        )
        for slug, o in outcome.items():
            fields = {
                "status": ClientUpdate.Status.RECEIVED,
                "num_samples": SAMPLES[slug],
                "loss": LOCAL[slug]["loss"],
                "metrics": metrics(LOCAL[slug], SAMPLES[slug] / 3),
                "source": sites[slug].mode,
            }
            if o.startswith("failed:"):
                code = o.split(":", 1)[1]
                fields = {
                    "status": ClientUpdate.Status.FAILED,
                    "error_code": code,
                    "error": reason_text(code),
                }
            elif o == "note":
                fields = {
                    "status": ClientUpdate.Status.FAILED,
                    "error_code": Reason.SITE_REPORTED,
                    "error": reason_text(Reason.SITE_REPORTED),
                    "site_note": NOTES[slug],
                }
            elif o == "legacy":
                fields = {
                    "status": ClientUpdate.Status.FAILED,
                    "error": OWN_LEGACY_ERROR if slug == "ashgrove" else LEGACY_ERROR,
                }
            ClientUpdate.objects.create(round=round_, site=sites[slug], **fields)
        artifacts.write_log_event(
            experiment,
            {
                "event": "round_completed",
                "round": number,
                "at": now.isoformat(),
                "version": number if accepted else None,
                **round_metrics,
            },
        )
        made_rounds.append(round_)
        if accepted:
            name = artifacts.version_name(experiment, number)
            versions.append(
                ModelVersion.objects.create(
                    experiment=experiment,
                    version=number,
                    round=round_,
                    weights_file=name,
                    sha256=artifacts.save_weights(name, weights),
                    normalizer=experiment.normalizer,
                    model_config=experiment.model_config.to_dict(),
                    schema=experiment.schema,
                )
            )
    artifacts.write_log_event(
        experiment, {"event": "completed", "round": len(rounds), "at": now.isoformat()}
    )
    return Trio(sites, datasets, experiment, draft, made_rounds, versions)


def evaluate(version, slug: str, sites: dict) -> None:
    """Site ``slug`` reports its evaluation of ``version`` through the real service."""
    from aggregation.services import record_evaluation

    curves = {
        "roc": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.7, 1.0]},
        "confusion": {"tn": 11, "fp": 3, "fn": 4, "tp": 29},
    }
    assert record_evaluation(
        version.pk, sites[slug].pk, metrics(GLOBAL[slug], SAMPLES[slug] / 3), curves
    )


def time_passes(version, seconds: float) -> None:
    """Move ``version``'s past back by ``seconds``: as if that much time had passed since
    it was made and its sites reported (the evaluation deadline counts from its creation)."""
    from aggregation.models import EvaluationAttempt, ModelVersion, SiteEvaluation

    shift = timedelta(seconds=seconds)
    for model, field_name, rows in (
        (ModelVersion, "created_at", ModelVersion.objects.filter(pk=version.pk)),
        (SiteEvaluation, "created_at", SiteEvaluation.objects.filter(version=version)),
        (EvaluationAttempt, "updated_at", EvaluationAttempt.objects.filter(version=version)),
    ):
        for pk, at in rows.values_list("pk", field_name):
            model.objects.filter(pk=pk).update(**{field_name: at - shift})


@pytest.fixture
def a_personas(make_user, client_for):
    """``a_personas(trio)``: site A's member, site admin and agent token, and the
    coordinator, each as (logged-in web client or None, API client)."""
    from django.test import Client

    from clients.models import Membership

    def make(trio: Trio) -> dict:
        site = trio.sites["ashgrove"]
        users = {
            "member": make_user("ash-member", site, Membership.Role.MEMBER),
            "site_admin": make_user("ash-admin", site, Membership.Role.SITE_ADMIN),
            "coordinator": make_user("coord"),
        }
        personas = {}
        for name, user in users.items():
            web = Client()
            web.force_login(user)
            personas[name] = (web, client_for(user))
        personas["agent"] = (None, client_for(site))
        trio.personas = personas
        return personas

    return make

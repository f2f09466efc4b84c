"""A small platform to back up (two hosted sites, users, tokens, a finished and a paused
experiment) and helpers that describe an instance completely (rows and files)."""

from __future__ import annotations

import hashlib
import json

from django.core import serializers
from django.core.files.storage import default_storage

from aggregation import services
from clients.models import ApiToken
from fedhealth.ops.backup import backed_up_models, stored_files

RECORDS = [
    {"heart_rate": 72, "systolic_bp": 118, "diastolic_bp": 76, "spo2": 98},
    {"heart_rate": 112, "systolic_bp": 155, "diastolic_bp": 97, "spo2": 91},
]


def build_world(make_site, make_dataset, make_experiment, make_user, drive):
    sites = [make_site(f"bk-{i}") for i in range(2)]
    datasets = [make_dataset(site, rows=120, seed=i) for i, site in enumerate(sites)]
    make_user("bk-member", sites[0])
    coordinator = make_user("bk-coordinator")
    ApiToken.issue(site=sites[0], name="agent", created_by=coordinator)
    ApiToken.issue(user=coordinator, name="script")
    finished = make_experiment(datasets, name="finished", num_rounds=2)
    services.start_experiment(finished.pk)
    finished = drive(finished.pk)
    paused = make_experiment(datasets, name="paused", num_rounds=3)
    services.start_experiment(paused.pk)
    # Train and aggregate round 1 only, then pause: round 2 must not open until resumed.
    for update_id in paused.rounds.get(number=1).updates.values_list("pk", flat=True):
        services.train_hosted_update(update_id)
    services.pause_experiment(paused.pk)
    for round_id in paused.rounds.filter(status="aggregating").values_list("pk", flat=True):
        services.aggregate_round(round_id)
    return finished, paused


def describe_rows() -> dict[str, list]:
    """Every backed-up row, as parsed JSON (so JSON fields compare by value; NaN, which
    a metric can be, kept as its text so that it equals itself)."""
    return {
        model._meta.label: json.loads(
            serializers.serialize(
                "json", model._default_manager.order_by("pk"), use_natural_foreign_keys=True
            ),
            parse_constant=str,
        )
        for model in backed_up_models()
    }


def describe_files() -> dict[str, str]:
    out = {}
    for name in stored_files():
        with default_storage.open(name, "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


def wipe() -> None:
    for model in reversed(backed_up_models()):
        model._base_manager.all().delete()
    for name in stored_files():
        default_storage.delete(name)

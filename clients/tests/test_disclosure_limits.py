"""Disclosure limits (issue 9, clients/policy.py): a dataset under FEDHEALTH_MIN_DATASET_ROWS
rows, or with fewer than FEDHEALTH_MIN_ROWS_PER_LABEL rows of a label it has, cannot join an
experiment through any door; the coordinator never sees a minimum or maximum, nor a figure
from fewer rows than the limit; the owning site still sees its own summary."""

from __future__ import annotations

import io
import json

import pytest
from django.urls import reverse

from aggregation.services import TransitionError, start_experiment
from aggregation.services.creation import ExperimentInvalid, create_experiment
from aggregation.tests.test_web_experiments import form_data
from clients.services import ingest_dataset
from clients.tests import conftest as web

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world

HEADER = "heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
# Distinctive extremes: a page or response showing a minimum or maximum would carry them.
LOW_SBP, HIGH_SBP = 91.37, 158.63


def _csv(rows: int, positives: int) -> bytes:
    lines = [HEADER]
    for i in range(rows):
        sbp = LOW_SBP if i == 0 else HIGH_SBP if i == 1 else 120 + i % 7
        lines.append(f"{60 + i % 30},{sbp},{70 + i % 9},{95 + i % 4},{1 if i < positives else 0}\n")
    return "".join(lines).encode()


def _dataset(site, rows: int, positives: int, name: str):
    result = ingest_dataset(site, io.BytesIO(_csv(rows, positives)), name=name)
    assert result.ok, result.report.format()
    return result.dataset


@pytest.fixture
def small(world):
    """Site B's datasets: one of 12 rows, one of 40 rows with only 3 labelled 1."""
    return {
        "rows": _dataset(world.site_b, 12, 6, "tiny.csv"),
        "label": _dataset(world.site_b, 40, 3, "few-positives.csv"),
    }


@pytest.mark.parametrize("which, words", [("rows", "12 rows; at least 20"), ("label", "3 labelled 1")])
def test_the_creation_service_refuses_a_dataset_under_the_limits(world, small, which, words):
    with pytest.raises(ExperimentInvalid) as caught:
        create_experiment(name="x", datasets=[world.ds_a, small[which]], min_sites=2)
    message = " ".join(caught.value.errors["datasets"])
    assert words in message


def test_the_limits_are_settings(world, small, settings):
    settings.FEDHEALTH_MIN_DATASET_ROWS, settings.FEDHEALTH_MIN_ROWS_PER_LABEL = 10, 3
    assert create_experiment(name="x", datasets=[world.ds_a, small["rows"]], min_sites=2).pk
    assert create_experiment(name="y", datasets=[world.ds_a, small["label"]], min_sites=2).pk


def test_the_web_form_refuses_it(client, world, small):
    client.force_login(world.charlie)
    response = client.post(reverse("experiment_create"),
                           form_data(world, **{f"site_{world.site_b.pk}": str(small["rows"].pk)}))
    assert response.status_code == 200
    assert "at least 20" in str(response.context["form"].errors)
    choices = dict(response.context["form"].fields[f"site_{world.site_b.pk}"].choices)
    assert choices[small["rows"].pk].endswith("too small to join an experiment")  # and no balance


def test_the_api_refuses_it(world, small, client_for):
    response = client_for(world.charlie).post(
        "/api/v1/experiments/", {"name": "api", "datasets": [world.ds_a.pk, small["label"].pk], "min_sites": 2},
        format="json",
    )
    assert response.status_code == 400
    assert "FEDHEALTH_MIN_ROWS_PER_LABEL" in json.dumps(response.json()["errors"]["datasets"])


def test_start_refuses_a_draft_made_before_the_limits(world, small, make_experiment):
    from aggregation.models import Participant
    from aggregation.services import consent

    draft = make_experiment([world.ds_a, small["rows"]], name="old draft", min_sites=2, consent=False)
    # Accepted before the limits existed too (as the consent migration records old rows):
    # the service would refuse the small dataset today.
    Participant.objects.filter(experiment=draft).update(consent="accepted", terms_hash=consent.terms_hash(draft))
    with pytest.raises(TransitionError, match="12 rows; at least 20"):
        start_experiment(draft.pk)


def _no_min_max(value, where):
    if isinstance(value, dict):
        assert not ({"min", "max"} & set(value)), where
        for k, v in value.items():
            if k != "schema":  # a schema's min/max are the valid ranges it declares, not data
                _no_min_max(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_min_max(v, f"{where}[{i}]")


def test_coordinator_pages_and_api_show_no_min_max_and_nothing_under_the_limit(client, world, small, client_for):
    big = _dataset(world.site_b, 30, 10, "extremes.csv")
    client.force_login(world.charlie)
    pages = [reverse("dashboard"), reverse("experiment_list"), reverse("experiment_create")]
    pages += [reverse("dataset_detail", args=[d.pk]) for d in (world.ds_a, world.ds_b, big, *small.values())]
    pages += [reverse("experiment_detail", args=[e.pk]) for e in (world.shared, world.draft)]
    pages += [reverse(name, args=[world.shared.pk]) for name in
              ("experiment_export_json", "experiment_export_metrics", "experiment_export_log", "experiment_live")]
    for url in pages:
        page = client.get(url)
        assert page.status_code == 200, url
        text = page.content.decode()
        assert ">Min<" not in text and ">Max<" not in text, url
        assert "91.4" not in text and "158.6" not in text, url

    api = client_for(world.charlie)
    bodies = {d.pk: api.get(f"/api/v1/datasets/{d.pk}/").json() for d in (big, *small.values(), world.ds_a)}
    listing = api.get("/api/v1/datasets/", {"page_size": 100}).json()
    for body in [*bodies.values(), *listing["results"]]:
        _no_min_max(body["summary"], f"dataset {body['id']} summary")
        assert body["stats"] is None  # exact sums would give unrounded means
        assert "91.37" not in json.dumps(body) and "158.63" not in json.dumps(body)
    shown = bodies[big.pk]["summary"]["systolic_bp"]
    assert set(shown) == {"unit", "mean", "std"} and shown["mean"] == round(shown["mean"], 1)
    tiny = bodies[small["rows"].pk]
    assert tiny["row_count"] == 12
    assert tiny["summary"] == {} and tiny["positive_count"] is None and tiny["label_balance"] is None
    assert "fewer than 20 rows" in client.get(reverse("dataset_detail", args=[small["rows"].pk])).content.decode()


def test_the_owning_site_still_sees_its_own_summary(client, world, small, client_for):
    client.force_login(world.bob)
    page = client.get(reverse("dataset_detail", args=[small["rows"].pk])).content.decode()
    assert ">Min<" in page and "91.4" in page and "158.6" in page
    body = client_for(world.bob).get(f"/api/v1/datasets/{small['rows'].pk}/").json()
    assert body["summary"]["systolic_bp"]["min"] == pytest.approx(LOW_SBP)
    assert body["positive_count"] == 6 and set(body["stats"]) == {"count", "sum", "sumsq"}


@pytest.mark.parametrize("resource", ["sites", "datasets", "experiments", "rounds", "updates", "models"])
def test_no_coordinator_api_response_carries_a_min_or_max(world, small, client_for, resource):
    api = client_for(world.charlie)
    listing = api.get(f"/api/v1/{resource}/", {"page_size": 100})
    assert listing.status_code == 200
    items = listing.json()["results"]
    assert items, resource
    _no_min_max(items, resource)
    detail = api.get(f"/api/v1/{resource}/{items[0]['id']}/").json()
    _no_min_max(detail, f"{resource}/{items[0]['id']}")
    assert "91.37" not in json.dumps(detail) and "158.63" not in json.dumps(listing.json())


def test_the_django_admin_shows_a_dataset_as_the_coordinator_sees_it(client, world, small, django_user_model):
    big = _dataset(world.site_b, 30, 10, "extremes.csv")
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    for dataset in (big, small["rows"]):
        page = client.get(reverse("admin:clients_dataset_change", args=[dataset.pk])).content.decode()
        assert "91.37" not in page and "158.63" not in page and "sumsq" not in page
    page = client.get(reverse("admin:clients_dataset_change", args=[big.pk])).content.decode()
    assert "systolic_bp: mean" in page
    tiny = client.get(reverse("admin:clients_dataset_change", args=[small["rows"].pk])).content.decode()
    assert "fewer than 20 rows" in tiny

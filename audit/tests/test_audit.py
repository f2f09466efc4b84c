"""The audit trail (issue 9): events from the real doors, a hash chain that `audit verify`
checks (an altered or removed event fails it), and who sees which events."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from aggregation.services import (
    cancel_experiment,
    pause_experiment,
    resume_experiment,
    start_experiment,
)
from aggregation.services.creation import create_experiment
from audit.models import AuditEvent, AuditHead
from audit.services import Kind, record, verify
from clients.models import ApiToken, Membership
from clients.tests import conftest as web
from tests.consent_support import accept_invitations

pytestmark = pytest.mark.django_db
pytest_plugins = ["clients.tests.api_fixtures"]
world = web.world
K = AuditEvent.Kind


def kinds() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("kind", flat=True))


@pytest.fixture
def admin_a(make_user, site_a):
    return make_user("ada", site_a, role=Membership.Role.SITE_ADMIN)


@pytest.fixture
def admin_b(make_user, site_b):
    return make_user("ben", site_b, role=Membership.Role.SITE_ADMIN)


def test_sign_ins_and_failures_are_recorded_with_the_address(client, alice):
    client.post(reverse("login"), {"username": "alice", "password": "wrong"}, REMOTE_ADDR="10.1.2.3")
    client.post(reverse("login"), {"username": "alice", "password": "pw-alice"}, REMOTE_ADDR="10.1.2.4")

    failed, signed_in = AuditEvent.objects.order_by("seq")
    assert (failed.kind, failed.actor, failed.client_address) == (K.SIGN_IN_FAILED, "alice", "10.1.2.3")
    assert "wrong" not in json.dumps(failed.details)  # never the password tried
    assert failed.site_id == alice.membership.site_id  # alice's site admin sees attempts on her account
    assert (signed_in.kind, signed_in.actor, signed_in.actor_id) == (K.SIGN_IN, "alice", alice.pk)
    assert signed_in.site_id == alice.membership.site_id and signed_in.client_address == "10.1.2.4"


def test_the_product_doors_record_their_events(client, world, client_for, remote_dataset, make_site):
    AuditEvent.objects.all().delete()
    AuditHead.objects.all().delete()
    client.force_login(world.alice)
    b"".join(client.get(reverse("dataset_download", args=[world.ds_a.pk])).streaming_content)
    client.get(reverse("model_download", args=[world.version.pk]))
    experiment = create_experiment(name="audited", datasets=[world.ds_a, world.ds_b], min_sites=2,
                                   created_by=world.charlie)
    accept_invitations(experiment.pk)
    start_experiment(experiment.pk)
    pause_experiment(experiment.pk)
    resume_experiment(experiment.pk)
    cancel_experiment(experiment.pk)
    secret_vitals = {"heart_rate": 71.25, "systolic_bp": 133.5, "diastolic_bp": 81.75, "spo2": 96.125}
    response = client_for(world.alice).post(
        f"/api/v1/models/{world.version.pk}/predict/", {"records": [secret_vitals, secret_vitals]}, format="json")
    assert response.status_code == 200, response.content
    token, _ = ApiToken.issue(site=world.site_a, name="agent key")
    token.revoke()
    remote_dataset(make_site("remote-site", mode="agent"))

    assert kinds() == [
        K.SIGN_IN, K.DATASET_DOWNLOAD, K.MODEL_DOWNLOAD, K.EXPERIMENT_CREATE,
        K.CONSENT_ACCEPT, K.CONSENT_ACCEPT,  # each site's acceptance
        K.EXPERIMENT_START, K.EXPERIMENT_PAUSE,
        K.EXPERIMENT_RESUME, K.EXPERIMENT_CANCEL,
        K.TOKEN_CREATE,  # client_for's token
        K.PREDICTION, K.TOKEN_CREATE, K.TOKEN_REVOKE, K.AGENT_REGISTER,
    ]
    download = AuditEvent.objects.get(kind=K.DATASET_DOWNLOAD)
    assert (download.actor, download.site_id, download.target) == ("alice", world.site_a.pk, f"dataset {world.ds_a.pk}")
    assert AuditEvent.objects.get(kind=K.EXPERIMENT_CREATE).actor == "charlie"
    prediction = AuditEvent.objects.get(kind=K.PREDICTION)
    assert prediction.details == {"records": 2}  # a count, never the inputs
    assert "71.25" not in json.dumps([e.details for e in AuditEvent.objects.all()])
    assert verify().ok


def test_an_upload_is_recorded_with_counts_and_dropped_columns(site_a, alice):
    from clients.services import ingest_dataset
    from fedhealth.ml.synthetic import generate_site

    frame = generate_site(40, seed=3)
    frame["MRN"] = [f"MRN-{i}" for i in range(40)]
    ingest_dataset(site_a, io.BytesIO(frame.to_csv(index=False).encode()), name="w.csv", user=alice)

    event = AuditEvent.objects.get(kind=K.UPLOAD)
    assert (event.actor, event.site_id) == ("alice", site_a.pk)
    assert event.details["rows"] == 40 and event.details["columns_dropped"] == ["MRN"]
    assert "MRN-1" not in json.dumps(event.details)


def _chain(n: int = 6) -> list[AuditEvent]:
    return [record(Kind.PREDICTION, actor=f"user{i}", target=f"model version {i}", details={"records": i})
            for i in range(n)]


def test_the_chain_verifies_and_the_command_says_so(capsys):
    _chain()
    call_command("audit", "verify")
    assert "6 events, chain intact" in capsys.readouterr().out


def test_altering_one_stored_event_fails_verify():
    events = _chain()
    AuditEvent.objects.filter(pk=events[2].pk).update(details={"records": 999})
    with pytest.raises(CommandError, match="does not verify"):
        call_command("audit", "verify")
    assert verify().problems == [f"event {events[2].seq} was altered (its hash does not match its contents)"]


def test_altering_an_event_and_rehashing_it_still_breaks_the_next_link():
    from audit.services import compute_hash

    events = _chain()
    forged = AuditEvent.objects.get(pk=events[2].pk)
    forged.actor = "someone else"
    forged.hash = compute_hash(forged)
    forged.save()
    assert f"event {events[3].seq} does not link to the event before it" in verify().problems


@pytest.mark.parametrize("which", [0, 3, -1], ids=["first", "middle", "last"])
def test_removing_an_event_fails_verify(which):
    events = _chain()
    AuditEvent.objects.filter(pk=events[which].pk).delete()
    with pytest.raises(CommandError):
        call_command("audit", "verify")


def test_events_are_not_editable_through_the_model_admin(client, django_user_model):
    _chain(1)
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    event = AuditEvent.objects.get(kind=K.PREDICTION)
    assert client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.fixture
def two_sites_events(site_a, site_b, admin_a, admin_b):
    record(Kind.DATASET_DOWNLOAD, actor=admin_a, site=site_a, target="dataset 1")
    record(Kind.DATASET_DOWNLOAD, actor=admin_b, site=site_b, target="dataset 2")
    record(Kind.EXPERIMENT_CREATE, actor="charlie", target="experiment 1")


def test_a_site_admin_sees_only_their_sites_events_on_the_page_and_in_exports(client, admin_a, two_sites_events):
    client.force_login(admin_a)
    page = client.get(reverse("audit_list"))
    assert page.status_code == 200
    assert {e.target for e in page.context["page"].object_list} == {"dataset 1"}
    assert "ben" not in page.content.decode() and "dataset 2" not in page.content.decode()

    rows = list(csv.DictReader(io.StringIO(client.get(reverse("audit_export_csv")).content.decode())))
    assert [r["target"] for r in rows] == ["dataset 1"]
    assert [r["target"] for r in client.get(reverse("audit_export_json")).json()] == ["dataset 1"]


def test_the_coordinator_sees_everything_and_members_nothing(client, charlie, alice, two_sites_events):
    client.force_login(charlie)
    rows = client.get(reverse("audit_export_json")).json()
    assert [r["target"] for r in rows if r["kind"] != K.SIGN_IN] == ["experiment 1", "dataset 2", "dataset 1"]
    client.force_login(alice)  # a member, not a site admin
    assert client.get(reverse("audit_list")).status_code == 403
    assert client.get(reverse("audit_export_csv")).status_code == 403


def test_filters_by_person_kind_and_date_and_paginates(client, charlie, two_sites_events):
    _chain(60)
    client.force_login(charlie)
    by_person = client.get(reverse("audit_export_json"), {"person": "BEN"}).json()
    assert [r["target"] for r in by_person] == ["dataset 2"]
    by_kind = client.get(reverse("audit_export_json"), {"kind": "experiment_create"}).json()
    assert [r["actor"] for r in by_kind] == ["charlie"]
    assert client.get(reverse("audit_export_json"), {"since": "2999-01-01"}).json() == []
    assert len(client.get(reverse("audit_export_json"), {"until": "2999-01-01"}).json()) == AuditEvent.objects.count()
    bad = client.get(reverse("audit_list"), {"since": "yesterday"})
    assert bad.status_code == 400
    assert bad.context["errors"] == {"since": "since must be a date as YYYY-MM-DD, not 'yesterday'"}

    first = client.get(reverse("audit_list"), {"kind": "prediction"}).context["page"]
    assert len(first.object_list) == 50 and first.paginator.count == 60
    second = client.get(reverse("audit_list"), {"kind": "prediction", "page": 2})
    assert len(second.context["page"].object_list) == 10
    assert "kind=prediction&amp;page=1" in second.content.decode()


def test_csv_export_neutralises_formulas(client, charlie):
    record(Kind.SIGN_IN_FAILED, actor="=HYPERLINK(\"http://x\")")
    client.force_login(charlie)
    text = client.get(reverse("audit_export_csv")).content.decode()
    assert "'=HYPERLINK" in text


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_the_chain_linear():
    """Writers in several threads (each its own database connection) queue on the head row:
    positions run without gaps or repeats and every link holds."""
    import threading

    from django.db import connection

    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(8):
                record(Kind.PREDICTION, actor=f"thread{n}", details={"records": i})
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 33))
    assert verify().ok


def test_an_agents_registration_is_attributed_to_its_site_token(agent, agent_site, csv_bytes, summary_of):
    response = agent.post("/api/v1/agent/datasets/", summary_of(csv_bytes(160, seed=3)), format="json",
                          REMOTE_ADDR="10.9.8.7")
    assert response.status_code == 201, response.content

    event = AuditEvent.objects.get(kind=K.AGENT_REGISTER)
    assert (event.actor, event.site_id, event.client_address) == (
        f"site token ({agent_site.slug})", agent_site.pk, "10.9.8.7")
    assert event.details == {"name": "local.csv", "rows": 160}


@pytest.mark.django_db(transaction=True)
def test_events_waiting_for_the_writer_are_appended_as_one_group():
    """Outside a transaction, events that arrive while another append is being written
    wait for it, then one of their threads appends them all in one transaction; each
    caller returns with its event committed and the chain intact."""
    import threading
    import time

    from django.db import connection

    from audit import services

    before = dict(services.group_stats)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            record(Kind.PREDICTION, actor=f"thread{n}", details={"records": n})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(5)]
    with services._writer:  # an append in progress elsewhere in this process
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(services._pending) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(services._pending) == 5
    for t in threads:
        t.join()

    assert errors == []
    assert services.group_stats["groups"] - before["groups"] == 1
    assert services.group_stats["events"] - before["events"] == 5
    assert sorted(AuditEvent.objects.values_list("actor", flat=True)) == [f"thread{n}" for n in range(5)]
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3, 4, 5]
    assert verify().ok


@pytest.mark.django_db(transaction=True)
def test_an_event_recorded_inside_a_transaction_rolls_back_with_it():
    from django.db import transaction

    record(Kind.SIGN_IN, actor="kept")
    with pytest.raises(RuntimeError), transaction.atomic():
        record(Kind.PREDICTION, actor="rolled back")
        raise RuntimeError("the change being recorded failed")
    record(Kind.SIGN_IN, actor="after")

    assert list(AuditEvent.objects.order_by("seq").values_list("actor", "seq")) == [("kept", 1), ("after", 2)]
    assert verify().ok

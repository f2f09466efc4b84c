"""Consent per experiment: only sites that accepted the current terms are trained on,
through every door (Start, the hosted task and its redelivery, the sweeper, the agent
claim); a withdrawal applies from the next round; a configuration change voids an
acceptance; a site never sees or decides another site's invitation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from aggregation import services, sweeper, tasks
from aggregation.models import ClientUpdate, Participant, Round
from aggregation.services import consent
from aggregation.services.creation import create_experiment, update_experiment
from aggregation.services.lifecycle import TransitionError, start_experiment
from audit.models import AuditEvent
from clients.models import Membership

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_a(make_user, site_a):
    return make_user("steward-a", site_a, Membership.Role.SITE_ADMIN)


@pytest.fixture
def admin_b(make_user, site_b):
    return make_user("steward-b", site_b, Membership.Role.SITE_ADMIN)


@pytest.fixture
def two_sites(site_a, site_b, make_dataset):
    return make_dataset(site_a, rows=200, seed=1), make_dataset(site_b, rows=200, seed=2)


def participant(experiment, site) -> Participant:
    return Participant.objects.get(experiment=experiment, site=site)


def test_start_waits_for_the_quorum_and_trains_only_accepted_sites(
    two_sites, make_experiment, admin_a, site_a, site_b
):
    experiment = make_experiment(two_sites, consent=False, min_sites=1)
    with pytest.raises(TransitionError, match="waiting for sites to accept: 0 of the 2 invited"):
        start_experiment(experiment.pk)

    consent.accept(participant(experiment, site_a).pk, admin_a, two_sites[0].pk)
    start_experiment(experiment.pk)

    round_1 = Round.objects.get(experiment=experiment, number=1)
    assert list(round_1.updates.values_list("site__slug", flat=True)) == ["site-a"]
    log = services.artifacts.read_log(experiment)
    assert log[0]["sites"] == ["site-a"]  # the normaliser came from site A's statistics only


def _unconsented_update(experiment, site, *, age: timedelta = timedelta(0)) -> ClientUpdate:
    """A pending update for a site that has not accepted: a row left by a bug, an old
    version or a hand edit. No door may train on it."""
    round_ = experiment.rounds.get(number=1)
    update = ClientUpdate.objects.create(round=round_, site=site)
    ClientUpdate.objects.filter(pk=update.pk).update(created_at=timezone.now() - age)
    return update


def test_a_redelivered_task_for_a_site_without_consent_trains_nothing(
    two_sites, make_experiment, admin_a, site_a, site_b, settings
):
    experiment = make_experiment(two_sites, consent=False, min_sites=1)
    consent.accept(participant(experiment, site_a).pk, admin_a, two_sites[0].pk)
    start_experiment(experiment.pk)
    rogue = _unconsented_update(experiment, site_b)

    # The real task, as a worker runs a (re)delivered message.
    outcome = tasks.train_site.apply(args=[rogue.pk]).get()

    rogue.refresh_from_db()
    assert outcome.startswith("skipped")
    assert rogue.status == ClientUpdate.Status.FAILED and rogue.error_code == "no_consent"
    assert rogue.attempts == 0 and not rogue.weights_file and rogue.started_at is None


def test_the_sweeper_never_resends_work_of_a_site_without_consent(
    two_sites, make_experiment, admin_a, site_a, site_b, settings, monkeypatch
):
    experiment = make_experiment(two_sites, consent=False, min_sites=1)
    consent.accept(participant(experiment, site_a).pk, admin_a, two_sites[0].pk)
    start_experiment(experiment.pk)
    rogue = _unconsented_update(experiment, site_b, age=timedelta(hours=1))
    ClientUpdate.objects.filter(site=site_a).update(created_at=timezone.now() - timedelta(hours=1))
    sent: list[int] = []
    monkeypatch.setattr(sweeper.health, "attended", lambda queues, at: set(queues))  # every queue has a worker
    monkeypatch.setattr(sweeper.dispatch, "queue_training", lambda updates: sent.extend(u.pk for u in updates) or len(sent))

    counts = sweeper.sweep()

    rogue.refresh_from_db()
    assert rogue.status == ClientUpdate.Status.FAILED and rogue.error_code == "no_consent"
    assert sent == list(ClientUpdate.objects.filter(site=site_a).values_list("pk", flat=True))
    assert counts["given_up"] == 1


def test_a_withdrawal_stops_the_sites_work_from_the_next_round(
    two_sites, make_experiment, admin_a, admin_b, site_a, site_b
):
    experiment = make_experiment(two_sites, consent=False, min_sites=1, num_rounds=3)
    for site, admin, ds in ((site_a, admin_a, two_sites[0]), (site_b, admin_b, two_sites[1])):
        consent.accept(participant(experiment, site).pk, admin, ds.pk)
    start_experiment(experiment.pk)
    round_1 = experiment.rounds.get(number=1)
    assert round_1.updates.count() == 2

    consent.withdraw(participant(experiment, site_b).pk, admin_b)

    mine = round_1.updates.get(site=site_b)
    assert mine.status == ClientUpdate.Status.FAILED and mine.error_code == "withdrawn"
    assert participant(experiment, site_b).withdrawn_from_round == 2
    # The round does not wait for it: site A's update alone closes it.
    services.train_hosted_update(round_1.updates.get(site=site_a).pk)
    round_1.refresh_from_db()
    assert round_1.status == Round.Status.AGGREGATING
    services.aggregate_round(round_1.pk)
    round_2 = experiment.rounds.get(number=2)
    assert list(round_2.updates.values_list("site__slug", flat=True)) == ["site-a"]
    # Nothing reads its rows any more: not even an evaluation of the new version.
    version = experiment.versions.get(version=1)
    assert tasks.evaluate_site.apply(args=[version.pk, site_b.pk]).get() == "skipped: no consent"
    assert not version.evaluations.filter(site=site_b).exists()
    kinds = list(AuditEvent.objects.filter(site_id=site_b.pk).values_list("kind", flat=True))
    assert "consent_withdraw" in kinds and "consent_accept" in kinds


def test_a_claimed_update_is_not_reclaimed_after_a_withdrawal(
    two_sites, make_experiment, admin_b, site_a, site_b
):
    experiment = make_experiment(two_sites, min_sites=1)
    start_experiment(experiment.pk)
    update = experiment.rounds.get(number=1).updates.get(site=site_b)
    assert services.rounds.claim_update(update.pk)  # training, then the worker dies
    consent.withdraw(participant(experiment, site_b).pk, admin_b)
    assert not services.rounds.claim_update(update.pk)  # the redelivered task
    update.refresh_from_db()
    assert update.status == ClientUpdate.Status.FAILED and update.error_code == "withdrawn"


def test_a_configuration_change_voids_the_acceptance(two_sites, charlie, admin_a, admin_b, site_a, site_b):
    experiment = create_experiment(created_by=charlie, name="consent", datasets=list(two_sites), min_sites=2)
    for site, admin, ds in ((site_a, admin_a, two_sites[0]), (site_b, admin_b, two_sites[1])):
        consent.accept(participant(experiment, site).pk, admin, ds.pk)
    assert services.check_ready(experiment) == []

    # Saving the same settings again changes nothing the sites agreed to.
    update_experiment(experiment, name="consent", datasets=list(two_sites), min_sites=2)
    assert services.check_ready(experiment) == []

    experiment = update_experiment(experiment, name="consent", datasets=list(two_sites), min_sites=2, num_rounds=40)
    current = consent.terms_hash(experiment)
    assert {consent.state(p, current) for p in experiment.participants.all()} == {consent.TERMS_CHANGED}
    assert consent.STATE_TEXT[consent.TERMS_CHANGED] == "Terms changed, accept again"
    with pytest.raises(TransitionError, match="0 of the 2 invited"):
        start_experiment(experiment.pk)

    for site, admin, ds in ((site_a, admin_a, two_sites[0]), (site_b, admin_b, two_sites[1])):
        consent.accept(participant(experiment, site).pk, admin, ds.pk)
    assert start_experiment(experiment.pk).status == "running"
    assert participant(experiment, site_a).terms_hash == current


def test_only_a_site_admin_of_that_site_decides(two_sites, make_experiment, make_user, site_a, site_b, admin_a):
    experiment = make_experiment(two_sites, consent=False)
    member = make_user("member-a", site_a)
    with pytest.raises(PermissionError):
        consent.accept(participant(experiment, site_a).pk, member, two_sites[0].pk)
    with pytest.raises(Participant.DoesNotExist):  # site B's invitation is not site A's to decide
        consent.accept(participant(experiment, site_b).pk, admin_a, two_sites[1].pk)
    with pytest.raises(consent.ConsentError, match="not one of Site A's datasets"):
        consent.accept(participant(experiment, site_a).pk, admin_a, two_sites[1].pk)
    with pytest.raises(consent.ConsentError, match="say why"):
        consent.decline(participant(experiment, site_a).pk, admin_a, "   ")
    consent.decline(participant(experiment, site_a).pk, admin_a, "our ethics board has not approved it")
    declined = participant(experiment, site_a)
    assert declined.consent == "declined" and declined.decided_by == admin_a
    event = AuditEvent.objects.get(kind="consent_decline")
    assert event.site_id == site_a.pk and event.actor == "steward-a"


def test_a_withdrawn_dataset_leaves_running_experiments_and_joins_no_new_one(
    two_sites, make_experiment, admin_a, site_a, make_dataset
):
    running = make_experiment(two_sites, min_sites=1)
    start_experiment(running.pk)
    draft = make_experiment([two_sites[0]], consent=False)

    consent.withdraw_dataset(two_sites[0].pk, admin_a)

    p = participant(running, site_a)
    assert p.consent == "withdrawn" and p.withdrawn_from_round == 2
    mine = running.rounds.get(number=1).updates.get(site=site_a)
    assert mine.status == ClientUpdate.Status.FAILED and mine.error_code == "withdrawn"
    with pytest.raises(consent.ConsentError, match="withdrawn and can join no experiment"):
        consent.accept(participant(draft, site_a).pk, admin_a, two_sites[0].pk)
    assert consent.eligible_datasets(draft, site_a) == []
    other = make_dataset(site_a, rows=150, seed=9)
    assert consent.accept(participant(draft, site_a).pk, admin_a, other.pk).consent == "accepted"
    assert AuditEvent.objects.filter(kind="dataset_withdraw", site_id=site_a.pk).count() == 1


# -- what each viewer sees ---------------------------------------------------------------


def test_the_coordinator_sees_every_sites_consent_and_a_site_only_its_own(
    two_sites, make_experiment, admin_a, admin_b, site_a, site_b, client_for, charlie
):
    experiment = make_experiment(two_sites, consent=False)
    consent.decline(participant(experiment, site_b).pk, admin_b, "no capacity this quarter")

    body = client_for(charlie).get(f"/api/v1/experiments/{experiment.pk}/").json()
    assert {(p["site"], p["consent"], p["decline_reason"]) for p in body["participants"]} == {
        ("site-a", "invited", ""),
        ("site-b", "declined", "no capacity this quarter"),
    }
    as_a = client_for(admin_a).get(f"/api/v1/experiments/{experiment.pk}/")
    assert [p["site"] for p in as_a.json()["participants"]] == ["site-a"]
    assert "site-b" not in as_a.content.decode() and "no capacity" not in as_a.content.decode()


def test_a_site_cannot_see_or_decide_another_sites_invitation(
    site_a, site_b, make_dataset, make_experiment, admin_a, client_for, client
):
    theirs = make_experiment([make_dataset(site_b, rows=120)], consent=False, name="site B only")
    api = client_for(admin_a)
    assert api.get("/api/v1/invitations/").json()["results"] == []
    assert api.get(f"/api/v1/invitations/{theirs.pk}/").status_code == 404
    for action, body in (("accept", {"dataset": 1}), ("decline", {"reason": "x"}), ("withdraw", {})):
        assert api.post(f"/api/v1/invitations/{theirs.pk}/{action}/", body, format="json").status_code == 404
    client.force_login(admin_a)
    for name in ("accept", "decline", "withdraw"):
        assert client.post(f"/site/experiments/{theirs.pk}/{name}/", {"dataset": 1, "reason": "x"}).status_code == 404
    assert "site B only" not in client.get("/site/").content.decode()
    assert Participant.objects.get(experiment=theirs).consent == "invited"


def test_site_admin_accepts_on_the_site_home_and_the_api(
    site_a, make_dataset, make_experiment, admin_a, client, client_for
):
    ds = make_dataset(site_a, rows=150)
    experiment = make_experiment([ds], consent=False, name="readmission study", dp_mode="record", dp_epsilon=3.0)
    client.force_login(admin_a)
    page = client.get("/site/").content.decode()
    for shown in ("readmission study", "heart_rate", "epsilon 3.0", "1 site invited", "model weights after each round"):
        assert shown in page, shown
    response = client.post(f"/site/experiments/{experiment.pk}/accept/", {"dataset": ds.pk})
    assert response.status_code == 302
    assert participant(experiment, site_a).consent == "accepted"

    token = client_for(site_a)  # the site's token may say no, never yes
    refused = token.post(f"/api/v1/invitations/{experiment.pk}/accept/", {"dataset": ds.pk}, format="json")
    assert refused.status_code == 403
    listed = client_for(admin_a).get("/api/v1/invitations/").json()["results"]
    assert listed[0]["consent"] == "accepted" and listed[0]["terms_sha256"] == consent.terms_hash(experiment)
    declined = token.post(f"/api/v1/invitations/{experiment.pk}/decline/", {"reason": "paused by IT"}, format="json")
    assert declined.status_code == 200 and declined.json()["consent"] == "declined"


def test_the_coordinators_page_shows_consent_and_the_start_button_explains_the_quorum(
    two_sites, make_experiment, admin_a, site_a, client, charlie
):
    experiment = make_experiment(two_sites, consent=False, min_sites=2)
    consent.accept(participant(experiment, site_a).pk, admin_a, two_sites[0].pk)
    client.force_login(charlie)
    page = client.get(f"/experiments/{experiment.pk}/").content.decode()
    assert 'data-consent="accepted"' in page and 'data-consent="invited"' in page
    assert "Start waits for the quorum: at least 2 invited sites must accept" in page
    assert "waiting for sites to accept: 1 of the 2 invited sites" in page


def test_terms_name_what_leaves_the_site_and_hash_canonically(two_sites, make_experiment, charlie):
    experiment = make_experiment(two_sites, consent=False, secure_aggregation=True, min_sites=2, created_by=charlie)
    body = consent.terms(experiment)
    assert body["coordinator"] == "charlie" and body["sites_invited"] == 2 and body["quorum"] == 2
    assert body["secure_aggregation"] is True and body["features"][0] == "heart_rate"
    assert any("sufficient statistics" in item for item in body["leaves_site"])
    assert consent.hash_terms(dict(reversed(list(body.items())))) == consent.terms_hash(experiment)


def test_an_invitation_id_past_the_database_range_is_a_404_not_a_500(client, make_site):
    """Schemathesis found it: the lookup is on experiment_id, which Django does not
    range-check, and SQLite raised OverflowError."""
    from clients.models import ApiToken

    token = ApiToken.issue(site=make_site("far", mode="agent"))[1]
    for action in ("withdraw", "decline"):
        response = client.post(
            f"/api/v1/invitations/{2**63}/{action}/",
            {"reason": "no"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token}",
        )
        assert response.status_code == 404, (action, response.content)

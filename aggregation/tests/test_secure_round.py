"""A secure experiment over hosted sites, in this process: the protocol's phases as tasks.

``drive_secure`` runs the work in the order Celery would (training, then each site's step
of the open phase through the real task, then the deadline check the sweeper triggers),
with sites that stop answering from a given phase on.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from aggregation import services, tasks
from aggregation.models import (
    ClientUpdate,
    Experiment,
    ModelVersion,
    Round,
    SecureRound,
    SecureSite,
)
from aggregation.reasons import Reason
from aggregation.services import artifacts, secure_round
from fedhealth.files import read_bytes
from fedhealth.ml.secagg import ProtocolViolation, wire
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update

from .conftest import train_pending

pytestmark = pytest.mark.django_db

PHASES = ("advertise", "share", "masked", "consistency", "unmask")


@pytest.fixture
def four_sites(make_site, make_dataset):
    return [make_dataset(make_site(f"site-{i}"), rows=200 + 20 * i, seed=i) for i in range(4)]


@pytest.fixture
def kept(monkeypatch):
    """Each site's trained update as the site kept it (a spy: the real function runs)."""
    seen: dict[tuple[int, str], Update] = {}
    real = secure_round.keep_at_site

    def spy(update_id, weights, *, num_samples, loss, metrics):
        u = ClientUpdate.objects.select_related("round", "site").get(pk=update_id)
        seen[(u.round.number, u.site.slug)] = Update({k: v.copy() for k, v in weights.items()}, num_samples, u.site.slug)
        return real(update_id, weights, num_samples=num_samples, loss=loss, metrics=metrics)

    monkeypatch.setattr(secure_round, "keep_at_site", spy)
    return seen


@pytest.fixture
def posted(monkeypatch):
    """Every message a site posts (the request bodies of the protocol), in order."""
    seen: list[dict] = []
    real = secure_round.post

    def spy(round_id, slug, message):
        seen.append(json.loads(json.dumps(message)))
        return real(round_id, slug, message)

    monkeypatch.setattr(secure_round, "post", spy)
    return seen


@pytest.fixture
def drive_secure():
    def run(experiment_id: int, *, silent: dict[str, str] | None = None, snapshots: list | None = None,
            max_steps: int = 400) -> Experiment:
        """``silent``: site slug -> the first phase it no longer answers (dropped)."""
        silent = silent or {}
        finished: set[int] = set()
        for _ in range(max_steps):
            progressed = train_pending(experiment_id)
            for secure in SecureRound.objects.filter(
                round__experiment_id=experiment_id, round__status=Round.Status.AGGREGATING
            ):
                owing = secure.sites.filter(status=SecureSite.Status.ACTIVE).exclude(last_phase=secure.phase)
                stepped = False
                for place in owing.select_related("site"):
                    quiet = silent.get(place.site.slug)
                    if quiet is not None and PHASES.index(secure.phase) >= PHASES.index(quiet):
                        continue
                    tasks.secure_site_step.apply(args=[secure.round_id, place.site_id])
                    stepped = True
                if not stepped:  # only silent sites are owed: the phase's deadline passes
                    tasks.aggregate_round.apply(args=[secure.round_id])
                    secure_round.advance(secure.round_id, now=secure.phase_deadline + timedelta(seconds=1))
                if snapshots is not None:
                    snapshots.extend(SecureRound.objects.filter(pk=secure.pk).values("state", "task"))
                progressed = True
            for secure in SecureRound.objects.filter(
                round__experiment_id=experiment_id, phase__in=["done", "failed"]
            ).exclude(pk__in=finished):
                finished.add(secure.pk)  # the last dispatch: each site forgets the round
                for site_id in secure.sites.values_list("site_id", flat=True):
                    assert tasks.secure_site_step.apply(args=[secure.round_id, site_id]).get() == "forgotten: round over"
                progressed = True
            for version in ModelVersion.objects.filter(experiment_id=experiment_id, evaluations__isnull=True):
                for site_id in version.experiment.participants.values_list("site_id", flat=True):
                    tasks.evaluate_site.apply(args=[version.pk, site_id])
                    progressed = True
            if not progressed:
                break
        return Experiment.objects.get(pk=experiment_id)

    return run


def _secure_experiment(make_experiment, datasets, **kwargs):
    return make_experiment(datasets, secure_aggregation=True, **({"num_rounds": 2} | kwargs))


def _plain_fedavg(experiment, number: int, updates: list[Update]):
    round_ = Round.objects.get(experiment=experiment, number=number)
    previous, _ = artifacts.global_weights_for(round_)
    return FedAvg().aggregate(previous, updates).weights


def _assert_version_is_fedavg(experiment, number, updates):
    round_ = Round.objects.get(experiment=experiment, number=number)
    version = ModelVersion.objects.get(experiment=experiment, version=number)
    got = artifacts.load_weights(version.weights_file, version.sha256)
    plain = _plain_fedavg(experiment, number, updates)
    bound = round_.metrics["secure"]["error_bound"]
    assert 0 < bound < 1e-4
    for name in plain:
        # The protocol's stated bound, plus the float32 rounding of the stored model.
        tol = bound + np.finfo(np.float32).eps * float(np.abs(plain[name]).max() + 1)
        assert np.abs(got[name].astype(np.float64) - plain[name].astype(np.float64)).max() <= tol, name
    return round_


def test_secure_versions_equal_plain_fedavg_of_the_same_updates(four_sites, make_experiment, drive_secure, kept):
    experiment = _secure_experiment(make_experiment, four_sites)
    services.start_experiment(experiment.pk)
    experiment = drive_secure(experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED
    for number in (1, 2):
        updates = [kept[(number, f"site-{i}")] for i in range(4)]
        round_ = _assert_version_is_fedavg(experiment, number, updates)
        assert round_.status == Round.Status.COMPLETED
        assert sorted(round_.metrics["accepted"]) == [f"site-{i}" for i in range(4)]
        assert round_.metrics["num_samples"] == sum(u.num_samples for u in updates)
        assert round_.secure.phase == SecureRound.Phase.DONE
        assert round_.secure.state == {} and round_.secure.task == {}
        assert set(round_.secure.sites.values_list("last_phase", flat=True)) == {"unmask"}
        # no update of a secure experiment is stored on the server's side
        assert not round_.updates.exclude(weights_file="").exists()
    # each site deleted its round secrets and its kept update once the round was over
    for ds in four_sites:
        _, files = default_storage.listdir(f"datasets/{ds.site.slug}/secagg")
        assert files == []


def test_a_site_dropping_after_sharing_keys_is_recovered(four_sites, make_experiment, drive_secure, kept):
    experiment = _secure_experiment(make_experiment, four_sites, num_rounds=1)
    services.start_experiment(experiment.pk)
    experiment = drive_secure(experiment.pk, silent={"site-3": "masked"})

    assert experiment.status == Experiment.Status.COMPLETED
    round_ = _assert_version_is_fedavg(experiment, 1, [kept[(1, f"site-{i}")] for i in range(3)])
    assert round_.metrics["secure"]["dropped"] == ["site-3"]
    assert sorted(round_.metrics["accepted"]) == ["site-0", "site-1", "site-2"]
    assert [r["code"] for r in round_.metrics["rejected"]] == [Reason.SECAGG_DROPPED]
    place = SecureSite.objects.get(secure_round=round_.secure, site__slug="site-3")
    assert (place.status, place.dropped_in, place.last_phase) == ("dropped", "masked", "share")


def test_below_threshold_fails_closed_and_keeps_the_previous_model(four_sites, make_experiment, drive_secure):
    experiment = _secure_experiment(make_experiment, four_sites[:3], num_rounds=1)
    services.start_experiment(experiment.pk)
    experiment = drive_secure(experiment.pk, silent={"site-1": "masked", "site-2": "masked"})

    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.status == Round.Status.FAILED
    assert round_.failure_code == Reason.SECAGG_THRESHOLD
    assert "failed closed" in round_.failure_reason
    assert round_.secure.phase == SecureRound.Phase.FAILED and round_.secure.state == {}
    assert not ModelVersion.objects.filter(experiment=experiment).exists()  # the initial model stays
    assert experiment.status == Experiment.Status.FAILED
    assert sorted(round_.metrics["secure"]["dropped"]) == ["site-1", "site-2"]


def test_threshold_above_the_sites_that_trained_fails_closed_at_once(four_sites, make_experiment, drive_secure):
    experiment = _secure_experiment(make_experiment, four_sites[:3], num_rounds=1, secagg_threshold=3)
    services.start_experiment(experiment.pk)
    bad = ClientUpdate.objects.get(round__experiment=experiment, site__slug="site-0")
    services.fail_update(bad.pk, Reason.TRAINING_FAILED)
    experiment = drive_secure(experiment.pk)

    round_ = Round.objects.get(experiment=experiment, number=1)
    assert (round_.status, round_.failure_code) == (Round.Status.FAILED, Reason.SECAGG_THRESHOLD)
    assert not SecureRound.objects.filter(round=round_).exists()


def _blobs(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _blobs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _blobs(v)
    elif isinstance(value, str) and len(value) >= 8:
        with contextlib.suppress(ProtocolViolation):
            yield wire.unb64(value, "x")


def test_nothing_stored_or_posted_decodes_to_one_sites_update(
    four_sites, make_experiment, drive_secure, kept, posted
):
    experiment = _secure_experiment(make_experiment, four_sites, num_rounds=1)
    services.start_experiment(experiment.pk)
    snapshots: list = []
    drive_secure(experiment.pk, silent={"site-3": "masked"}, snapshots=snapshots)
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert round_.status == Round.Status.COMPLETED
    previous, _ = artifacts.global_weights_for(round_)
    flat_prev = np.concatenate([v.reshape(-1) for v in previous.values()]).astype(np.float64)
    targets = []
    for i in range(4):
        u = kept[(1, f"site-{i}")]
        flat = np.concatenate([u.weights[k].reshape(-1) for k in previous]).astype(np.float64)
        targets += [flat, flat - flat_prev]

    # every request body, every stored protocol state, every database row of the round,
    # and every file the server side stores (everything but the sites' private folders)
    rows = [*Round.objects.filter(pk=round_.pk).values(), *ClientUpdate.objects.filter(round=round_).values(),
            *SecureSite.objects.filter(secure_round__round=round_).values()]
    items = [*posted, *snapshots, json.loads(json.dumps(rows, default=str))]
    files = []
    for top in ("updates", "experiments"):
        stack = [top]
        while stack:
            d = stack.pop()
            if not default_storage.exists(d):
                continue
            dirs, names = default_storage.listdir(d)
            stack += [f"{d}/{x}" for x in dirs]
            files += [f"{d}/{x}" for x in names]
    assert not any(f.startswith("updates/") for f in files)
    raws = [read_bytes(f) for f in files if "initial" not in f]
    n = len(flat_prev)
    limit = 7 / np.sqrt(n)  # ~7 sigma for n independent values; any scaled copy gives ~1
    checked = 0
    for blob in [*(b for item in items for b in _blobs(item)), *raws]:
        for t in targets:
            assert t.astype(np.float32).tobytes()[:64] not in blob
        if len(blob) >= 4 * n and len(set(blob)) > 1:
            checked += 1
            for view in (np.frombuffer(blob[: 4 * n], "<i4").astype(np.float64),
                         np.frombuffer(blob[: 4 * n], "<u4").astype(np.float64)):
                for t in targets:
                    assert abs(np.corrcoef(view, t)[0, 1]) < limit
    assert checked >= 3  # the survivors' masked vectors at least were examined
    # while the published aggregate is the FedAvg of the survivors
    _assert_version_is_fedavg(experiment, 1, [kept[(1, f"site-{i}")] for i in range(3)])


def test_a_redelivered_phase_task_is_harmless(four_sites, make_experiment, drive_secure, kept, monkeypatch):
    experiment = _secure_experiment(make_experiment, four_sites[:3], num_rounds=1)
    services.start_experiment(experiment.pk)
    for update_id in ClientUpdate.objects.filter(round__experiment=experiment).values_list("pk", flat=True):
        services.train_hosted_update(update_id)
    round_ = Round.objects.get(experiment=experiment, number=1)
    site = four_sites[0].site
    assert secure_round.run_site_phase(round_.pk, site.pk) == "posted"
    # delivered again: counted once
    assert tasks.secure_site_step.apply(args=[round_.pk, site.pk]).get() == "skipped: already counted"
    state = SecureRound.objects.get(round=round_).state
    assert len(state["adverts"]) == 1

    # a worker killed after saving its step, before posting: the redelivery posts the
    # saved bytes (never a new computation)
    sent = []
    real = secure_round.post

    def crash_once(round_id, slug, message):
        sent.append(message)
        if len(sent) == 1:
            raise ConnectionError("worker killed")
        return real(round_id, slug, message)

    monkeypatch.setattr(secure_round, "post", crash_once)
    other = four_sites[1].site
    with pytest.raises(ConnectionError):
        secure_round.run_site_phase(round_.pk, other.pk)
    assert secure_round.run_site_phase(round_.pk, other.pk) == "posted"
    assert sent[0] == sent[1]
    # the same message posted again is a replay, counted once
    assert real(round_.pk, other.slug, sent[0]) == "replay"
    # a site posting for another is refused
    with pytest.raises(ProtocolViolation):
        real(round_.pk, four_sites[2].site.slug, sent[0])
    monkeypatch.setattr(secure_round, "post", real)

    experiment = drive_secure(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED
    _assert_version_is_fedavg(experiment, 1, [kept[(1, f"site-{i}")] for i in range(3)])
    # an aggregation task redelivered after the unmasking changes nothing
    version = ModelVersion.objects.get(experiment=experiment, version=1)
    tasks.aggregate_round.apply(args=[round_.pk])
    secure_round.advance(round_.pk, now=timezone.now() + timedelta(days=1))
    assert ModelVersion.objects.filter(experiment=experiment).count() == 1
    assert ModelVersion.objects.get(pk=version.pk).sha256 == version.sha256


def _step_until(experiment_id: int, phase: str) -> SecureRound:
    """Train, then take every owed site step until the round's protocol reaches ``phase``."""
    for _ in range(40):
        train_pending(experiment_id)
        secure = SecureRound.objects.filter(round__experiment_id=experiment_id).first()
        if secure is not None and secure.phase == phase:
            return secure
        if secure is not None:
            for place in secure.sites.exclude(last_phase=secure.phase):
                tasks.secure_site_step.apply(args=[secure.round_id, place.site_id])
    raise AssertionError(f"the protocol never reached {phase}")


def test_a_hosted_site_reveals_nothing_without_t_signatures_over_the_list_it_signed(
    four_sites, make_experiment, drive_secure, kept
):
    """Bonawitz's ConsistencyCheck on a hosted site's queue: the server's unmask task with a
    forged signature, too few signatures, or another survivor list is refused
    (secagg_inconsistent) before any share is revealed; the honest task is answered."""
    experiment = _secure_experiment(make_experiment, four_sites, num_rounds=1)
    services.start_experiment(experiment.pk)
    secure = _step_until(experiment.pk, "unmask")
    site = four_sites[0].site
    place = secure.sites.get(site=site)
    assert place.last_phase == "consistency"
    honest = json.loads(json.dumps(secure.task))
    request = honest["request"]
    assert sorted(request["signatures"]) == sorted(request["survivors"])  # all four signed
    first, second = sorted(request["signatures"])[:2]
    forged = {**request["signatures"], first: request["signatures"][second]}
    lies = [
        {**request, "signatures": forged},
        {**request, "signatures": dict(list(request["signatures"].items())[:2])},  # 2 < t = 3
        {**request, "survivors": request["survivors"][:3]},
    ]
    for lie in lies:
        SecureRound.objects.filter(pk=secure.pk).update(task={**honest, "request": lie})
        with pytest.raises(ProtocolViolation) as info:
            secure_round.run_site_phase(secure.round_id, site.pk)
        assert info.value.code == "secagg_inconsistent"
        place.refresh_from_db()
        assert place.last_phase == "consistency"  # nothing posted
        state = json.loads(read_bytes(secure_round._state_name(site, secure.round)))
        assert "unmask" not in state["protocol"]["outbox"]  # nothing revealed, nothing saved
    SecureRound.objects.filter(pk=secure.pk).update(task=honest)
    experiment = drive_secure(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED
    _assert_version_is_fedavg(experiment, 1, [kept[(1, f"site-{i}")] for i in range(4)])


def test_plain_experiment_is_unchanged(four_sites, make_experiment, drive):
    experiment = make_experiment(four_sites[:2], num_rounds=1)
    services.start_experiment(experiment.pk)
    experiment = drive(experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED
    round_ = Round.objects.get(experiment=experiment, number=1)
    assert not SecureRound.objects.filter(round=round_).exists()
    assert round_.updates.exclude(weights_file="").count() == 2
    assert "secure" not in round_.metrics


# -- the option at the creation service (behind the form, the API and the admin) ---------

def _create(datasets, **config):
    from aggregation.services.creation import create_experiment

    return create_experiment(name="secure", datasets=[d.pk for d in datasets], **config)


def test_the_option_is_validated_by_the_creation_service(four_sites, make_site, make_dataset):
    from aggregation.services.creation import ExperimentInvalid

    experiment = _create(four_sites[:3], secure_aggregation=True)
    assert experiment.secure_aggregation and experiment.secagg_threshold is None
    assert _create(four_sites, secure_aggregation=True, secagg_threshold=4, strategy="fedadam").secagg_threshold == 4

    def errors(datasets, **config):
        with pytest.raises(ExperimentInvalid) as caught:
            _create(datasets, **config)
        return caught.value.errors

    robust = errors(four_sites, secure_aggregation=True, strategy="fedmedian")
    assert "needs each site's update" in robust["strategy"][0] and "only their sum" in robust["strategy"][0]
    low = errors(four_sites, secure_aggregation=True, secagg_threshold=2)
    assert low["secagg_threshold"] == ["secure-aggregation threshold must be between 3 and 4 for 4 sites, got 2."]
    assert "between 3 and 4" in errors(four_sites, secure_aggregation=True, secagg_threshold=5)["secagg_threshold"][0]
    assert "applies only with secure_aggregation on" in errors(four_sites, secagg_threshold=3)["secagg_threshold"][0]
    assert "true or false" in errors(four_sites, secure_aggregation="yes")["secure_aggregation"][0]
    assert "at least 2 sites" in errors(four_sites[:1], secure_aggregation=True)["secure_aggregation"][0]
    from clients.models import Site

    agent = make_site("agent-site", mode=Site.Mode.AGENT)
    from clients.models import Dataset

    ds = Dataset.objects.create(site=agent, name="remote", row_count=300, status=four_sites[0].status,
                                schema=four_sites[0].schema, stats=four_sites[0].stats)
    # agent sites take part in secure rounds (tests/agent/test_agent_secure.py)
    assert _create([*four_sites[:2], ds], secure_aggregation=True).secure_aggregation


def test_an_update_in_the_clear_is_refused_in_a_secure_experiment(four_sites, make_experiment):
    experiment = _secure_experiment(make_experiment, four_sites[:2], num_rounds=1)
    services.start_experiment(experiment.pk)
    update = ClientUpdate.objects.filter(round__experiment=experiment).first()
    previous = artifacts.global_weights_for(update.round)[0]
    with pytest.raises(services.UpdateRefused, match="sent only masked"):
        services.submit_update(update.pk, previous, num_samples=10, loss=None, metrics={}, source="agent")
    assert ClientUpdate.objects.get(pk=update.pk).weights_file == ""


def test_a_crash_during_the_unmasking_rolls_back_and_it_runs_once(four_sites, make_experiment, drive_secure, kept,
                                                                    monkeypatch):
    experiment = _secure_experiment(make_experiment, four_sites[:3], num_rounds=1)
    services.start_experiment(experiment.pk)
    real = artifacts.save_weights
    crashes = []

    def crash_once(name, weights, metadata=None):
        if name.startswith("models/") and not crashes:  # the version file, inside the unmasking
            crashes.append(name)
            raise OSError("worker killed while unmasking")
        return real(name, weights, metadata)

    monkeypatch.setattr(artifacts, "save_weights", crash_once)
    experiment = drive_secure(experiment.pk)

    assert crashes  # it did crash once, and the whole close was rolled back
    assert experiment.status == Experiment.Status.COMPLETED
    assert ModelVersion.objects.filter(experiment=experiment).count() == 1
    _assert_version_is_fedavg(experiment, 1, [kept[(1, f"site-{i}")] for i in range(3)])

"""Agents in secure rounds, against a live (in-process) server: a round mixing hosted sites
and agents equals FedAvg of the same updates, no request body an agent sends holds its
update in the clear, its secrets stay in its state folder, and the agent endpoints refuse
broken or hostile messages with a reason."""

from __future__ import annotations

import contextlib
import json
import stat
from urllib.parse import urlparse

import numpy as np
import pytest

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round, SecureRound
from aggregation.services import artifacts, secure_round
from aggregation.services.lifecycle import start_experiment
from clients.models import Dataset
from fedhealth.agent.client import ApiClient
from fedhealth.agent.data import LocalData
from fedhealth.agent.loop import SiteAgent
from fedhealth.agent.secure import SecureStore
from fedhealth.ml.secagg import ProtocolViolation, wire
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update
from tests.agent.proxy import RecordingProxy

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def proxy(live_server):
    with RecordingProxy(urlparse(live_server.url).port) as p:
        yield p


@pytest.fixture
def kept(monkeypatch):
    """Every site's trained update as it kept it, hosted (storage) or agent (its folder):
    spies, the real functions run."""
    seen: dict[tuple[int, str], Update] = {}
    real_hosted, real_agent = secure_round.keep_at_site, SecureStore.keep

    def hosted(update_id, weights, *, num_samples, loss, metrics):
        u = ClientUpdate.objects.select_related("round", "site").get(pk=update_id)
        seen[(u.round.number, u.site.slug)] = Update(dict(weights), num_samples, u.site.slug)
        return real_hosted(update_id, weights, num_samples=num_samples, loss=loss, metrics=metrics)

    def agent(store, round_id, weights, reference, num_samples):
        real_agent(store, round_id, weights, reference, num_samples)
        folder = store.folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
        slug = folder.parent.name  # each agent's state folder is named after its site
        seen[(Round.objects.get(pk=round_id).number, slug)] = Update(dict(weights), num_samples, slug)

    monkeypatch.setattr(secure_round, "keep_at_site", hosted)
    monkeypatch.setattr(SecureStore, "keep", agent)
    return seen


def make_agent(server, token, path, state) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01), LocalData.from_source(path), state_dir=state
    )


def drive(agents, experiment_id, rounds=40) -> Experiment:
    for _ in range(rounds):
        for a in agents:
            a.run_once()
        experiment = Experiment.objects.get(pk=experiment_id)
        if experiment.status in (Experiment.Status.COMPLETED, Experiment.Status.FAILED):
            for a in agents:  # one more poll: each agent deletes its round secrets
                a.run_once()
            return experiment
    return Experiment.objects.get(pk=experiment_id)


def _assert_version_is_fedavg(experiment, number, updates):
    round_ = Round.objects.get(experiment=experiment, number=number)
    version = ModelVersion.objects.get(experiment=experiment, version=number)
    got = artifacts.load_weights(version.weights_file, version.sha256)
    previous, _ = artifacts.global_weights_for(round_)
    plain = FedAvg().aggregate(previous, updates).weights
    bound = round_.metrics["secure"]["error_bound"]
    assert 0 < bound < 1e-4
    for name in plain:
        tol = bound + np.finfo(np.float32).eps * float(np.abs(plain[name]).max() + 1)
        assert np.abs(got[name].astype(np.float64) - plain[name].astype(np.float64)).max() <= tol


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


@pytest.fixture
def mixed(make_site, make_dataset, agent_csv, tmp_path, live_server, proxy):
    """Two hosted sites and two agents (through the recording proxy), with datasets."""
    from clients.models import ApiToken

    hosted = [make_dataset(make_site(f"hosted-{i}"), rows=260 + 20 * i, seed=40 + i) for i in range(2)]
    agents, datasets = [], list(hosted)
    for i in range(2):
        site = make_site(f"remote-{i}", mode="agent")
        token = ApiToken.issue(site=site, name="agent")[1]
        agent = make_agent(proxy.url, token, agent_csv(site.slug, rows=240 + 30 * i, seed=50 + i), tmp_path / site.slug)
        datasets.append(Dataset.objects.get(pk=agent.register()))
        agents.append(agent)
    return agents, datasets


def test_a_mixed_secure_round_equals_fedavg_and_no_agent_request_holds_its_update(
    mixed, make_experiment, eager_celery, kept, proxy, tmp_path
):
    agents, datasets = mixed
    experiment = make_experiment(datasets, num_rounds=2, min_sites=4, secure_aggregation=True)
    start_experiment(experiment.pk)

    experiment = drive(agents, experiment.pk)

    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    for number in (1, 2):
        round_ = Round.objects.get(experiment=experiment, number=number)
        assert round_.secure.phase == SecureRound.Phase.DONE
        assert sorted(round_.metrics["accepted"]) == ["hosted-0", "hosted-1", "remote-0", "remote-1"]
        assert sorted(round_.updates.values_list("source", flat=True)) == ["agent", "agent", "hosted", "hosted"]
        _assert_version_is_fedavg(experiment, number, [kept[(number, d.site.slug)] for d in datasets])
    assert not ClientUpdate.objects.filter(round__experiment=experiment).exclude(weights_file="").exists()
    # each agent took every step of both rounds, and deleted its round secrets afterwards
    sent = proxy.requests
    for step in ("trained", "secure/advertise", "secure/shares", "secure/masked", "secure/unmask"):
        assert sum(r.method == "POST" and r.path.endswith(f"/{step}/") for r in sent) == 4, step
    assert not any(r.path.endswith("/update/") for r in sent)  # never the weights in the clear
    for i in range(2):
        assert list((tmp_path / f"remote-{i}" / "secagg").iterdir()) == []

    # No request body decodes to an agent's update, its change, or a scaled copy of either.
    checked = 0
    for number in (1, 2):
        previous, _ = artifacts.global_weights_for(Round.objects.get(experiment=experiment, number=number))
        flat_prev = np.concatenate([v.reshape(-1) for v in previous.values()]).astype(np.float64)
        n = len(flat_prev)
        limit = 7 / np.sqrt(n)  # ~7 sigma for n independent values; any scaled copy gives ~1
        targets = []
        for slug in ("remote-0", "remote-1"):
            u = kept[(number, slug)]
            flat = np.concatenate([u.weights[k].reshape(-1) for k in previous]).astype(np.float64)
            targets += [flat, flat - flat_prev]
        for request in sent:
            blobs = [request.body]
            with contextlib.suppress(ValueError):
                blobs += list(_blobs(json.loads(request.body)))
            for blob in blobs:
                for t in targets:
                    assert t.astype(np.float32).tobytes()[:64] not in blob
                if len(blob) >= 4 * n and len(set(blob)) > 1:
                    checked += 1
                    for view in (np.frombuffer(blob[: 4 * n], "<i4"), np.frombuffer(blob[: 4 * n], "<u4")):
                        for t in targets:
                            assert abs(np.corrcoef(view.astype(np.float64), t)[0, 1]) < limit
    assert checked >= 4  # the agents' masked vectors at least were examined

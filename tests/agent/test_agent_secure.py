"""Agents in secure rounds, against a live (in-process) server: a round mixing hosted sites
and agents equals FedAvg of the same updates, no request body an agent sends holds its
update in the clear, its secrets stay in its state folder, and the agent endpoints refuse
broken or hostile messages with a reason."""

from __future__ import annotations

import contextlib
import json
import re
import stat
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

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

    def agent(store, round_id, weights, reference, num_samples, site_dp=None):
        real_agent(store, round_id, weights, reference, num_samples, site_dp)
        folder = store.folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
        slug = folder.parent.name  # each agent's state folder is named after its site
        seen[(Round.objects.get(pk=round_id).number, slug)] = Update(
            dict(weights), num_samples, slug
        )

    monkeypatch.setattr(secure_round, "keep_at_site", hosted)
    monkeypatch.setattr(SecureStore, "keep", agent)
    return seen


def make_agent(server, token, path, state) -> SiteAgent:
    return SiteAgent(
        ApiClient(server, token, retries=1, backoff=0.01),
        LocalData.from_source(path),
        state_dir=state,
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

    hosted = [
        make_dataset(make_site(f"hosted-{i}"), rows=260 + 20 * i, seed=40 + i) for i in range(2)
    ]
    agents, datasets = [], list(hosted)
    for i in range(2):
        site = make_site(f"remote-{i}", mode="agent")
        token = ApiToken.issue(site=site, name="agent")[1]
        agent = make_agent(
            proxy.url,
            token,
            agent_csv(site.slug, rows=240 + 30 * i, seed=50 + i),
            tmp_path / site.slug,
        )
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
        assert sorted(round_.metrics["accepted"]) == [
            "hosted-0",
            "hosted-1",
            "remote-0",
            "remote-1",
        ]
        assert sorted(round_.updates.values_list("source", flat=True)) == [
            "agent",
            "agent",
            "hosted",
            "hosted",
        ]
        _assert_version_is_fedavg(
            experiment, number, [kept[(number, d.site.slug)] for d in datasets]
        )
    assert (
        not ClientUpdate.objects.filter(round__experiment=experiment)
        .exclude(weights_file="")
        .exists()
    )
    # each agent took every step of both rounds, and deleted its round secrets afterwards
    sent = proxy.requests
    for step in (
        "trained",
        "secure/advertise",
        "secure/shares",
        "secure/masked",
        "secure/consistency",
        "secure/unmask",
    ):
        assert sum(r.method == "POST" and r.path.endswith(f"/{step}/") for r in sent) == 4, step
    assert not any(r.path.endswith("/update/") for r in sent)  # never the weights in the clear
    for i in range(2):
        assert list((tmp_path / f"remote-{i}" / "secagg").iterdir()) == []

    # No request body decodes to an agent's update, its change, or a scaled copy of either.
    checked = 0
    for number in (1, 2):
        previous, _ = artifacts.global_weights_for(
            Round.objects.get(experiment=experiment, number=number)
        )
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
                    for view in (
                        np.frombuffer(blob[: 4 * n], "<i4"),
                        np.frombuffer(blob[: 4 * n], "<u4"),
                    ):
                        for t in targets:
                            assert abs(np.corrcoef(view.astype(np.float64), t)[0, 1]) < limit
    assert checked >= 4  # the agents' masked vectors at least were examined


def _strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_an_agent_in_a_secure_round_learns_no_other_sites_identity(
    mixed, make_experiment, eager_celery, proxy
):
    """Rosters, share recipients, survivor lists, signatures, unmask requests and errors name
    the other sites by per-round pseudonyms: no other site's slug, name or pk reaches an agent,
    and the pseudonyms of one round share nothing with the next."""
    from clients.models import ApiToken, Site

    agents, datasets = mixed
    experiment = make_experiment(datasets, num_rounds=2, min_sites=4, secure_aggregation=True)
    start_experiment(experiment.pk)
    experiment = drive(agents, experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason

    sites = [d.site for d in datasets]
    ids_by_round = {}
    for number in (1, 2):
        secure = Round.objects.get(experiment=experiment, number=number).secure
        ids = dict(secure.sites.values_list("site__slug", "protocol_id"))
        assert all(re.fullmatch(r"p[0-9a-f]{16}", i) for i in ids.values()), ids
        ids_by_round[number] = ids
    assert not set(ids_by_round[1].values()) & set(ids_by_round[2].values())

    tokens = {t.site.slug: t for t in ApiToken.objects.select_related("site")}
    seen_ids = {number: set() for number in (1, 2)}
    checked = 0
    for request, _status, body in proxy.responses:
        auth = request.headers.get("Authorization", "")
        me = next(
            s for s in sites if s.mode == Site.Mode.AGENT and tokens[s.slug].matches(auth.split()[-1])
        )
        others = [s for s in sites if s != me]
        for other in others:  # in the raw body: nowhere, in any response (JSON or not)
            assert other.slug.encode() not in body, (request.path, other.slug)
            assert other.name.encode() not in body, (request.path, other.name)
        if "/secure" not in request.path:
            continue
        checked += 1
        data = json.loads(body)
        texts = set(_strings(data))
        for other in others:  # as a value or key anywhere in the answer, the pk as text too
            assert not {other.slug, other.name, str(other.pk)} & texts, (request.path, other)
        if request.method == "GET" and data.get("task"):
            number = Round.objects.get(pk=data["round"]).number
            assert data["protocol_id"] == ids_by_round[number][me.slug]
            roster = data["task"].get("roster") or {}
            named = {e["site"] for e in roster.get("entries", [])}
            named |= set(data["task"].get("inbox") or {})
            req = data["task"].get("request") or {}
            named |= set(req.get("survivors", [])) | set(req.get("signatures", {}))
            assert named <= set(ids_by_round[number].values()), named
            seen_ids[number] |= named
    assert checked >= 2 * 2 * 6  # each agent's tasks and posts of both rounds were examined
    for number in (1, 2):  # the agents did see the other sites, by pseudonym
        assert seen_ids[number] == set(ids_by_round[number].values())


class LyingServer(ApiClient):
    """The real client, except that a test can make the server's answer to GET
    rounds/<id>/secure/ a forged one (what a malicious server could send)."""

    forged: dict | None = None

    def get_json(self, path, **params):
        if self.forged is not None and path.endswith("/secure/"):
            return self.forged
        return super().get_json(path, **params)


@pytest.fixture
def three_agents(make_site, agent_csv, tmp_path, live_server):
    from clients.models import ApiToken

    agents, tokens, datasets = [], [], []
    for i in range(3):
        site = make_site(f"remote-{i}", mode="agent")
        token = ApiToken.issue(site=site, name="agent")[1]
        client = LyingServer(live_server.url, token, retries=1, backoff=0.01)
        agent = SiteAgent(
            client,
            LocalData.from_source(agent_csv(site.slug, rows=200, seed=60 + i)),
            state_dir=tmp_path / site.slug,
        )
        datasets.append(Dataset.objects.get(pk=agent.register()))
        agents.append(agent)
        tokens.append(token)
    outsider = make_site("outsider", mode="agent")
    return agents, tokens, datasets, ApiToken.issue(site=outsider, name="agent")[1]


def _until(agents, predicate, steps=30):
    for _ in range(steps):
        if predicate():
            return
        for a in agents:
            a.run_once()
    assert predicate()


def _secure(experiment_id, number):
    return SecureRound.objects.filter(
        round__experiment_id=experiment_id, round__number=number
    ).first()


def test_hostile_messages_are_refused_with_a_reason_and_the_round_still_completes(
    three_agents, make_experiment, eager_celery, live_server, caplog
):
    agents, tokens, datasets, outsider = three_agents
    experiment = make_experiment(datasets, num_rounds=2, min_sites=2, secure_aggregation=True)
    start_experiment(experiment.pk)
    sent: list[dict] = []  # remote-0's honest messages, to replay later
    real_post = agents[0].client.post_json

    def record(path, body=None):
        if "/secure/" in path:
            sent.append(json.loads(json.dumps(body)))
        return real_post(path, body)

    agents[0].client.post_json = record
    _until(agents, lambda: Round.objects.filter(experiment=experiment, number=2).exists())
    round1 = {m["kind"]: m for m in sent}
    rid = Round.objects.get(experiment=experiment, number=2).pk
    # the others train round 2 first: remote-0's report opens the protocol, and its
    # own pass had fetched its work before, so it has not advertised yet
    for a in [*agents[1:], agents[0]]:
        a.run_once()

    def advance(phase):  # remote-0 takes its step, then the others close the phase
        for a in agents:
            a.run_once()
        assert _secure(experiment.pk, 2).phase == phase

    def post(kind, body, token=tokens[0], raw=None):
        return requests.post(
            f"{live_server.url}/api/v1/agent/rounds/{rid}/secure/{kind}/",
            json=None if raw is not None else body,
            data=raw,
            headers={
                "Authorization": f"Bearer {token}",
                **({"Content-Type": "application/json"} if raw else {}),
            },
            timeout=30,
        )

    def refused(response, status, *words):
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        for w in words:
            assert w in detail, detail
        return response.json()

    # advertise phase, remote-0 has not advertised yet
    assert _secure(experiment.pk, 2).phase == "advertise"
    replay = round1["advertise"]
    refused(post("advertise", replay), 400, "round 1", "this is", "round 2")
    refused(post("masked", replay), 400, "this endpoint takes 'masked' messages, got 'advertise'")
    ids = dict(_secure(experiment.pk, 2).sites.values_list("site__slug", "protocol_id"))
    for_another = {**replay, "ctx": {**replay["ctx"], "round": 2}, "site": ids["remote-1"]}
    refused(
        post("advertise", for_another),
        400,
        f"site '{ids['remote-0']}' posted a message for site '{ids['remote-1']}'",
    )
    assert post("advertise", replay, token=outsider).status_code == 404  # not its round
    refused(
        post("advertise", None, raw=b'{"kind": "advertise", "pad": "' + b"x" * 5000 + b'"}'),
        413,
        "at most",
    )
    # nothing counted: remote-0 still owes its advertisement
    assert _secure(experiment.pk, 2).sites.get(site__slug="remote-0").last_phase == ""

    advance("share")
    shares = round1["shares"]
    ghost = {
        **shares,
        "ctx": {**shares["ctx"], "round": 2},
        "site": ids["remote-0"],
        "ciphertexts": {
            **shares["ciphertexts"],
            "ghost-site": next(iter(shares["ciphertexts"].values())),
        },
    }
    refused(post("shares", ghost), 400, "sent shares for", "'ghost-site'", "expected")

    advance("masked")
    masked = {
        **round1["masked"],
        "ctx": {**round1["masked"]["ctx"], "round": 2},
        "site": ids["remote-0"],
    }
    length = len(wire.unb64(masked["vector"], "vector"))
    short = {**masked, "vector": wire.b64(bytes(length - 4))}
    refused(post("masked", short), 400, f"masked vector of {length - 4} bytes, expected {length}")
    refused(
        post("masked", {**masked, "vector": [2**40, -1]}),
        400,
        "field 'vector': expected base64 text",
    )
    refused(post("masked", round1["masked"]), 400, "round 1")

    advance("consistency")
    signature = {
        **round1["signature"],
        "ctx": {**round1["signature"]["ctx"], "round": 2},
        "site": ids["remote-0"],
    }
    refused(post("consistency", signature), 400, "signature does not verify")  # last round's

    # A lying server hands remote-1 the unmask request with remote-2's signature forged:
    # remote-1 refuses and reveals nothing.
    advance("unmask")
    honest = agents[1].client.get_json(f"/agent/rounds/{rid}/secure/")
    request = honest["task"]["request"]
    assert sorted(request["signatures"]) == sorted(ids.values())
    forged = {**request["signatures"], ids["remote-2"]: wire.b64(bytes(64))}
    agents[1].client.forged = {
        **honest,
        "task": {**honest["task"], "request": {**request, "signatures": forged}},
    }
    agents[1].secure.step({"round": rid}, "remote-1")
    agents[1].client.forged = None
    assert (
        f"the signatures of ['{ids['remote-2']}'] over the survivor list do not verify"
        in caplog.text
    )
    assert _secure(experiment.pk, 2).sites.get(site__slug="remote-1").last_phase == "consistency"
    agents[1].secure._refused.clear()  # as after a restart: the honest request gets its answer

    task = agents[0].client.get_json(f"/agent/rounds/{rid}/secure/")
    assert task["task"]["phase"] == "unmask"
    reply = {
        **round1["unmask_reply"],
        "ctx": {**round1["unmask_reply"]["ctx"], "round": 2},
        "site": ids["remote-0"],
    }
    wrong = {
        **reply,
        "seed_shares": {"ghost-site": next(iter(reply["seed_shares"].values()))},
        "key_shares": {},
    }
    refused(post("unmask", wrong), 400, "revealed shares for the wrong sites")

    # remote-0 answers honestly; then a lying server asks it again, listing remote-2 as dropped
    sent.clear()
    agents[0].run_once()
    assert [m["kind"] for m in sent] == ["unmask_reply"]
    request = task["task"]["request"]
    agents[0].client.forged = {
        **task,
        "task": {
            **task["task"],
            "request": {
                **request,
                "survivors": [s for s in request["survivors"] if s != ids["remote-2"]],
            },
        },
    }
    agents[0].secure.step({"round": rid}, "remote-0")
    agents[0].client.forged = None
    assert [m["kind"] for m in sent] == ["unmask_reply"]  # nothing more revealed
    assert f"lists ['{ids['remote-2']}'] differently is refused" in caplog.text

    experiment = drive(agents, experiment.pk)
    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    round2 = Round.objects.get(pk=rid)
    assert sorted(round2.metrics["accepted"]) == ["remote-0", "remote-1", "remote-2"]
    assert round2.metrics["secure"]["dropped"] == []


def test_an_agent_in_a_secure_dp_round_reports_its_spend_with_its_figures_only(
    live_server, agent_sites, agent_csv, charlie, client_for, eager_celery, tmp_path
):
    """Record-level DP with secure aggregation: each agent reports its accountant's spend with
    trained/ (figures, never the update), the server records and checks it as for update/,
    and a report without it is refused."""
    from aggregation.models import Participant
    from aggregation.services.consent import record_acceptance
    from fedhealth.agent.ledger import AgentLedger, fingerprint

    agents, bodies = [], []
    for i, (site, token) in enumerate(agent_sites):
        client = ApiClient(live_server.url, token, retries=1, backoff=0.01)
        real_post = client.post_json

        def spy(path, body=None, _real=real_post):
            bodies.append((path, json.loads(json.dumps(body))))
            return _real(path, body)

        client.post_json = spy
        agents.append(
            SiteAgent(
                client,
                LocalData.from_source(agent_csv(site.slug, rows=300, seed=70 + i)),
                ledger=AgentLedger(tmp_path / site.slug / "ledger"),
                state_dir=tmp_path / site.slug,
            )
        )
    api = client_for(charlie)
    created = api.post(
        "/api/v1/experiments/",
        {
            "name": "secure dp",
            "datasets": [a.register() for a in agents],
            "num_rounds": 1,
            "local_epochs": 1,
            "min_sites": 2,
            "secure_aggregation": True,
        },
    )
    assert created.status_code == 201, created.json()
    experiment_id = created.json()["id"]
    Experiment.objects.filter(pk=experiment_id).update(dp_mode="record", dp_epsilon=8.0)
    for participant in Participant.objects.filter(experiment_id=experiment_id):
        record_acceptance(participant)
    assert api.post(f"/api/v1/experiments/{experiment_id}/start/").status_code == 200
    rid = Round.objects.get(experiment_id=experiment_id, number=1).pk
    without = requests.post(
        f"{live_server.url}/api/v1/agent/rounds/{rid}/trained/",
        json={"num_samples": 10},
        headers={"Authorization": f"Bearer {agent_sites[0][1]}"},
        timeout=30,
    )
    assert without.status_code == 400, without.text
    assert "record-level DP" in without.text and "privacy" in without.text
    experiment = drive(agents, experiment_id)

    assert experiment.status == Experiment.Status.COMPLETED, experiment.failure_reason
    from aggregation.models import PrivacyLedgerEntry

    for agent in agents:
        update = ClientUpdate.objects.get(round__experiment=experiment, site__slug=agent.site)
        assert update.status == "received" and not update.weights_file
        entry = PrivacyLedgerEntry.objects.get(experiment=experiment, update=update)
        assert entry.source == "agent"
        assert entry.consistency == "consistent", entry.consistency_detail
        assert entry.spend() == agent.ledger.spends(fingerprint(agent.data.X, agent.data.y))[0]
    trained = [b for p, b in bodies if p.endswith("/trained/")]
    assert len(trained) == 2
    for body in trained:  # figures only
        assert set(body) == {"num_samples", "loss", "metrics", "privacy"}
        assert set(body["privacy"]) >= {"epsilon", "epsilon_total", "noise_multiplier", "steps"}
        assert len(json.dumps(body)) < 2000

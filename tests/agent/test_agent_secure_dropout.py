"""Real agent processes in secure rounds (gunicorn, a Celery worker with beat on Redis, agents
as their own processes behind the recording proxy), cut off and SIGKILLed mid-protocol.

A round mixes a hosted site (its worker's steps on its queue) and three agents. An agent
killed after sharing its keys, before its masked input, is recovered: the round
completes and equals FedAvg of the survivors. Restarted with its state folder, it takes part
in the next round, where another agent is killed after its masked input, before unmasking:
the survivors reveal its self-mask share and the round equals FedAvg of all four. Below the
threshold a round fails closed: no new version, the reason recorded and shown. A phase's
deadline is moved to "now" once the survivors have posted, rather than waited for; the
sweeper and the round's own deadline check then close it as they would at the deadline.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from aggregation.models import Experiment, ModelVersion, Round, SecureRound, SecureSite
from aggregation.reasons import Reason
from aggregation.services import artifacts
from clients.models import Dataset
from fedhealth.files import read_bytes
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update
from fedhealth.ml.weights_io import weights_from_bytes
from tests.support import manage
from tests.support import wait_until as _wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.timeout(600),
]


@pytest.fixture
def three(stack, start_agent, agent_csv, make_site):
    """Three agent sites, each a real agent process with its CSV and state folder."""
    from clients.models import ApiToken

    out = []
    for i in range(3):
        site = make_site(f"remote-{i}", mode="agent")
        token = ApiToken.issue(site=site, name="agent")[1]
        path = agent_csv(site.slug, rows=240, seed=70 + i)
        out.append(
            {
                "site": site,
                "token": token,
                "csv": path,
                "process": start_agent(token, path, site.slug),
            }
        )
    wait_until(
        lambda: Dataset.objects.filter(site__mode="agent").count() == 3,
        timeout=120,
        what="agent registrations",
        watch=[stack.web, *(a["process"] for a in out)],
    )
    return out


def wait_until(predicate, **kwargs):
    """tests.support.wait_until, printing the rounds' protocol state when it gives up."""
    try:
        _wait_until(predicate, **kwargs)
    except BaseException:
        for r in Round.objects.order_by("pk"):
            secure = SecureRound.objects.filter(round=r).first()
            print(
                "STATE round",
                r.number,
                r.status,
                r.failure_code,
                r.failure_reason,
                r.metrics,
                secure
                and (secure.phase, list(secure.sites.values("site__slug", "last_phase", "status"))),
            )
        for p in kwargs.get("watch", []):
            for name in sorted(p.log_dir.glob(f"{p.name}-*.log")):
                lines = [
                    x
                    for x in name.read_text().splitlines()
                    if "WARNING" in x or "ERROR" in x or "Error" in x
                ]
                print("LOG", name.name, *lines[-30:], sep="\n")
        raise


@pytest.fixture
def hosted(make_site, make_dataset):
    """A hosted site's dataset, made before the worker starts (it picks its queues then)."""
    return make_dataset(make_site("hosted-0"), rows=240, seed=69)


def _start(stack, make_experiment, agents, *, hosted=(), **kwargs) -> Experiment:
    datasets = [*hosted, *(Dataset.objects.get(site=a["site"]) for a in agents)]
    experiment = make_experiment(datasets, secure_aggregation=True, round_timeout=120, **kwargs)
    manage(stack.env, "experiment", "start", str(experiment.pk))
    return experiment


def _cut(agent, step):
    """The proxy's predicate: this agent's POST of ``step`` (answered 503, never forwarded)."""
    auth = f"Bearer {agent['token']}"
    return lambda r: (
        r.method == "POST"
        and r.path.endswith(f"/secure/{step}/")
        and r.headers.get("Authorization") == auth
    )


def _posted(stack, agent, round_id, step):
    auth = f"Bearer {agent['token']}"
    return any(
        r.path.endswith(f"/rounds/{round_id}/secure/{step}/")
        and r.headers.get("Authorization") == auth
        for r in stack.proxy.requests
    )


def _kept(agent, round_id):
    """The update an agent keeps in its own state folder (beside its CSV) for the round."""
    path = agent["csv"].parent / ".fedhealth-agent" / "secagg" / f"r{round_id}-update.safetensors"
    return weights_from_bytes(path.read_bytes())


def _kept_hosted(experiment, number):
    """A hosted site's kept update, in its private storage, while the round's protocol runs."""
    name = f"datasets/hosted-0/secagg/e{experiment.pk}-r{number}-update.safetensors"
    return weights_from_bytes(read_bytes(name))


def _secure(experiment, number):
    return SecureRound.objects.filter(round__experiment=experiment, round__number=number).first()


def _watch(stack, agents):
    return [
        stack.web,
        stack.worker,
        *(a["process"] for a in agents if a["process"].proc.poll() is None),
    ]


def _kill_when_cut(stack, agents, victim, round_id, step):
    """Wait until the victim tried to post ``step`` of the round (refused by the proxy), then
    SIGKILL it."""
    wait_until(
        lambda: _posted(stack, victim, round_id, step),
        timeout=120,
        what=f"the victim's {step} post",
        watch=_watch(stack, agents),
    )
    victim["process"].kill()


def _expire(stack, agents, experiment, number, phase, slugs):
    """Once every survivor's message of ``phase`` counted, the phase's deadline passes (moved
    to now rather than waited for): the sweeper's next call closes it, the victim dropped."""

    def ready():
        secure = _secure(experiment, number)
        return secure.phase == phase and secure.sites.filter(
            site__slug__in=slugs, last_phase=phase
        ).count() == len(slugs)

    wait_until(
        ready, timeout=120, what=f"the survivors' {phase} messages", watch=_watch(stack, agents)
    )
    SecureRound.objects.filter(pk=_secure(experiment, number).pk, phase=phase).update(
        phase_deadline=timezone.now() - timedelta(seconds=1)
    )


def _samples(round_, slug):
    return round_.updates.get(site__slug=slug).num_samples


def _assert_fedavg(experiment, number, updates):
    round_ = Round.objects.get(experiment=experiment, number=number)
    version = ModelVersion.objects.get(experiment=experiment, version=number)
    got = artifacts.load_weights(version.weights_file, version.sha256)
    previous, _ = artifacts.global_weights_for(round_)
    plain = FedAvg().aggregate(previous, updates).weights
    bound = round_.metrics["secure"]["error_bound"]
    for name in plain:
        tol = bound + np.finfo(np.float32).eps * float(np.abs(plain[name]).max() + 1)
        assert np.abs(got[name].astype(np.float64) - plain[name].astype(np.float64)).max() <= tol


def test_agents_killed_mid_protocol_are_recovered_and_a_restarted_agent_takes_part_again(
    hosted, stack, three, make_experiment
):
    a, b, c = three
    # Round 1: a is cut off at its masked input (it has shared its keys), then killed. (Set
    # before the start: the agents may run the whole round before `experiment start` exits.)
    stack.proxy.refuse = _cut(a, "masked")
    # a hosted site takes part too: threshold 3 (a majority of 4)
    experiment = _start(stack, make_experiment, three, hosted=[hosted], num_rounds=2, min_sites=2)
    wait_until(
        lambda: _secure(experiment, 1) is not None,
        timeout=120,
        what="round 1's protocol",
        watch=_watch(stack, three),
    )
    rid1 = _secure(experiment, 1).round_id
    # ... and b will be cut off at its unmasking in round 2 (set now, before it can get there)
    cut_a, cut_b, here = _cut(a, "masked"), _cut(b, "unmask"), f"/rounds/{rid1}/"
    stack.proxy.refuse = lambda r: (
        (cut_a(r) and here in r.path) or (cut_b(r) and here not in r.path)
    )
    kept1 = {x["site"].slug: _kept(x, rid1) for x in (b, c)}  # read from the survivors' own folders
    kept1["hosted-0"] = _kept_hosted(experiment, 1)
    _kill_when_cut(stack, three, a, rid1, "masked")
    _expire(stack, three, experiment, 1, "masked", ["hosted-0", "remote-1", "remote-2"])
    wait_until(
        lambda: Round.objects.get(pk=rid1).status == Round.Status.COMPLETED,
        timeout=180,
        what="round 1 after the masked phase's deadline",
        watch=_watch(stack, three),
    )
    round1 = Round.objects.get(pk=rid1)
    assert sorted(round1.metrics["accepted"]) == ["hosted-0", "remote-1", "remote-2"]
    assert round1.metrics["secure"]["dropped"] == ["remote-0"]
    place = SecureSite.objects.get(secure_round__round=round1, site=a["site"])
    assert (place.status, place.dropped_in, place.last_phase) == ("dropped", "masked", "share")
    _assert_fedavg(experiment, 1, [Update(w, _samples(round1, s), s) for s, w in kept1.items()])

    # a restarts with its state folder; round 2: b is cut off at unmasking (its masked input
    # is in the sum), then killed: the hosted site, a and c reveal its self-mask share.
    a["process"].start()
    wait_until(
        lambda: _secure(experiment, 2) is not None,
        timeout=180,
        what="round 2's protocol",
        watch=_watch(stack, three),
    )
    rid2 = _secure(experiment, 2).round_id
    kept2 = {x["site"].slug: _kept(x, rid2) for x in three} | {
        "hosted-0": _kept_hosted(experiment, 2)
    }
    _kill_when_cut(stack, three, b, rid2, "unmask")
    _expire(stack, three, experiment, 2, "unmask", ["hosted-0", "remote-0", "remote-2"])
    wait_until(
        lambda: Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.COMPLETED,
        timeout=180,
        what="round 2 after the unmask phase's deadline",
        watch=_watch(stack, three),
    )
    round2 = Round.objects.get(pk=rid2)
    assert sorted(round2.metrics["accepted"]) == ["hosted-0", "remote-0", "remote-1", "remote-2"]
    assert round2.metrics["secure"]["dropped"] == []
    place = SecureSite.objects.get(secure_round__round=round2, site=b["site"])
    # b signed the survivor list (consistency), then was cut off before revealing its shares
    assert (place.status, place.dropped_in, place.last_phase) == (
        "dropped",
        "unmask",
        "consistency",
    )
    _assert_fedavg(experiment, 2, [Update(w, _samples(round2, s), s) for s, w in kept2.items()])

    # the restarted agent deleted round 1's secrets (it was dropped there), and the live
    # agents delete round 2's once it is over; no agent ever uploaded its weights
    folder = a["csv"].parent / ".fedhealth-agent" / "secagg"
    wait_until(
        lambda: not any(folder.iterdir()),
        timeout=60,
        what="a's secrets deleted",
        watch=_watch(stack, three),
    )
    assert not any(r.path.endswith("/update/") for r in stack.proxy.requests)


def test_below_the_threshold_a_secure_round_fails_closed_and_says_why(
    stack, three, make_experiment, charlie
):
    a = three[0]
    stack.proxy.refuse = _cut(a, "masked")
    experiment = _start(
        stack, make_experiment, three, num_rounds=2, min_sites=2, secagg_threshold=3
    )
    wait_until(
        lambda: _secure(experiment, 1) is not None,
        timeout=120,
        what="round 1's protocol",
        watch=_watch(stack, three),
    )
    _kill_when_cut(stack, three, a, _secure(experiment, 1).round_id, "masked")
    _expire(stack, three, experiment, 1, "masked", ["remote-1", "remote-2"])
    wait_until(
        lambda: Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.FAILED,
        timeout=180,
        what="the round failing closed",
        watch=_watch(stack, three),
    )

    round1 = Round.objects.get(experiment=experiment, number=1)
    assert round1.status == Round.Status.FAILED and round1.failure_code == Reason.SECAGG_THRESHOLD
    assert round1.secure.phase == SecureRound.Phase.FAILED
    assert not ModelVersion.objects.filter(
        experiment=experiment
    ).exists()  # the initial model stays
    assert "below its threshold" in Experiment.objects.get(pk=experiment.pk).failure_reason
    # shown: the experiment page names the reason
    from django.test import Client

    page = Client()
    page.force_login(charlie)
    html = page.get(f"/experiments/{experiment.pk}/").content.decode()
    assert "below its threshold" in html

"""The restartable site step that hosted workers and agents call, against the server session."""

import json

import numpy as np
import pytest

from fedhealth.ml.secagg import AggregationSession, ProtocolViolation, RoundContext, wire
from fedhealth.ml.secagg.sitestep import site_step
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update

CTX = RoundContext("exp-9", 1)


def setup(n=4):
    rng = np.random.default_rng(2)
    ref = {"w": rng.normal(size=(8, 6)).astype(np.float32)}
    ups = [
        Update(
            {"w": (ref["w"] + rng.normal(scale=0.2, size=(8, 6))).astype(np.float32)},
            50 + 7 * i,
            f"s{i}",
        )
        for i in range(n)
    ]
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=256
    )
    return ref, ups, server


def saved(state):
    return json.loads(json.dumps(state))  # what site-private storage gives back


def run_round(ref, ups, server, *, on_masked=None, before_unmask=None):
    states = {u.site: None for u in ups}

    def step(u, task, **kw):
        states[u.site], msg = site_step(states[u.site], saved(task), site=u.site, **kw)
        states[u.site] = saved(states[u.site])
        return wire.decode(msg)

    for u in ups:
        server.receive_advertise(
            u.site, step(u, {"phase": "advertise", "ctx": wire.encode_ctx(CTX)})
        )
    roster = {"phase": "share", "roster": wire.encode(server.close_advertise())}
    for u in ups:
        server.receive_shares(u.site, step(u, roster))
    inbox = server.close_shares()
    for u in ups:
        task = {
            "phase": "masked",
            "ctx": wire.encode_ctx(CTX),
            "inbox": {k: wire.b64(v) for k, v in inbox[u.site].items()},
        }
        server.receive_masked(
            u.site, step(u, task, weights=u.weights, num_samples=u.num_samples, reference=ref)
        )
        if on_masked:
            on_masked(u, states, task)
    told = {"phase": "consistency", "request": wire.encode(server.close_masked())}
    for u in ups:
        server.receive_signature(u.site, step(u, told))
    request = {"phase": "unmask", "request": wire.encode(server.close_consistency())}
    if before_unmask:
        before_unmask({k: saved(v) for k, v in states.items()}, request)
    for u in ups:
        server.receive_unmask(u.site, step(u, request))
    return server.finish(), states


def test_a_round_of_site_steps_equals_fedavg():
    ref, ups, server = setup()
    result, _ = run_round(ref, ups, server)
    plain = FedAvg().aggregate(ref, ups)
    np.testing.assert_allclose(
        result.weights["w"], plain.weights["w"], rtol=0, atol=result.error_bound + 1e-6
    )


def test_a_restarted_site_resends_the_same_masked_vector_never_a_new_one():
    ref, ups, server = setup()
    resent = []

    def on_masked(u, states, task):
        # the worker is killed after posting and the task runs again, with a retrained update
        other = {"w": u.weights["w"] + 1.0}
        again_state, again = site_step(
            states[u.site], task, site=u.site, weights=other, num_samples=9, reference=ref
        )
        resent.append(again)
        assert again == states[u.site]["outbox"]["masked"]
        with pytest.raises(
            ProtocolViolation, match="already sent its masked input this round \\(replay\\)"
        ):
            server.receive_masked(u.site, wire.decode(again))

    result, _ = run_round(ref, ups, server, on_masked=on_masked)
    assert len(resent) == 4
    plain = FedAvg().aggregate(ref, ups)  # counted once, with the first update
    np.testing.assert_allclose(
        result.weights["w"], plain.weights["w"], rtol=0, atol=result.error_bound + 1e-6
    )


def test_steps_out_of_order_are_refused():
    ref, ups, _ = setup()
    with pytest.raises(ProtocolViolation, match="the share phase before advertising keys"):
        site_step(None, {"phase": "share", "roster": {}}, site="s0")
    with pytest.raises(ProtocolViolation, match="field 'phase': expected one of"):
        site_step(None, {"phase": "train"}, site="s0")
    state, _ = site_step(None, {"phase": "advertise", "ctx": wire.encode_ctx(CTX)}, site="s0")
    request = {
        "phase": "unmask",
        "request": {
            "kind": "unmask_request",
            "ctx": wire.encode_ctx(CTX),
            "survivors": ["s0"],
            "signatures": {},
        },
    }
    with pytest.raises(ProtocolViolation, match="unmasking is not allowed at stage 'advertised'"):
        site_step(state, request, site="s0")


def test_a_site_answers_one_unmask_request_and_refuses_a_different_second_one():
    """Bonawitz's consistency rule: a server that lists s3 as a survivor to get its seed
    share, then as dropped to get its mask-key share, is refused the second time."""
    ref, ups, server = setup()
    signed: dict = {}

    def before_unmask(states, request):
        signed.update(states=states, request=request)  # every site has signed the full list

    run_round(ref, ups, server, before_unmask=before_unmask)
    full = signed["request"]
    assert full["request"]["survivors"] == ["s0", "s1", "s2", "s3"]
    # s3 listed as dropped in the first request: not the list s0 signed, refused
    first_lie = {"phase": "unmask", "request": {**full["request"], "survivors": ["s0", "s1", "s2"]}}
    with pytest.raises(ProtocolViolation, match="but this site signed") as err:
        site_step(signed["states"]["s0"], first_lie, site="s0")
    assert err.value.code == "secagg_inconsistent"
    state, reply = site_step(signed["states"]["s0"], full, site="s0")
    assert set(wire.decode(reply).seed_shares) == {"s0", "s1", "s2", "s3"}
    assert wire.decode(reply).key_shares == {}
    # the same request again (a restart): the saved reply, byte for byte
    assert site_step(saved(state), full, site="s0")[1] == reply
    # s3 now listed as dropped: answering would reveal its mask-key share too
    lying = {"phase": "unmask", "request": {**full["request"], "survivors": ["s0", "s1", "s2"]}}
    with pytest.raises(ProtocolViolation, match=r"lists \['s3'\] differently is refused") as err:
        site_step(saved(state), lying, site="s0")
    assert err.value.code == "secagg_inconsistent"

"""Secure-aggregation messages and session state as JSON: strict decoding, resuming mid-round."""

import contextlib
import json

import numpy as np
import pytest

from fedhealth.ml.secagg import AggregationSession, ProtocolViolation, RoundContext, wire
from fedhealth.ml.secagg.client import SiteSession
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update

CTX = RoundContext("exp-3", 5)


def setup(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ref = {"w": rng.normal(size=(12, 5)).astype(np.float32), "b": np.zeros(12, np.float32)}
    ups = [
        Update(
            {
                k: (v + rng.normal(scale=0.2, size=v.shape)).astype(np.float32)
                for k, v in ref.items()
            },
            int(rng.integers(10, 300)),
            f"site-{i}",
        )
        for i in range(n)
    ]
    return ref, ups


def through_json(msg):
    """What the API or the database would carry."""
    return wire.decode(json.loads(json.dumps(wire.encode(msg))))


def test_a_whole_round_through_json_with_restarts_equals_fedavg():
    ref, ups = setup()
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=512
    )
    states = {u.site: SiteSession(CTX, u.site).export_state() for u in ups}

    def site(s):  # every step runs in a "fresh process": state restored from JSON
        return SiteSession.restore(json.loads(json.dumps(states[s])))

    def restart_server():
        return AggregationSession.restore(json.loads(json.dumps(server.export_state())), ref)

    for u in ups:
        c = site(u.site)
        server.receive_advertise(u.site, through_json(c.advertise()))
        states[u.site] = c.export_state()
    server = restart_server()
    roster = through_json(server.close_advertise())
    for u in ups:
        c = site(u.site)
        server.receive_shares(u.site, through_json(c.share_keys(roster)))
        states[u.site] = c.export_state()
    server = restart_server()
    inbox = server.close_shares()
    for u in ups[:3]:  # site-3 drops after sharing
        c = site(u.site)
        server.receive_masked(
            u.site, through_json(c.masked_input(inbox[u.site], u.weights, u.num_samples, ref))
        )
        states[u.site] = c.export_state()
    server = restart_server()
    told = through_json(server.close_masked())
    for u in ups[:3]:
        c = site(u.site)
        server.receive_signature(u.site, through_json(c.sign(told)))
        states[u.site] = c.export_state()
        server = restart_server()
    request = through_json(server.close_consistency())
    for u in ups[:3]:
        c = site(u.site)
        server.receive_unmask(u.site, through_json(c.unmask(request)))
        states[u.site] = c.export_state()
        server = restart_server()
    result = server.finish()

    plain = FedAvg().aggregate(ref, ups[:3])
    assert result.dropped == ("site-3",)
    for k in ref:
        np.testing.assert_allclose(
            result.weights[k], plain.weights[k], rtol=0, atol=result.error_bound + 1e-6
        )


def test_a_restored_site_still_refuses_a_step_it_already_took():
    ref, ups = setup()
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=512
    )
    sites = {u.site: SiteSession(CTX, u.site) for u in ups}
    for s, c in sites.items():
        server.receive_advertise(s, c.advertise())
    restored = SiteSession.restore(sites["site-0"].export_state())
    with pytest.raises(
        ProtocolViolation, match="advertising keys is not allowed at stage 'advertised'"
    ):
        restored.advertise()


def test_a_restored_server_still_refuses_a_replay():
    ref, ups = setup()
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=512
    )
    advert = SiteSession(CTX, "site-0").advertise()
    server.receive_advertise("site-0", advert)
    again = AggregationSession.restore(server.export_state(), ref)
    with pytest.raises(ProtocolViolation, match="already advertised keys this round \\(replay\\)"):
        again.receive_advertise("site-0", advert)


def test_the_servers_state_holds_no_site_secret():
    ref, ups = setup()
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=512
    )
    sites = {u.site: SiteSession(CTX, u.site) for u in ups}
    for s, c in sites.items():
        server.receive_advertise(s, c.advertise())
    roster = server.close_advertise()
    for s, c in sites.items():
        server.receive_shares(s, c.share_keys(roster))
    text = json.dumps(server.export_state())
    for c in sites.values():
        state = c.export_state()
        for secret in ("enc", "mask", "seed"):
            assert state[secret] not in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "nope"}, "field 'kind': expected one of"),
        (
            {"kind": "masked", "ctx": {"session": "e", "round": 1}, "site": "a"},
            "field 'masked': missing \\['vector'\\]",
        ),
        (
            {
                "kind": "masked",
                "ctx": {"session": "e", "round": 1},
                "site": "a",
                "vector": "@@",
                "x": 1,
            },
            "unexpected \\['x'\\]",
        ),
        (
            {"kind": "masked", "ctx": {"session": "e", "round": 1}, "site": "a", "vector": "@@"},
            "field 'vector': expected base64 text, got '@@'",
        ),
        (
            {"kind": "masked", "ctx": {"session": "e", "round": "1"}, "site": "a", "vector": ""},
            "field 'ctx.round': expected an integer, got '1'",
        ),
        (
            {"kind": "masked", "ctx": {"session": "e", "round": -1}, "site": "a", "vector": ""},
            "round must be >= 0, got -1",
        ),
        (
            {
                "kind": "unmask_reply",
                "ctx": {"session": "e", "round": 1},
                "site": "a",
                "seed_shares": [],
                "key_shares": {},
            },
            "field 'seed_shares': expected an object",
        ),
        (
            {
                "kind": "advertise",
                "ctx": {"session": "e", "round": 1},
                "site": "",
                "enc_key": "",
                "mask_key": "",
                "seed_commit": "",
                "sign_key": "",
            },
            "field 'site': expected a non-empty string",
        ),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(data, message):
    with pytest.raises(ProtocolViolation, match=message) as info:
        wire.decode(data)
    assert info.value.code in {"secagg_malformed"}


def _blobs(value):
    """Every base64 field of an encoded message, decoded."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _blobs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _blobs(v)
    elif isinstance(value, str) and len(value) >= 8:
        with contextlib.suppress(ProtocolViolation):  # ids and other text
            yield wire.unb64(value, "x")


def test_nothing_the_server_receives_or_stores_decodes_to_one_sites_update():
    rng = np.random.default_rng(5)
    ref = {"w": rng.normal(size=(40, 50)).astype(np.float32)}
    ups = [
        Update(
            {"w": (ref["w"] + rng.normal(scale=0.3, size=(40, 50))).astype(np.float32)},
            100 + i,
            f"s{i}",
        )
        for i in range(4)
    ]
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=512
    )
    sites = {u.site: SiteSession(CTX, u.site) for u in ups}
    seen = []  # every request body the server gets, and its stored state after each stage

    def post(kind, site, msg):
        seen.append(wire.encode(msg))
        getattr(server, f"receive_{kind}")(site, msg)

    for s, c in sites.items():
        post("advertise", s, c.advertise())
    roster = server.close_advertise()
    for s, c in sites.items():
        post("shares", s, c.share_keys(roster))
    inbox = server.close_shares()
    seen.append(server.export_state())
    for u in ups:
        post(
            "masked",
            u.site,
            sites[u.site].masked_input(inbox[u.site], u.weights, u.num_samples, ref),
        )
    seen.append(server.export_state())
    told = server.close_masked()
    for s, c in sites.items():
        post("signature", s, c.sign(told))
    request = server.close_consistency()
    for s, c in sites.items():
        post("unmask", s, c.unmask(request))
    seen.append(server.export_state())
    result = server.finish()
    seen.append(server.export_state())

    from fedhealth.ml.secagg.masking import quantise

    targets = []
    for u in ups:
        q, _ = quantise(u.weights, ref, u.num_samples, server.spec)
        delta = (u.weights["w"] - ref["w"]).reshape(-1).astype(np.float64)
        targets += [
            q[:-1].view(np.int32).astype(np.float64),
            delta,
            u.weights["w"].reshape(-1).astype(np.float64),
        ]
    long_blobs = 0
    for blob in (b for item in seen for b in _blobs(item)):
        for u in ups:
            assert u.weights["w"].tobytes()[:64] not in blob
        if len(blob) >= 4 * 2000 and len(set(blob)) > 1:  # (an all-zero sum carries nothing)
            long_blobs += 1
            for view in (
                np.frombuffer(blob[: 4 * 2000], "<i4").astype(np.float64),
                np.frombuffer(blob[: 4 * 2000], "<u4").astype(np.float64),
            ):
                for t in targets:
                    c = np.corrcoef(view, t)[0, 1]
                    assert abs(c) < 0.15, c  # ~7 sigma for 2,000 values; any scaled copy gives 1
    assert long_blobs >= 4 + 2  # the four masked vectors and the stored running sums were checked
    # while the aggregate does decode: it is the FedAvg of the four
    plain = FedAvg().aggregate(ref, ups)
    np.testing.assert_allclose(
        result.weights["w"], plain.weights["w"], rtol=0, atol=result.error_bound + 1e-6
    )

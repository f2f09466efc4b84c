"""Secure aggregation end to end, and the attacks it must refuse.

The result must equal plain FedAvg within the stated quantisation bound
(``QuantSpec.error_bound``: m / (2 * scale * N) per coordinate, plus float32 rounding).
"""

from dataclasses import replace

import numpy as np
import pytest

from fedhealth.ml.secagg import (
    AggregationSession,
    BelowThreshold,
    ProtocolViolation,
    RoundContext,
    secure_round,
)
from fedhealth.ml.secagg.client import SiteSession
from fedhealth.ml.secagg.errors import SecAggError
from fedhealth.ml.secagg.keys import encrypt_share
from fedhealth.ml.secagg.masking import dequantise, quantise
from fedhealth.ml.secagg.messages import SharePackage
from fedhealth.ml.strategies import FedAvg
from fedhealth.ml.types import Update

CTX = RoundContext("exp-7", 2)


def model(rng, scale=1.0):
    return {
        "layer.weight": (rng.normal(size=(30, 20)) * scale).astype(np.float32),
        "layer.bias": (rng.normal(size=30) * scale).astype(np.float32),
    }


def make_updates(n, seed=0):
    rng = np.random.default_rng(seed)
    ref = model(rng)
    ups = [
        Update(
            {
                k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32)
                for k, v in ref.items()
            },
            int(rng.integers(20, 900)),
            f"site-{i}",
        )
        for i in range(n)
    ]
    return ref, ups


def assert_fedavg(result, ref, ups):
    plain = FedAvg().aggregate(ref, ups)
    assert result.total_weight == plain.num_samples
    for k in ref:
        atol = result.error_bound + 2 * np.finfo(np.float32).eps * float(
            np.abs(plain.weights[k]).max()
        )
        np.testing.assert_allclose(result.weights[k], plain.weights[k], rtol=0, atol=atol)
    # the bound is tight enough to matter: far below the updates' spread
    assert result.error_bound < 1e-4


def test_secure_round_equals_fedavg_within_the_quantisation_bound():
    ref, ups = make_updates(6)
    result = secure_round(CTX, ups, ref, threshold=4, max_weight=1024)
    assert result.survivors == tuple(sorted(u.site for u in ups)) and result.dropped == ()
    assert_fedavg(result, ref, ups)


def test_sites_that_drop_after_sharing_are_recovered_as_fedavg_of_the_survivors():
    ref, ups = make_updates(7, seed=3)
    result = secure_round(
        CTX, ups, ref, threshold=4, drop_after_sharing={"site-1", "site-5"}, max_weight=1024
    )
    assert result.dropped == ("site-1", "site-5")
    assert_fedavg(result, ref, [u for u in ups if u.site not in {"site-1", "site-5"}])


def test_secagg_plus_sparse_graph_with_a_dropout():
    ref, ups = make_updates(12, seed=4)
    result = secure_round(
        CTX, ups, ref, threshold=3, degree=4, drop_after_sharing={"site-3"}, max_weight=1024
    )
    assert_fedavg(result, ref, [u for u in ups if u.site != "site-3"])


def test_below_threshold_fails_closed():
    ref, ups = make_updates(5)
    with pytest.raises(
        BelowThreshold,
        match="only 2 sites sent masked inputs, fewer than the threshold 3: the round fails closed",
    ):
        secure_round(CTX, ups, ref, threshold=3, drop_after_sharing={"site-0", "site-1", "site-2"})


def test_threshold_must_be_a_majority_of_the_shareholders():
    ref, ups = make_updates(2)
    with pytest.raises(ValueError, match="between 3 and 5 for 5 sites, got 2"):
        AggregationSession(CTX, sites=[f"s{i}" for i in range(5)], reference=ref, threshold=2)
    with pytest.raises(
        ValueError, match="between 2 and 3 for 10 sites with neighbour degree 2, got 4"
    ):
        AggregationSession(
            CTX, sites=[f"s{i}" for i in range(10)], reference=ref, threshold=4, degree=2
        )


class Run:
    """A round driven step by step, to tamper with it in between."""

    def __init__(self, n=4, threshold=3, seed=0):
        self.ref, self.ups = make_updates(n, seed)
        self.server = AggregationSession(
            CTX,
            sites=[u.site for u in self.ups],
            reference=self.ref,
            threshold=threshold,
            max_weight=1024,
        )
        self.sites = {u.site: SiteSession(CTX, u.site) for u in self.ups}
        self.by_site = {u.site: u for u in self.ups}

    def advertise(self):
        for s, c in self.sites.items():
            self.server.receive_advertise(s, c.advertise())
        self.roster = self.server.close_advertise()

    def share(self):
        self.advertise()
        for s, c in self.sites.items():
            self.server.receive_shares(s, c.share_keys(self.roster))
        self.inbox = self.server.close_shares()

    def masked(self, site):
        u = self.by_site[site]
        return self.sites[site].masked_input(self.inbox[site], u.weights, u.num_samples, self.ref)

    def mask_all(self):
        self.share()
        self.vectors = {}
        for s in self.sites:
            self.vectors[s] = self.masked(s)
            self.server.receive_masked(s, self.vectors[s])
        self.told = self.server.close_masked()

    def sign_all(self):
        """The consistency check: every survivor signs; ``request`` carries the signatures."""
        if not hasattr(self, "told"):
            self.mask_all()
        self.signatures = {}
        for s in self.told.survivors:
            self.signatures[s] = self.sites[s].sign(self.told)
            self.server.receive_signature(s, self.signatures[s])
        self.request = self.server.close_consistency()


def test_a_replayed_masked_vector_is_refused():
    run = Run()
    run.share()
    msg = run.masked("site-0")
    run.server.receive_masked("site-0", msg)
    with pytest.raises(
        ProtocolViolation,
        match="site 'site-0' already sent its masked input this round \\(replay\\)",
    ):
        run.server.receive_masked("site-0", msg)


def test_a_masked_vector_from_another_round_is_refused():
    run = Run()
    run.share()
    msg = run.masked("site-0")
    with pytest.raises(ProtocolViolation, match="round 1, this is 'exp-7' round 2"):
        run.server.receive_masked("site-0", replace(msg, ctx=RoundContext("exp-7", 1)))


@pytest.mark.parametrize(
    "cut", [lambda v: v[:-4], lambda v: v[:-1], lambda v: v + b"\0\0\0\0", lambda v: b""]
)
def test_a_truncated_or_wrong_length_masked_vector_is_refused(cut):
    run = Run()
    run.share()
    msg = run.masked("site-1")
    with pytest.raises(
        ProtocolViolation,
        match=f"site 'site-1' sent a masked vector of {len(cut(msg.vector))} bytes, expected {4 * 631}",
    ):
        run.server.receive_masked("site-1", replace(msg, vector=cut(msg.vector)))


def test_a_site_posting_for_another_site_is_refused_at_every_stage():
    run = Run()
    advert = run.sites["site-0"].advertise()
    with pytest.raises(ProtocolViolation, match="site 'site-1' posted a message for site 'site-0'"):
        run.server.receive_advertise("site-1", advert)
    run.server.receive_advertise("site-0", advert)
    for s in ("site-1", "site-2", "site-3"):
        run.server.receive_advertise(s, run.sites[s].advertise())
    run.roster = run.server.close_advertise()
    pkg = run.sites["site-0"].share_keys(run.roster)
    with pytest.raises(ProtocolViolation, match="site 'site-2' posted a message for site 'site-0'"):
        run.server.receive_shares("site-2", pkg)


def test_a_share_for_the_wrong_recipient_or_round_is_refused_by_the_site():
    run = Run()
    run.share()
    # the server hands site-1 the ciphertext site-0 made for site-2
    wrong = dict(run.inbox["site-1"], **{"site-0": run.inbox["site-2"]["site-0"]})
    u = run.by_site["site-1"]
    with pytest.raises(
        ProtocolViolation, match="share from site 'site-0' to 'site-1' does not authenticate"
    ):
        run.sites["site-1"].masked_input(wrong, u.weights, u.num_samples, run.ref)
    # a share from the same pair in another round (another session object, same ids)
    ctx3 = RoundContext("exp-7", 3)
    a, b = SiteSession(ctx3, "site-0"), run.sites["site-1"]
    old = encrypt_share(ctx3, a._enc, b._enc.public_key(), "site-0", "site-1", b"x" * 136)
    with pytest.raises(
        ProtocolViolation, match="does not authenticate for session 'exp-7' round 2"
    ):
        run.sites["site-1"].masked_input(
            dict(run.inbox["site-1"], **{"site-0": old}), u.weights, u.num_samples, run.ref
        )


def test_a_site_refuses_steps_out_of_order_and_a_second_unmask():
    run = Run()
    with pytest.raises(ProtocolViolation, match="sharing keys is not allowed at stage 'new'"):
        run.sites["site-0"].share_keys(None)
    run.mask_all()
    with pytest.raises(ProtocolViolation, match="unmasking is not allowed at stage 'masked'"):
        run.sites["site-0"].unmask(run.told)  # before signing the survivor list
    run.sign_all()
    run.sites["site-0"].unmask(run.request)
    with pytest.raises(ProtocolViolation, match="unmasking is not allowed at stage 'done'"):
        run.sites["site-0"].unmask(run.request)


def test_a_site_never_reveals_its_own_seed_while_listed_as_dropped():
    run = Run()
    run.mask_all()
    request = replace(run.told, survivors=("site-1", "site-2", "site-3"))
    with pytest.raises(
        ProtocolViolation,
        match="site 'site-0': sent its masked input but is not listed as a survivor",
    ):
        run.sites["site-0"].sign(request)


def test_the_server_refuses_revealed_shares_that_are_not_the_senders_own_or_mixed():
    run = Run()
    run.sign_all()
    reply = run.sites["site-0"].unmask(run.request)
    forged = replace(reply, site="site-1")
    with pytest.raises(ProtocolViolation, match="revealed a share that is not its own"):
        run.server.receive_unmask("site-1", forged)
    with pytest.raises(ProtocolViolation, match="shares for the wrong sites"):
        run.server.receive_unmask("site-0", replace(reply, key_shares=dict(reply.seed_shares)))
    run.server.receive_unmask("site-0", reply)
    with pytest.raises(ProtocolViolation, match="already answered"):
        run.server.receive_unmask("site-0", reply)


def test_an_altered_share_makes_the_round_fail_closed_not_wrong():
    run = Run()
    run.sign_all()
    replies = {s: run.sites[s].unmask(run.request) for s in run.sites}
    bad = dict(replies["site-2"].seed_shares)
    blob = bytearray(bad["site-0"])
    blob[-1] ^= 1
    bad["site-0"] = bytes(blob)
    replies["site-2"] = replace(replies["site-2"], seed_shares=bad)
    for s, r in replies.items():
        run.server.receive_unmask(s, r)
    with pytest.raises(
        ProtocolViolation,
        match="self-mask seed of 'site-0' does not match its commitment|do not combine",
    ):
        run.server.finish()


def test_the_unmasking_runs_exactly_once():
    run = Run()
    run.sign_all()
    for s in run.sites:
        run.server.receive_unmask(s, run.sites[s].unmask(run.request))
    run.server.finish()
    with pytest.raises(ProtocolViolation, match="cannot unmask during the done phase"):
        run.server.finish()


def test_a_site_checks_its_update_before_masking():
    run = Run()
    run.share()
    u = run.by_site["site-0"]
    bad = dict(u.weights, **{"layer.bias": np.full(30, np.nan, np.float32)})
    with pytest.raises(SecAggError, match="site 'site-0': the update is not valid") as info:
        run.sites["site-0"].masked_input(run.inbox["site-0"], bad, u.num_samples, run.ref)
    assert info.value.code == "secagg_bad_update"


def _corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_no_single_masked_vector_decodes_to_its_sites_update_while_the_sum_does():
    run = Run(n=5, threshold=3, seed=9)
    run.mask_all()
    spec = run.server.spec
    for s, msg in run.vectors.items():
        u = run.by_site[s]
        clear, _ = quantise(u.weights, run.ref, u.num_samples, spec)
        masked = np.frombuffer(msg.vector, dtype="<u4")
        # read as the server would read a sum: signed fixed point; no scale relates it to the update
        for view in (masked.view(np.int32).astype(np.float64), masked.astype(np.float64)):
            assert (
                abs(_corr(view[:-1], clear[:-1].view(np.int32).astype(np.float64))) < 0.25
            )  # 6 sigma for 630 values; a scaled copy gives 1
        assert masked[-1] != u.num_samples
        with pytest.raises(ValueError):  # decoding one vector alone: its weight is garbage
            w, n = dequantise(masked.copy(), run.ref, spec)
            if n != u.num_samples:
                raise ValueError("not this site's weight")
    for s in run.told.survivors:
        run.server.receive_signature(s, run.sites[s].sign(run.told))
    run.request = run.server.close_consistency()
    for s in run.sites:
        run.server.receive_unmask(s, run.sites[s].unmask(run.request))
    assert_fedavg(run.server.finish(), run.ref, run.ups)


def test_phases_close_at_their_deadline_with_the_late_sites_counted_as_dropped():
    ref, ups = make_updates(5, seed=11)
    server = AggregationSession(
        CTX, sites=[u.site for u in ups], reference=ref, threshold=3, max_weight=1024
    )
    sites = {u.site: SiteSession(CTX, u.site) for u in ups}
    assert server.pending() == sorted(sites)
    for s in ("site-0", "site-1", "site-2", "site-3"):  # site-4 misses the advertise deadline
        server.receive_advertise(s, sites[s].advertise())
    assert server.pending() == ["site-4"]
    roster = server.close_phase()
    for s in ("site-0", "site-1", "site-2", "site-3"):
        server.receive_shares(s, sites[s].share_keys(roster))
    assert server.pending() == []
    inbox = server.close_phase()
    for u in ups[:3]:  # site-3 shared keys, then misses the masked-input deadline
        server.receive_masked(
            u.site, sites[u.site].masked_input(inbox[u.site], u.weights, u.num_samples, ref)
        )
    assert server.pending() == ["site-3"]
    told = server.close_phase()
    for s in told.survivors:
        server.receive_signature(s, sites[s].sign(told))
    request = server.close_phase()
    for s in request.survivors:
        server.receive_unmask(s, sites[s].unmask(request))
    result = server.close_phase()
    assert result.dropped == ("site-3",)
    assert_fedavg(result, ref, ups[:3])
    # a late site's message after the round is refused, never counted
    with pytest.raises(
        ProtocolViolation, match="site 'site-4' sent a share message during the done phase"
    ):
        server.receive_shares("site-4", SharePackage(CTX, "site-4", {}))

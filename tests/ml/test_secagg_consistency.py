"""Bonawitz's ConsistencyCheck round against a lying server: two survivor lists, forged,
missing or replayed signatures. A site that is refused reveals no share."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedhealth.ml.secagg import ProtocolViolation, consistency
from fedhealth.ml.secagg.client import Stage
from fedhealth.ml.secagg.keys import RoundContext
from fedhealth.ml.secagg.messages import UnmaskRequest
from tests.ml.test_secagg_protocol import CTX, Run, assert_fedavg


def _inconsistent(site, request, *words):
    with pytest.raises(ProtocolViolation) as info:
        site.unmask(request)
    assert info.value.code == "secagg_inconsistent"
    for w in words:
        assert w in info.value.message, info.value.message
    assert site.stage is Stage.SIGNED and site._held  # nothing revealed, nothing spent


def test_an_honest_round_signs_one_list_and_equals_fedavg():
    run = Run(n=5, threshold=3, seed=3)
    run.sign_all()
    assert sorted(run.request.signatures) == sorted(run.sites)
    for s in run.sites:
        run.server.receive_unmask(s, run.sites[s].unmask(run.request))
    assert_fedavg(run.server.finish(), run.ref, run.ups)


def test_a_server_telling_two_groups_different_survivor_lists_is_refused_by_both():
    # 4 sites, t = 3. The server tells site-0 and site-1 that everyone survived (so they
    # would reveal site-3's self-mask seed share) and site-2 and site-3 that site-1 dropped
    # (so they would reveal site-1's mask-key share): with both, site-1's update is unmasked.
    run = Run(n=4, threshold=3)
    run.mask_all()
    everyone = run.told
    without_1 = replace(run.told, survivors=("site-0", "site-2", "site-3"))
    sigs = {s: run.sites[s].sign(everyone).signature for s in ("site-0", "site-1")}
    sigs |= {s: run.sites[s].sign(without_1).signature for s in ("site-2", "site-3")}
    # Each group gets its own two signatures (fewer than t) ...
    _inconsistent(
        run.sites["site-0"],
        replace(everyone, signatures={s: sigs[s] for s in ("site-0", "site-1")}),
        "only 2 sites signed",
    )
    _inconsistent(
        run.sites["site-2"],
        replace(without_1, signatures={s: sigs[s] for s in ("site-2", "site-3")}),
        "only 2 sites signed",
    )
    # ... or all four: the other group's signatures are over another list and do not verify.
    _inconsistent(
        run.sites["site-1"], replace(everyone, signatures=sigs), "'site-2', 'site-3'", "do not verify"
    )
    _inconsistent(
        run.sites["site-3"], replace(without_1, signatures=sigs), "'site-0', 'site-1'"
    )


def test_the_unmask_request_must_list_the_survivors_the_site_signed():
    run = Run()
    run.sign_all()
    other = replace(run.request, survivors=("site-0", "site-1", "site-2"))
    _inconsistent(run.sites["site-0"], other, "but this site signed")


def test_a_forged_a_missing_or_a_misattributed_signature_is_refused():
    run = Run(n=4, threshold=3)
    run.sign_all()
    site = run.sites["site-0"]
    sigs = dict(run.request.signatures)
    flipped = bytearray(sigs["site-1"])
    flipped[0] ^= 1
    _inconsistent(site, replace(run.request, signatures={**sigs, "site-1": bytes(flipped)}), "site-1")
    _inconsistent(site, replace(run.request, signatures={**sigs, "site-1": sigs["site-2"]}), "site-1")
    # a signature made with a key the roster does not list for that site
    outsider = consistency.sign_survivors(
        consistency.new_signing_key(), CTX, "site-1", run.request.survivors
    )
    _inconsistent(site, replace(run.request, signatures={**sigs, "site-1": outsider}), "site-1")
    # a signature from another round over the same list
    other_round = consistency.sign_survivors(
        run.sites["site-1"]._sign, RoundContext(CTX.session, CTX.round + 1), "site-1",
        run.request.survivors,
    )
    _inconsistent(site, replace(run.request, signatures={**sigs, "site-1": other_round}), "site-1")
    # a signer that is not on the list
    _inconsistent(site, replace(run.request, signatures={**sigs, "ghost": sigs["site-1"]}), "ghost")
    # too few: two of four with t = 3
    two = {k: sigs[k] for k in ("site-0", "site-1")}
    _inconsistent(site, replace(run.request, signatures=two), "only 2 sites signed")
    _inconsistent(site, UnmaskRequest(CTX, run.request.survivors), "only 0 sites signed")
    # the honest request still works afterwards: the refusals spent nothing
    reply = site.unmask(run.request)
    assert reply.seed_shares


def test_the_server_refuses_a_signature_that_does_not_verify_and_a_second_one():
    run = Run()
    run.mask_all()
    good = run.sites["site-0"].sign(run.told)
    with pytest.raises(ProtocolViolation, match="signature does not verify"):
        run.server.receive_signature("site-0", replace(good, signature=bytes(64)))
    with pytest.raises(ProtocolViolation, match="posted a message for site 'site-0'"):
        run.server.receive_signature("site-1", good)
    run.server.receive_signature("site-0", good)
    with pytest.raises(ProtocolViolation, match="already signed"):
        run.server.receive_signature("site-0", good)
    with pytest.raises(ProtocolViolation, match="signing the survivor list is not allowed"):
        run.sites["site-0"].sign(run.told)  # a site signs once


def test_signers_below_the_threshold_fail_the_round_closed():
    from fedhealth.ml.secagg import BelowThreshold

    run = Run(n=4, threshold=3)
    run.mask_all()
    for s in ("site-0", "site-1"):
        run.server.receive_signature(s, run.sites[s].sign(run.told))
    assert run.server.pending() == ["site-2", "site-3"]
    with pytest.raises(BelowThreshold, match="only 2 sites signed the survivor list"):
        run.server.close_phase()

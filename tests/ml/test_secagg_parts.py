"""Secure aggregation's parts: Shamir sharing, share encryption, quantisation, masks, graph."""

import numpy as np
import pytest

from fedhealth.ml.secagg import shamir
from fedhealth.ml.secagg.errors import ProtocolViolation
from fedhealth.ml.secagg.graph import neighbours
from fedhealth.ml.secagg.keys import (
    RoundContext,
    decrypt_share,
    encrypt_share,
    mask_seed,
    new_private_key,
)
from fedhealth.ml.secagg.masking import QuantSpec, dequantise, expand, quantise


def test_shamir_any_t_shares_recover_the_secret_and_fewer_do_not():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for subset in ([0, 1, 2], [4, 2, 0], [1, 3, 4], [0, 1, 2, 3, 4]):
        assert shamir.combine([shares[i] for i in subset], 32) == secret
    with pytest.raises(ValueError):  # two shares of a degree-2 polynomial: some other value
        assert shamir.combine(shares[:2], 32) != secret


def test_shamir_encoding_round_trips_and_refuses_bad_bytes():
    share = shamir.split(b"\xff" * 32, 2, [7, 9])[0]
    assert shamir.Share.decode(share.encode()) == share
    with pytest.raises(ValueError, match="68 bytes"):
        shamir.Share.decode(share.encode()[:-1])
    with pytest.raises(ValueError, match="out of range"):
        shamir.Share.decode(b"\x00\x00" + bytes(66))


@pytest.mark.parametrize(("threshold", "xs"), [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1])])
def test_shamir_refuses_bad_parameters(threshold, xs):
    with pytest.raises(ValueError):
        shamir.split(b"s" * 32, threshold, xs)


def test_a_share_opens_only_for_its_round_sender_and_recipient():
    ctx = RoundContext("exp-1", 3)
    a, b, c = new_private_key(), new_private_key(), new_private_key()
    blob = encrypt_share(ctx, a, b.public_key(), "A", "B", b"share")
    assert decrypt_share(ctx, b, a.public_key(), "A", "B", blob) == b"share"
    with pytest.raises(ProtocolViolation, match="round 4"):
        decrypt_share(RoundContext("exp-1", 4), b, a.public_key(), "A", "B", blob)
    with pytest.raises(ProtocolViolation, match="does not authenticate"):
        decrypt_share(ctx, c, a.public_key(), "A", "C", blob)
    with pytest.raises(ProtocolViolation):  # relabelled: the AAD no longer matches
        decrypt_share(ctx, b, a.public_key(), "C", "B", blob)
    with pytest.raises(ProtocolViolation):
        decrypt_share(ctx, b, a.public_key(), "A", "B", blob[:-1] + bytes([blob[-1] ^ 1]))


def test_pairwise_seeds_agree_at_both_ends_and_differ_per_round():
    a, b = new_private_key(), new_private_key()
    ctx = RoundContext("e", 1)
    assert mask_seed(ctx, a, "A", b.public_key(), "B") == mask_seed(
        ctx, b, "B", a.public_key(), "A"
    )
    assert mask_seed(ctx, a, "A", b.public_key(), "B") != mask_seed(
        RoundContext("e", 2), a, "A", b.public_key(), "B"
    )


def test_masks_are_chacha20_keystreams_full_width():
    m = expand(b"k" * 32, 100_000)
    assert m.dtype == np.uint32 and m.shape == (100_000,)
    assert np.array_equal(m, expand(b"k" * 32, 100_000))
    assert not np.array_equal(m, expand(b"j" * 32, 100_000))
    # all 32 bits are used (a 31-bit generator would never set the top bit)
    assert 0.48 < np.mean(m >= 1 << 31) < 0.52
    assert np.array_equal(expand(b"k" * 32, 10), m[:10])


def test_quantise_then_dequantise_is_within_the_stated_bound():
    rng = np.random.default_rng(1)
    ref = {"w": rng.normal(size=(40, 30)).astype(np.float32), "b": np.zeros(30, np.float32)}
    spec = QuantSpec(clip=4.0, max_weight=1000, n_sites=3)
    ups = [
        (
            {
                k: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32)
                for k, v in ref.items()
            },
            n,
        )
        for n in (5, 700, 1000)
    ]
    total = np.zeros(40 * 30 + 30 + 1, np.uint32)
    for w, n in ups:
        q, clipped = quantise(w, ref, n, spec)
        assert clipped == 0
        np.add(total, q, out=total)
    mean, weight = dequantise(total, ref, spec)
    assert weight == 1705
    bound = spec.error_bound(3, 1705)
    for k in ref:
        fedavg = sum(w[k].astype(np.float64) * n for w, n in ups) / 1705
        np.testing.assert_allclose(mean[k], fedavg, rtol=0, atol=bound + 1e-6)
    assert bound < 1e-6


def test_quantise_clips_and_refuses_weights_out_of_range():
    ref = {"w": np.zeros(3, np.float32)}
    spec = QuantSpec(clip=1.0, max_weight=10, n_sites=2)
    q, clipped = quantise({"w": np.array([5.0, -5.0, 0.5], np.float32)}, ref, 1, spec)
    assert clipped == 2
    mean, _ = dequantise(q, ref, spec)
    np.testing.assert_allclose(mean["w"], [1.0, -1.0, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="num_samples must be in 1..10, got 11"):
        quantise({"w": ref["w"]}, ref, 11, spec)


def test_quant_spec_refuses_parameters_that_could_overflow():
    with pytest.raises(ValueError, match="less than one integer step"):
        QuantSpec(clip=1e6, max_weight=1 << 20, n_sites=100)
    with pytest.raises(ValueError, match="clip"):
        QuantSpec(clip=float("nan"), max_weight=10, n_sites=2)


def test_sparse_graph_is_symmetric_with_the_asked_degree():
    sites = [f"s{i:02d}" for i in range(20)]
    g = neighbours(sites, 6, b"r")
    assert all(len(n) == 6 and s not in n for s, n in g.items())
    assert all(s in g[t] for s, n in g.items() for t in n)
    assert neighbours(sites, 6, b"r") == g and neighbours(sites, 6, b"other") != g
    assert neighbours(sites, None, b"r")["s00"] == frozenset(sites) - {"s00"}
    with pytest.raises(ValueError, match="even"):
        neighbours(sites, 5, b"r")

"""`manage.py simulate --secure-aggregation`: the same protocol in one process, with dropouts."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

SMALL = ("--generate", "4", "--rows", "300", "--rounds", "3", "--no-baselines")


def simulate(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    call_command("simulate", *SMALL, *args, "--json", str(out), verbosity=0)
    return json.loads(out.read_text())


def test_secure_simulation_matches_the_plain_one(tmp_path):
    plain = simulate(tmp_path, "--strategy", "fedadam")
    secure = simulate(tmp_path, "--strategy", "fedadam", "--secure-aggregation")

    assert secure["config"]["secure_aggregation"] == {
        "threshold": None,
        "dropout": 0.0,
        "degree": None,
        "clip": 8.0,
    }
    for p, s in zip(plain["history"], secure["history"], strict=True):
        assert s["accepted"] == ["site-1", "site-2", "site-3", "site-4"] and s["refused"] is None
        assert s["loss"] == pytest.approx(p["loss"], abs=1e-4)
    assert secure["federated"]["mean"]["auroc"] == pytest.approx(
        plain["federated"]["mean"]["auroc"], abs=1e-3
    )


def test_dropped_sites_are_named_and_the_round_uses_the_survivors(tmp_path):
    result = simulate(
        tmp_path,
        "--secure-aggregation",
        "--secagg-dropout",
        "0.25",
        "--secagg-threshold",
        "3",
        "--seed",
        "3",
    )

    dropped = [{r["site"] for r in h["rejected"]} for h in result["history"]]
    assert any(dropped), "with p=0.25 over 12 site-rounds some site drops (seeded)"
    for h, gone in zip(result["history"], dropped, strict=True):
        if h["refused"] is None:
            assert set(h["accepted"]) == {"site-1", "site-2", "site-3", "site-4"} - gone
            assert all("its masks were removed" in r["reason"] for r in h["rejected"])


def test_a_round_below_the_threshold_fails_closed_and_keeps_the_model(tmp_path):
    # threshold 4 of 4: any dropout leaves too few sites to unmask
    result = simulate(
        tmp_path,
        "--secure-aggregation",
        "--secagg-threshold",
        "4",
        "--secagg-dropout",
        "0.5",
        "--seed",
        "1",
    )

    history = result["history"]
    refused = [i for i, h in enumerate(history) if h["refused"]]
    assert refused, "seeded: some round loses a site"
    for i in refused:
        assert "fewer than the threshold 4: the round fails closed" in history[i]["refused"]
        assert history[i]["accepted"] == []
        if i > 0:  # the previous global model stays: same evaluation
            assert history[i]["loss"] == history[i - 1]["loss"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--secure-aggregation", "--strategy", "trimmed_mean"),
            "strategy 'trimmed_mean' needs each site's update",
        ),
        (
            ("--secure-aggregation", "--strategy", "krum"),
            "strategy 'krum' needs each site's update",
        ),
        (
            ("--secure-aggregation", "--secagg-threshold", "2"),
            "threshold must be between 3 and 4 for 4 sites, got 2",
        ),
        (("--secure-aggregation", "--secagg-dropout", "1"), "dropout must be in [0, 1), got 1.0"),
        (
            ("--secure-aggregation", "--secagg-degree", "1", "--secagg-threshold", "2"),
            "even and >= 2, got 1",
        ),
        (("--secagg-dropout", "0.1"), "--secagg-dropout needs --secure-aggregation"),
    ],
)
def test_bad_secure_aggregation_options_are_refused_with_a_reason(tmp_path, args, message):
    with pytest.raises(CommandError) as info:
        simulate(tmp_path, *args)
    assert message in str(info.value)


def test_secagg_plus_neighbours_with_the_default_threshold(tmp_path):
    result = simulate(tmp_path, "--secure-aggregation", "--secagg-degree", "2", "--generate", "6")

    assert result["config"]["secure_aggregation"]["degree"] == 2
    assert all(len(h["accepted"]) == 6 for h in result["history"])

"""`simulate --dp record` and `--dp-sweep`: the JSON's privacy section, the curve, and
bad settings refused with the option and value named."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

SMALL = ("--generate", "3", "--rows", "400", "--rounds", "3", "--no-baselines")


def simulate(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    call_command("simulate", *SMALL, *args, "--json", str(out), verbosity=0)
    return json.loads(out.read_text())


def test_record_level_dp_reports_each_sites_guarantee(tmp_path):
    result = simulate(tmp_path, "--dp", "record", "--epsilon", "2", "--clip", "0.8")

    assert set(result["privacy"]) == {"site-1", "site-2", "site-3"}
    for figures in result["privacy"].values():
        assert 0.9 * 2 <= figures["epsilon"] <= 2  # the whole experiment spends the target
        assert figures["delta"] == pytest.approx(1 / (10 * 300))  # 300 training rows per site
        assert figures["noise_multiplier"] > 0 and figures["clip_norm"] == 0.8
    assert result["config"]["privacy"] == {"epsilon": 2.0, "delta": None, "clip_norm": 0.8, "rounds": 3}
    assert result["federated"]["mean"]["auroc"] > 0.6  # 300 rows, 3 rounds: it still learns


def test_the_sweep_writes_the_privacy_utility_curve(tmp_path):
    result = simulate(tmp_path, "--dp-sweep", "1,8")

    curve = result["dp_sweep"]
    assert [row["epsilon"] for row in curve] == [None, 1.0, 8.0]
    assert curve[0]["noise_multiplier"] == 0.0
    assert curve[1]["noise_multiplier"] > curve[2]["noise_multiplier"] > 0
    assert curve[1]["spent"] <= 1.0 and curve[2]["spent"] <= 8.0
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["auroc"] <= 1 for row in curve)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dp", "record", "--epsilon", "0"), "--dp record: epsilon must be > 0, got 0.0"),
        (("--dp", "record", "--epsilon", "-2"), "--dp record: epsilon must be > 0, got -2.0"),
        (("--dp", "record", "--clip", "0"), "--dp record: clip_norm must be > 0, got 0.0"),
        (
            ("--dp", "record", "--delta", "0.01"),
            "--dp record: site site-1: delta must be below 1/rows = 0.00333 for a site of 300 rows, got 0.01",
        ),
        (("--epsilon", "2"), "--epsilon needs --dp record or --dp site"),
        (("--dp-sweep", "1,x"), "--dp-sweep must be comma-separated numbers, not '1,x'"),
    ],
)
def test_bad_settings_are_refused_naming_the_option_and_value(tmp_path, args, message):
    with pytest.raises(CommandError) as caught:
        simulate(tmp_path, *args)
    assert str(caught.value) == message

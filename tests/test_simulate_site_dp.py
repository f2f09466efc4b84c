"""`simulate --dp site`: DP-FedAvg's guarantee for each site in the JSON, and bad settings
refused with the option and value named."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from fedhealth.ml.privacy import site_epsilon

SMALL = ("--generate", "4", "--rows", "400", "--rounds", "3", "--no-baselines")


def simulate(tmp_path, *args: str, small=SMALL) -> dict:
    out = tmp_path / "result.json"
    call_command("simulate", *small, *args, "--json", str(out), verbosity=0)
    return json.loads(out.read_text())


def test_site_level_dp_reports_each_sites_guarantee(tmp_path):
    result = simulate(tmp_path, "--dp", "site", "--epsilon", "20", "--clip", "0.5")

    assert set(result["privacy"]) == {"site-1", "site-2", "site-3", "site-4"}
    for figures in result["privacy"].values():
        assert figures["level"] == "site"
        assert 0.9 * 20 <= figures["epsilon"] <= 20
        assert figures["delta"] == 1e-5 and figures["clip_norm"] == 0.5
        assert figures["sample_rate"] == 1.0 and figures["denominator"] == 4
        # The figure is Opacus's RDP accountant's for 3 rounds of this noise at q = 1.
        assert figures["epsilon"] == pytest.approx(site_epsilon(figures["noise_multiplier"], 1.0, 3, 1e-5))
    assert result["config"]["site_privacy"]["sites"] == 4
    assert result["config"]["privacy"] is None


def test_site_level_dp_is_reproducible_and_noisier_at_a_smaller_epsilon(tmp_path):
    a = simulate(tmp_path, "--dp", "site", "--epsilon", "50")
    b = simulate(tmp_path, "--dp", "site", "--epsilon", "50")
    small = simulate(tmp_path, "--dp", "site", "--epsilon", "5")
    assert a["history"] == b["history"]
    assert small["privacy"]["site-1"]["noise_multiplier"] > a["privacy"]["site-1"]["noise_multiplier"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dp", "site", "--epsilon", "0"), "--dp site: epsilon must be > 0, got 0.0"),
        (("--dp", "site", "--clip", "-1"), "--dp site: clip_norm must be > 0, got -1.0"),
        (("--dp", "site", "--delta", "0.5"),
         "--dp site: delta must be above 0 and below 1/sites = 0.25 for 4 sites, got 0.5"),
        (("--dp", "site", "--delta", "0"),
         "--dp site: delta must be above 0 and below 1/sites = 0.25 for 4 sites, got 0.0"),
    ],
)
def test_bad_settings_are_refused_naming_the_option_and_value(tmp_path, args, message):
    with pytest.raises(CommandError) as caught:
        simulate(tmp_path, *args)
    assert str(caught.value) == message


def test_too_few_sites_are_refused(tmp_path):
    with pytest.raises(CommandError, match=r"--dp site: site-level DP needs at least 3 sites, got 2"):
        simulate(tmp_path, "--dp", "site", small=("--generate", "2", "--rows", "200", "--rounds", "2", "--no-baselines"))


def test_site_level_dp_through_secure_aggregation_adds_the_noise_at_the_sites(tmp_path):
    secure = simulate(tmp_path, "--dp", "site", "--epsilon", "1000", "--secure-aggregation")
    plain = simulate(tmp_path, "--dp", "site", "--epsilon", "1000")

    assert secure["privacy"] == plain["privacy"]  # the same accounting, whoever adds the noise
    assert all(sorted(h["accepted"]) == ["site-1", "site-2", "site-3", "site-4"] for h in secure["history"])
    assert secure["config"]["secure_aggregation"] is not None
    # Different noise draws (shares at the sites vs one at the server), same model quality.
    assert secure["federated"]["mean"]["auroc"] == pytest.approx(plain["federated"]["mean"]["auroc"], abs=0.05)

"""`manage.py simulate` with sites as hospitals have them (issue 10): a referral centre
whose patients all have the condition, and a clinic of 20 rows."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

from django.core.management import call_command

from fedhealth.ml.synthetic import generate_site


def test_a_single_label_site_and_a_20_row_site_simulate_end_to_end(tmp_path):
    pool = generate_site(300, seed=3, healthy_fraction=0.2)
    frames = {
        "general": generate_site(300, seed=1),
        "clinic": generate_site(20, seed=4, healthy_fraction=0.5),
        "referral": pool[pool.healthy == 0].head(40),  # all unhealthy: the positive class
    }
    args = []
    for name, frame in frames.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        args += ["--site", f"{name}={tmp_path / f'{name}.csv'}"]
    out = tmp_path / "result.json"
    printed = io.StringIO()

    with redirect_stdout(printed):
        call_command("simulate", *args, "--rounds", "2", "--local-epochs", "1", "--json", str(out), stdout=printed)

    text = out.read_text()
    result = json.loads(text)  # strict JSON: no NaN anywhere
    assert "NaN" not in text
    federated = result["federated"]
    referral = federated["per_site"]["referral"]
    assert referral["auroc"] is None and referral["balanced_accuracy"] is None and referral["specificity"] is None
    assert 0.0 <= referral["sensitivity"] <= 1.0  # unhealthy patients flagged: defined there
    assert federated["defined"]["auroc"] == 2 and federated["defined"]["accuracy"] == 3
    others = [federated["per_site"][s]["auroc"] for s in ("general", "clinic")]
    assert math.isclose(federated["mean"]["auroc"], sum(others) / 2)
    assert result["config"]["train"]["positive"] == 0  # the default vitals detect healthy = 0
    assert "auroc: mean over 2 of 3 sites" in printed.getvalue()
    assert "nan" not in printed.getvalue().lower()

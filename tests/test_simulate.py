"""`manage.py simulate` and `manage.py generate_sample`, end to end in-process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from sklearn.datasets import load_breast_cancer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
METRICS = {"accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "brier", "log_loss"}


def simulate(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    call_command("simulate", *args, "--json", str(out), verbosity=0)
    return json.loads(out.read_text())


def breast_cancer_sites(tmp_path, parts) -> tuple[list[str], list[str]]:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "benign"})
    specs = []
    for i, rows in enumerate(parts):
        path = tmp_path / f"hospital-{i}.csv"
        frame.iloc[rows].to_csv(path, index=False)
        specs += ["--site", f"hospital-{i}={path}"]
    return specs, list(data.feature_names)


def test_iid_federated_matches_centralized_within_one_point(tmp_path):
    result = simulate(tmp_path, "--generate", "4")

    fed = result["federated"]["mean"]["accuracy"]
    central = result["centralized"]["mean"]["accuracy"]
    assert abs(central - fed) <= 0.01, (fed, central)
    assert len(result["history"]) == result["config"]["rounds"] == 20
    assert set(result["local"]) == {"site-1", "site-2", "site-3", "site-4"}
    for section in (result["federated"], result["centralized"], *result["local"].values()):
        assert set(section["per_site"]) == {"site-1", "site-2", "site-3", "site-4"}
        assert set(section["mean"]) >= METRICS


def test_breast_cancer_over_three_sites_reaches_auroc_098(tmp_path):
    rng = np.random.default_rng(0)
    parts = np.array_split(rng.permutation(569), 3)
    specs, features = breast_cancer_sites(tmp_path, parts)

    result = simulate(tmp_path, *specs, "--features", ",".join(features), "--label", "benign", "--no-baselines")

    assert result["federated"]["mean"]["auroc"] >= 0.98
    assert result["config"]["model"]["n_features"] == 30


def test_small_unequal_sites_beat_each_site_alone(tmp_path):
    # Three small hospitals of very different sizes and label balance.
    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    order = np.argsort(data.target + rng.normal(0, 0.8, len(data.target)))
    parts = [order[:80], order[80:300], order[300:]]
    specs, features = breast_cancer_sites(tmp_path, parts)

    result = simulate(tmp_path, *specs, "--features", ",".join(features), "--label", "benign", "--test-fraction", "0.3")

    fed = result["federated"]["mean"]
    for site, alone in result["local"].items():
        assert fed["accuracy"] > alone["mean"]["accuracy"], site
        assert fed["auroc"] > alone["mean"]["auroc"], site


def test_separate_test_files_and_history_shape(tmp_path):
    call_command("generate_sample", "--sites", "2", "--rows", "300", "--out", str(tmp_path / "a"), "--seed", "1", verbosity=0)
    call_command("generate_sample", "--sites", "2", "--rows", "100", "--out", str(tmp_path / "b"), "--seed", "2", verbosity=0)
    specs = []
    for i in (1, 2):
        specs += ["--site", f"s{i}={tmp_path / 'a' / f'site-{i}.csv'}:{tmp_path / 'b' / f'site-{i}.csv'}"]

    result = simulate(tmp_path, *specs, "--rounds", "3", "--hidden", "none", "--strategy", "fedadam")

    assert [h["round"] for h in result["history"]] == [1, 2, 3]
    assert all({"loss", "accuracy", "auroc"} <= set(h) for h in result["history"])
    assert result["config"]["model"]["hidden"] == []
    assert result["federated"]["per_site"]["s1"]["n"] == 100


@pytest.mark.parametrize("args, message", [
    (["--site", "a=/nonexistent.csv"], "no such file"),
    (["--site", "nonsense"], "NAME=TRAIN.csv"),
    (["--generate", "2", "--hidden", "64,x"], "--hidden"),
    (["--generate", "2", "--strategy-param", "mu=0.1"], "unknown parameter"),
    (["--generate", "2", "--rounds", "0"], "--rounds must be at least 1"),
    ([], "at least one --site"),
])
def test_bad_options_end_with_a_clear_message(tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate", *args, verbosity=0)


def test_bad_csv_reports_line_column_value(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n70,120,80,98,1\n71,abc,80,97,0\n")

    with pytest.raises(CommandError) as excinfo:
        call_command("simulate", "--site", f"bad={path}", verbosity=0)

    text = str(excinfo.value)
    assert "line 3" in text and "systolic_bp" in text and "abc" in text


def test_bad_csv_exits_non_zero_without_traceback(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.csv"
    path.write_bytes(b"heart_rate;systolic_bp;diastolic_bp;spo2;healthy\n70;120;80;98;1\n")
    proc = subprocess.run(
        [sys.executable, "manage.py", "simulate", "--site", f"x={path}"],
        capture_output=True, text=True, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test"},
    )

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "delimiter" in proc.stderr


def test_generate_sample_is_reproducible_and_non_iid_skews(tmp_path):
    for run in ("a", "b"):
        call_command("generate_sample", "--sites", "3", "--rows", "500", "--out", str(tmp_path / run), "--seed", "5", "--non-iid", verbosity=0)
    frames = [pd.read_csv(tmp_path / "a" / f"site-{i}.csv") for i in (1, 2, 3)]

    for i in (1, 2, 3):
        assert (tmp_path / "a" / f"site-{i}.csv").read_bytes() == (tmp_path / "b" / f"site-{i}.csv").read_bytes()
    balances = [f["healthy"].mean() for f in frames]
    assert max(balances) - min(balances) > 0.1
    assert all(len(f) == 500 for f in frames)
    assert frames[0]["heart_rate"].between(50, 120).all() and frames[0]["spo2"].between(90, 100).all()

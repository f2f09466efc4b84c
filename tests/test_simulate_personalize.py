"""`simulate --validation-fraction --early-stopping --personalize --save-model`, in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from fedhealth.ml import load_model


def simulate(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    call_command("simulate", *args, "--json", str(out), verbosity=0)
    return json.loads(out.read_text())


def test_selection_personalisation_and_a_saved_model(tmp_path):
    model_path = tmp_path / "model.safetensors"
    result = simulate(
        tmp_path,
        "--generate",
        "3",
        "--rows",
        "150",
        "--non-iid",
        "--rounds",
        "6",
        "--validation-fraction",
        "0.2",
        "--early-stopping",
        "2",
        "--personalize",
        "--save-model",
        str(model_path),
    )
    losses = [h["validation_loss"] for h in result["history"]]
    assert all(isinstance(v, float) for v in losses)
    federated = result["federated"]
    assert federated["selected_round"] == 1 + int(np.argmin(losses))
    assert federated["rounds_run"] == len(result["history"]) <= 6
    if federated["rounds_run"] < 6:  # stopped early: two rounds without a better loss
        assert federated["rounds_run"] - federated["selected_round"] == 2
    assert result["config"]["personalize"] == "fedper"  # the measured default
    for key in ("personalized", "alone"):
        assert set(result[key]) >= {"per_site", "mean"}
        assert (
            set(result[key]["per_site"])
            == set(federated["per_site"])
            == {"site-1", "site-2", "site-3"}
        )
        assert set(result[key]["mean"]) >= {"accuracy", "balanced_accuracy", "auroc"}
    model = load_model(model_path)
    assert model.card["round"] == federated["selected_round"]
    assert model.card["validation"]["selected_round"] == federated["selected_round"]
    row = {"heart_rate": 118, "systolic_bp": 95, "diastolic_bp": 60, "spo2": 91}
    assert 0.0 <= float(model.predict_proba([row])[0]) <= 1.0


def test_a_named_mode_and_no_validation(tmp_path):
    result = simulate(
        tmp_path,
        "--generate",
        "2",
        "--rows",
        "100",
        "--rounds",
        "2",
        "--personalize",
        "finetune",
        "--no-baselines",
    )
    assert result["config"]["personalize"] == "finetune"
    assert [h["validation_loss"] for h in result["history"]] == [None, None]
    assert result["federated"]["selected_round"] == 2  # no slice: the last round
    assert set(result["personalized"]["per_site"]) == {"site-1", "site-2"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--early-stopping", "3"], "early stopping needs a validation fraction"),
        (["--validation-fraction", "1.5"], "validation fraction must be in"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate", "--generate", "2", "--rows", "100", *args, verbosity=0)

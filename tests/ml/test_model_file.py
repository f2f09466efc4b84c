"""A model file that travels: metadata in, a predictor out, and the README's three lines."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedhealth.ml import load_model
from fedhealth.ml.inference import predict
from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.model_file import describe, model_card, with_description
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.stats import Normalizer, compute_stats
from fedhealth.ml.synthetic import generate_site
from fedhealth.ml.weights_io import (
    read_metadata,
    save_weights,
    sha256_hex,
    weights_from_bytes,
    weights_to_bytes,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _model(path: Path) -> tuple:
    frame = generate_site(200, seed=1)
    X = frame[DEFAULT_SCHEMA.feature_names].to_numpy(np.float64)
    normalizer = Normalizer.from_stats(compute_stats(X))
    cfg = ModelConfig(n_features=4, hidden=(8,))
    weights = init_weights(cfg, 3)
    meta = describe(
        schema=DEFAULT_SCHEMA,
        normalizer=normalizer,
        model=cfg,
        experiment={"id": 7, "name": "ward study"},
        round_number=12,
        metrics={"accuracy": 0.9, "auroc": float("nan")},
        privacy={"epsilon": 3.0, "delta": 1e-5},
    )
    save_weights(path, weights, meta)
    return X, normalizer, cfg, weights


def test_load_model_predicts_from_the_file_alone(tmp_path):
    X, normalizer, cfg, weights = _model(tmp_path / "m.safetensors")
    model = load_model(tmp_path / "m.safetensors")
    expected, _ = predict(cfg, weights, normalizer, X[:5])
    np.testing.assert_allclose(model.predict_proba(X[:5]), expected, rtol=1e-5)
    records = [
        dict(zip(DEFAULT_SCHEMA.feature_names, row, strict=True)) | {"id": i}
        for i, row in enumerate(X[:5])
    ]
    np.testing.assert_allclose(model.predict_proba(records), expected, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(records), (expected >= 0.5).astype(np.int64))
    card = model.card
    assert card["round"] == 12 and card["experiment"] == {"id": 7, "name": "ward study"}
    assert card["metrics"] == {"accuracy": 0.9, "auroc": None}  # NaN travels as null
    assert card["privacy"] == {"epsilon": 3.0, "delta": 1e-5}
    assert [f["name"] for f in card["features"]] == DEFAULT_SCHEMA.feature_names
    assert card["label"] == DEFAULT_SCHEMA.label


def test_bad_rows_and_files_are_refused_with_a_reason(tmp_path):
    _model(tmp_path / "m.safetensors")
    model = load_model(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="record 0, spo2"):
        model.predict_proba(
            [{"heart_rate": 80, "systolic_bp": 120, "diastolic_bp": 80, "spo2": "high"}]
        )
    with pytest.raises(ValueError, match=r"expected \(n, 4\)"):
        model.predict_proba(np.zeros((2, 3)))
    bare = tmp_path / "bare.safetensors"
    save_weights(bare, init_weights(ModelConfig(n_features=4), 0))  # no description
    with pytest.raises(ValueError, match="does not describe itself"):
        load_model(bare)
    with pytest.raises(ValueError, match="checksum|SHA-256|sha256"):
        load_model(tmp_path / "m.safetensors", expected_sha256="0" * 64)


def test_with_description_keeps_the_tensors_and_adds_metadata():
    cfg = ModelConfig(n_features=4, hidden=(4,))
    weights = init_weights(cfg, 0)
    data = weights_to_bytes(weights, {"experiment": "1"})
    meta = describe(
        schema=DEFAULT_SCHEMA, normalizer=Normalizer(np.zeros(4), np.ones(4)), model=cfg
    )
    out = with_description(data, meta, expected_sha256=sha256_hex(data))
    for name, array in weights_from_bytes(out).items():
        np.testing.assert_array_equal(array, weights[name])
    assert read_metadata(out)["experiment"] == "1"
    assert model_card(read_metadata(out))["model_config"] == cfg.to_dict()


def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    """The README's python block using load_model runs against a model file where it says."""
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "load_model" in b
    ]
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) == 3
    path = re.search(r'load_model\("([^"]+)"\)', blocks[0]).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    _model(tmp_path / path)
    printed = []
    exec(blocks[0], {"print": printed.append})  # noqa: S102 - our own README's snippet
    assert len(printed) == 1 and 0.0 <= float(np.asarray(printed[0]).ravel()[0]) <= 1.0

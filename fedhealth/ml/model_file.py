"""A model file that travels: safetensors weights plus everything needed to use them.

A downloaded model version carries, in its safetensors header metadata (``str -> str``,
JSON where structured), the schema (feature order, units, ranges, label), the
normaliser (inputs must be scaled as in training), the model configuration, the
experiment and round, the metrics, and the privacy guarantee when there is one. So
``load_model(path)`` answers predictions from the file alone, and ``model_card`` says
what the model is without loading a tensor::

    from fedhealth.ml import load_model
    model = load_model("vitals-v12.safetensors")
    print(model.predict_proba([{"heart_rate": 118, "systolic_bp": 95, ...}]))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import ModelConfig
from .inference import Predictor, features_from_records
from .metrics import json_safe
from .schema import Schema
from .stats import Normalizer
from .types import Weights
from .weights_io import read_metadata, weights_from_bytes, weights_to_bytes

__all__ = ["CARD_FORMAT", "LoadedModel", "describe", "load_model", "model_card", "with_description"]

CARD_FORMAT = "fedhealth.model-card/1"
_JSON_KEYS = (
    "schema",
    "normalizer",
    "model_config",
    "experiment",
    "metrics",
    "privacy",
    "validation",
)
_PREFIX = "fedhealth."


def describe(
    *,
    schema: Schema,
    normalizer: Normalizer,
    model: ModelConfig,
    experiment: Mapping[str, Any] | None = None,
    round_number: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The header metadata of a self-describing model file (``fedhealth.*`` keys).

    ``experiment``: e.g. ``{"id": 3, "name": "...", "strategy": "fedavg"}``; ``metrics``:
    the version's figures (NaN becomes null); ``privacy``: the guarantee's figures;
    ``validation``: how the version was selected (e.g. ``{"selected": true, "loss": ...}``).
    """
    parts: dict[str, Any] = {
        "format": CARD_FORMAT,
        "schema": schema.to_dict(),
        "normalizer": normalizer.to_dict(),
        "model_config": model.to_dict(),
        "experiment": dict(experiment) if experiment is not None else None,
        "round": round_number,
        "metrics": dict(metrics) if metrics is not None else None,
        "privacy": dict(privacy) if privacy is not None else None,
        "validation": dict(validation) if validation is not None else None,
    }
    out = {}
    for key, value in parts.items():
        if value is None:
            continue
        out[_PREFIX + key] = (
            value if isinstance(value, str) else json.dumps(json_safe(value), sort_keys=True)
        )
    return out


def with_description(
    data: bytes, metadata: Mapping[str, str], expected_sha256: str | None = None
) -> bytes:
    """``data`` (safetensors bytes) with ``metadata`` merged into its header; the tensors
    are unchanged (checked against ``expected_sha256`` first when given)."""
    weights = weights_from_bytes(data, expected_sha256=expected_sha256)
    return weights_to_bytes(weights, read_metadata(data) | dict(metadata))


def model_card(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The model card (JSON-ready) from a file's header metadata.

    Raises ValueError when the file does not describe itself (no schema, normaliser
    or model configuration: written before models travelled, or by another tool).
    """
    card: dict[str, Any] = {"format": CARD_FORMAT}
    for key, raw in metadata.items():
        if not key.startswith(_PREFIX):
            continue
        name = key.removeprefix(_PREFIX)
        if name in _JSON_KEYS or name == "round":
            try:
                card[name] = json.loads(raw)
            except ValueError:
                raise ValueError(f"model file metadata {key!r} is not valid JSON") from None
        elif name not in ("format", "key_order"):
            card[name] = raw
    missing = [k for k in ("schema", "normalizer", "model_config") if k not in card]
    if missing:
        raise ValueError(
            f"the model file does not describe itself: no {', '.join(missing)} in its metadata"
        )
    schema = card["schema"]
    card["features"] = schema["features"]
    card["label"] = schema["label"]
    card["output"] = f"probability that {schema['label']} = 1"
    return card


class LoadedModel:
    """A predictor built from a model file alone.

    ``predict_proba(rows)`` takes records (mappings with the schema's feature names;
    extra keys ignored), a pandas DataFrame with those columns, or an (n, d) array in
    the schema's feature order, and returns probabilities of ``label = 1``, shape (n,).
    Records are checked against the schema (each problem named by record and field).
    """

    def __init__(self, weights: Weights, card: Mapping[str, Any]) -> None:
        self.card = dict(card)
        self.schema = Schema.from_dict(card["schema"])
        self.model_config = ModelConfig.from_dict(card["model_config"])
        self.normalizer = Normalizer.from_dict(card["normalizer"])
        self._predictor = Predictor(self.model_config, weights, self.normalizer)

    def _features(self, rows: Any) -> np.ndarray:
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
            rows = rows.to_dict("records")
        if isinstance(rows, Sequence) and rows and isinstance(rows[0], Mapping):
            X, errors = features_from_records(rows, self.schema)
            if X is None:
                raise ValueError(
                    "; ".join(f"record {e.record}, {e.field}: {e.message}" for e in errors)
                )
            return X
        X = np.asarray(rows, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.schema.features):
            raise ValueError(
                f"expected (n, {len(self.schema.features)}) features in schema order, got {X.shape}"
            )
        return X

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float32]:
        """Probabilities of ``label = 1`` for ``rows`` (see the class docstring)."""
        return self._predictor.predict(self._features(rows))[0]

    def predict(self, rows: Any, *, threshold: float = 0.5) -> npt.NDArray[np.int64]:
        """0/1 labels: ``predict_proba(rows) >= threshold``."""
        return self._predictor.predict(self._features(rows), threshold=threshold)[1]


def load_model(path: str | os.PathLike[str], expected_sha256: str | None = None) -> LoadedModel:
    """A predictor from a self-describing model file (a downloaded model version).

    Never unpickles: safetensors tensors plus JSON metadata. Raises ValueError when the
    file is not a valid weights file, fails ``expected_sha256``, or does not describe
    itself.
    """
    data = Path(path).read_bytes()
    weights = weights_from_bytes(data, expected_sha256=expected_sha256)
    return LoadedModel(weights, model_card(read_metadata(data)))

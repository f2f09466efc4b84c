"""Predictions from a stored model version (web form, CSV upload and API alike)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedhealth.ml.inference import FieldError, features_from_records, predict
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.schema import Schema
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.types import Weights

from ..models import ModelVersion
from . import artifacts

MAX_BATCH = 10_000

# Versions are immutable (a checksum names them), so their weights can be cached per
# process; a small LRU keeps memory bounded when many versions are queried.
_cache: OrderedDict[str, Weights] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 16


def _weights(version: ModelVersion) -> Weights:
    with _cache_lock:
        if version.sha256 in _cache:
            _cache.move_to_end(version.sha256)
            return _cache[version.sha256]
    weights = artifacts.load_weights(version.weights_file, version.sha256)
    with _cache_lock:
        _cache[version.sha256] = weights
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return weights


@dataclass
class PredictionResult:
    probabilities: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def predict_records(version: ModelVersion, records: Sequence[Mapping[str, Any]]) -> PredictionResult:
    """Check the records against the version's schema and predict, or return the errors."""
    if len(records) > MAX_BATCH:
        return PredictionResult(errors=[FieldError(0, "", len(records), f"at most {MAX_BATCH} records per request")])
    schema = Schema.from_dict(version.schema)
    X, errors = features_from_records(records, schema)
    if X is None:
        return PredictionResult(errors=errors)
    prob, labels = predict(
        ModelConfig.from_dict(version.model_config), _weights(version),
        Normalizer.from_dict(version.normalizer), X,
    )
    return PredictionResult(probabilities=[float(p) for p in prob], labels=[int(v) for v in labels])

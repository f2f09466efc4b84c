"""Predictions from a stored model version (web form, CSV upload and API alike)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit import services as audit
from fedhealth.ml.config import ModelConfig
from fedhealth.ml.inference import FieldError, Predictor, features_from_records
from fedhealth.ml.schema import Schema
from fedhealth.ml.stats import Normalizer

from ..models import ModelVersion, SiteComparison
from . import artifacts

MAX_BATCH = 10_000

# A version is immutable, so its built model is kept per process (a small LRU bounds the
# memory when many versions are queried). The key is the version's id and checksum, and
# the entry remembers the configuration and normaliser it was built from: two versions
# with the same weights (a round that kept the previous model) have their own entries,
# and a row that no longer matches (a database restored under a running process) is
# rebuilt, never served stale. The cache holds models only; who may use a version is
# decided before it is reached (the caller's scoped queryset).
_cache: OrderedDict[tuple[int, str], tuple[Any, Predictor]] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 16


def _predictor(version: ModelVersion, personal: SiteComparison | None = None) -> Predictor:
    # A site's personalised model: the version's architecture and normaliser with the
    # weights its site built from it (site-private storage, checked by their checksum).
    name, sha = (personal.personal_file, personal.personal_sha256) if personal else (version.weights_file, version.sha256)
    key, source = (version.pk, sha), (version.model_config, version.normalizer)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None and entry[0] == source:
            _cache.move_to_end(key)
            return entry[1]
    predictor = Predictor(
        ModelConfig.from_dict(version.model_config),
        artifacts.load_weights(name, sha),
        Normalizer.from_dict(version.normalizer),
    )
    with _cache_lock:
        _cache[key] = (source, predictor)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return predictor


@dataclass
class PredictionResult:
    probabilities: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def personal_model(viewer: Any, version: ModelVersion) -> SiteComparison | None:
    """The viewer's own site's personalised model of ``version``'s experiment, when its
    site built one (a hosted site, at the end of the experiment); None otherwise. Only
    the owning site ever gets it: another site, the coordinator or nobody get None."""
    if getattr(viewer, "site_id", None) is None:
        return None
    return (
        SiteComparison.objects.filter(
            participant__experiment_id=version.experiment_id, participant__site_id=viewer.site_id,
            status=SiteComparison.Status.DONE,
        )
        .exclude(personal_file="")
        .first()
    )


def predict_records(
    version: ModelVersion, records: Sequence[Mapping[str, Any]], *, personal: SiteComparison | None = None
) -> PredictionResult:
    """Check the records against the version's schema and predict, or return the errors.
    ``personal`` (from ``personal_model``): predict with the site's personalised model
    of the version's experiment instead of the version's global weights."""
    if len(records) > MAX_BATCH:
        return PredictionResult(errors=[FieldError(0, "", len(records), f"at most {MAX_BATCH} records per request")])
    schema = Schema.from_dict(version.schema)
    X, errors = features_from_records(records, schema)
    if X is None:
        return PredictionResult(errors=errors)
    prob, labels = _predictor(version, personal).predict(X)
    # Counts only: the inputs are patients' vitals and never enter the audit trail.
    target = f"personalised model of experiment {version.experiment_id}" if personal else f"model version {version.pk}"
    audit.record(audit.Kind.PREDICTION, target=target, details={"records": len(records)})
    return PredictionResult(probabilities=prob.tolist(), labels=labels.tolist())

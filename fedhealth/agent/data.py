"""The site's local CSV: validated by the core, summarised for registration, split
for training and evaluation exactly as a hosted worker splits its rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from fedhealth.ml.federation import SiteSplit, split_site
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.stats import compute_stats, feature_summary
from fedhealth.ml.validation import Policy, ValidationReport, validate_csv

# Local files are the site's own: allow far more than the server's upload limit.
DEFAULT_MAX_BYTES = 4 * 1024**3


class LocalDataError(ValueError):
    """The local CSV does not validate; the message is the validator's report."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.format())
        self.report = report


@dataclass(frozen=True)
class LocalData:
    """Validated rows: ``X`` float32 (n, d) in schema order, ``y`` float32 (n,) of 0/1."""

    schema: Schema
    X: np.ndarray
    y: np.ndarray
    report: ValidationReport

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        schema: Schema = DEFAULT_SCHEMA,
        policy: Policy = Policy.REJECT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> LocalData:
        """Validate a CSV (path, bytes or binary file) with the core validator."""
        result = validate_csv(source, schema, policy=policy, max_bytes=max_bytes)
        if result.data is None:
            raise LocalDataError(result.report)
        return cls(schema, result.data.X, result.data.y, result.report)

    def registration(self, name: str) -> dict[str, Any]:
        """What may leave the site about these rows: schema, counts, sufficient
        statistics (count, per-feature sum and sum of squares) and a per-feature
        summary (mean, std, min, max). The same figures a hosted upload records."""
        summary = feature_summary(
            self.schema.feature_names, [f.unit for f in self.schema.features], self.X
        )
        return {
            "name": name,
            "schema": self.schema.to_dict(),
            "row_count": int(len(self.y)),
            "positive_count": int(self.y.sum()),
            "stats": compute_stats(self.X).to_dict(),
            "summary": summary,
        }

    def split(self, site: str, *, test_fraction: float, seed: int) -> SiteSplit:
        """The experiment's stratified, seeded train/test split of these rows."""
        return split_site(site, self.X, self.y, test_fraction=test_fraction, seed=seed)

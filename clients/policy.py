"""What a viewer sees of a dataset's summary, and whether a dataset is large enough to join
an experiment: the disclosure limits of issue 9, decided here for every door (the dataset
page, the site home, the coordinator's dashboard, the API's DatasetSerializer, exports).

The owning site sees its own summary in full (it holds the rows anyway). Anyone else (the
coordinator) sees counts, the label balance, and per-feature means and standard deviations
rounded to ``DECIMALS``; never a minimum or maximum (on a small site those are one patient's
exact vitals), never the exact sufficient statistics, and nothing but the row count of a
dataset smaller than ``FEDHEALTH_MIN_DATASET_ROWS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from .models import Dataset
from .permissions import site_of

DECIMALS = 1  # means and SDs as the coordinator sees them
SHARED_FEATURE_KEYS = ("unit", "mean", "std")


def min_rows() -> int:
    return settings.FEDHEALTH_MIN_DATASET_ROWS


def min_rows_per_label() -> int:
    return settings.FEDHEALTH_MIN_ROWS_PER_LABEL


def label_counts(dataset: Dataset) -> dict[int, int]:
    """Rows per label the dataset has (a label with no rows is not one it has)."""
    counts = {1: dataset.positive_count, 0: dataset.row_count - dataset.positive_count}
    return {label: n for label, n in counts.items() if n > 0}


def join_problems(dataset: Dataset) -> list[str]:
    """Why ``dataset`` may not join an experiment under the disclosure limits (empty: it may)."""
    problems = []
    if dataset.row_count < min_rows():
        problems.append(
            f"dataset {dataset.pk} ({dataset.site.slug}/{dataset.name}) has {dataset.row_count} rows; "
            f"at least {min_rows()} are needed to join an experiment (FEDHEALTH_MIN_DATASET_ROWS)"
        )
    small = {label: n for label, n in label_counts(dataset).items() if n < min_rows_per_label()}
    if small:
        listed = ", ".join(f"{n} labelled {label}" for label, n in sorted(small.items()))
        problems.append(
            f"dataset {dataset.pk} ({dataset.site.slug}/{dataset.name}) has {listed}; each label it has "
            f"needs at least {min_rows_per_label()} rows (FEDHEALTH_MIN_ROWS_PER_LABEL)"
        )
    return problems


@dataclass(frozen=True)
class DatasetSummary:
    own: bool  # the viewer's own site: the full summary
    row_count: int
    positive_count: int | None  # None: withheld (fewer rows than the limit)
    label_balance: float | None
    features: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # schema order
    stats: dict[str, Any] | None = None  # exact sufficient statistics: the owner only
    withheld: str = ""  # why figures are missing, for the page

    def features_dict(self) -> dict[str, dict[str, Any]]:
        return dict(self.features)


def _rounded(value: Any) -> Any:
    return round(value, DECIMALS) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def dataset_summary(user, dataset: Dataset) -> DatasetSummary:
    """The one answer to "what does ``user`` see of ``dataset``'s figures?"."""
    names = [f["name"] for f in (dataset.schema or {}).get("features", [])]
    raw = dataset.summary or {}
    ordered = [(name, dict(raw[name])) for name in names if name in raw]
    own = site_of(user) is not None and site_of(user).pk == dataset.site_id
    if own:
        return DatasetSummary(True, dataset.row_count, dataset.positive_count, dataset.label_balance,
                              ordered, dataset.stats or {})
    if dataset.row_count < min_rows():
        return DatasetSummary(
            False, dataset.row_count, None, None, [], None,
            withheld=f"Figures are withheld: fewer than {min_rows()} rows.",
        )
    shared = [(name, {k: _rounded(entry.get(k)) for k in SHARED_FEATURE_KEYS}) for name, entry in ordered]
    return DatasetSummary(False, dataset.row_count, dataset.positive_count, round(dataset.label_balance, 2),
                          shared, None)


def site_totals_visible(rows: int | None) -> bool:
    """A site's pooled figures (label balance over its datasets) are shown to the
    coordinator only when computed from at least the row limit."""
    return bool(rows) and rows >= min_rows()

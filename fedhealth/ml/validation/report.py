"""Validation outcomes: the problem kinds, :class:`Problem`, :class:`ValidationReport`,
:class:`Dataset`, :class:`ValidationResult` and :class:`Policy`, and the helpers that apply a
policy to findings and build the final result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhealth.ml.validation.identifiers import looks_like_identifier

FILE_TOO_LARGE = "file_too_large"
NOT_UTF8 = "not_utf8"
EMPTY_FILE = "empty_file"
HEADER_ONLY = "header_only"
WRONG_DELIMITER = "wrong_delimiter"
DUPLICATE_HEADER = "duplicate_header"
MISSING_COLUMN = "missing_column"
MALFORMED_ROW = "malformed_row"
UNEXPECTED_COLUMN = "unexpected_column"
NON_NUMERIC = "non_numeric"
EMPTY_VALUE = "empty_value"
OUT_OF_RANGE = "out_of_range"
INVALID_LABEL = "invalid_label"
SINGLE_CLASS = "single_class"
NO_VALID_ROWS = "no_valid_rows"
OUTSIDE_EXPECTED = "outside_expected"

FILE_KINDS = frozenset(
    {
        FILE_TOO_LARGE,
        NOT_UTF8,
        EMPTY_FILE,
        HEADER_ONLY,
        WRONG_DELIMITER,
        DUPLICATE_HEADER,
        MISSING_COLUMN,
        MALFORMED_ROW,
        NO_VALID_ROWS,
    }
)
# OUT_OF_RANGE: outside a feature's hard limits (impossible, or a unit mistake).
CELL_KINDS = (NON_NUMERIC, EMPTY_VALUE, OUT_OF_RANGE, INVALID_LABEL)
# Findings that keep the rows: an extra column (dropped, not stored), a value outside the
# expected range (kept, flagged), every row with one label (the site takes part; metrics
# that need both classes are n/a for it). The last two are also counted in ``counts``.
WARNING_KINDS = frozenset({UNEXPECTED_COLUMN, OUTSIDE_EXPECTED, SINGLE_CLASS})


class Policy(StrEnum):
    """What to do with rows holding a bad cell: fail the file, or drop the rows."""

    REJECT = "reject"
    DROP_INVALID_ROWS = "drop-invalid-rows"


@dataclass(frozen=True)
class Problem:
    """One finding; ``line`` is the 1-based file line, ``value`` the cell as written."""

    kind: str
    message: str
    line: int | None = None
    column: str | None = None
    value: str | None = None


_HEADER_ONLY_PROBLEM = Problem(HEADER_ONLY, "the file has a header but no rows")


@dataclass
class ValidationReport:
    """Outcome of a validation, JSON-ready through :meth:`to_dict`.

    ``problems`` keeps the first ``max_examples`` per kind, ``counts`` the total per kind.
    """

    ok: bool
    policy: str
    rows_total: int
    rows_valid: int
    rows_dropped: int
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def columns_dropped(self) -> list[str]:
        """Columns of the file that are not in the schema: never loaded, never stored."""
        return [
            w.column for w in self.warnings if w.kind == UNEXPECTED_COLUMN and w.column is not None
        ]

    @property
    def identifier_columns(self) -> list[str]:
        """The dropped columns whose names look like patient identifiers (identifiers.py)."""
        return [name for name in self.columns_dropped if looks_like_identifier(name)]

    @property
    def file_errors(self) -> list[str]:
        """Kinds found that make the whole file unusable, whatever the policy."""
        return sorted(kind for kind in self.counts if kind in FILE_KINDS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form with stable keys."""
        return {
            "ok": self.ok,
            "policy": self.policy,
            "rows_total": self.rows_total,
            "rows_valid": self.rows_valid,
            "rows_dropped": self.rows_dropped,
            "counts": dict(self.counts),
            "file_errors": self.file_errors,
            "problems": [asdict(p) for p in self.problems],
            "warnings": [asdict(w) for w in self.warnings],
            "columns_dropped": self.columns_dropped,
            "identifier_columns": self.identifier_columns,
        }

    def format(self) -> str:
        """Human-readable multi-line summary for the CLI: counts per kind, then examples."""
        out = [
            f"{'OK' if self.ok else 'FAILED'} (policy {self.policy}): {self.rows_total} rows, "
            f"{self.rows_valid} valid, {self.rows_dropped} dropped"
        ]
        for kind, count in self.counts.items():
            examples = [p for p in (*self.problems, *self.warnings) if p.kind == kind]
            out.append(f"{kind}: {count}{' (kept)' if kind in WARNING_KINDS else ''}")
            out.extend(f"  {p.message}" for p in examples)
            if count > len(examples):
                out.append(f"  ... and {count - len(examples)} more")
        uncounted = [w for w in self.warnings if w.kind not in self.counts]
        if uncounted:
            out.append(f"warnings: {len(uncounted)}")
            out.extend(f"  {w.kind}: {w.message}" for w in uncounted)
        return "\n".join(out)


@dataclass
class Dataset:
    """``X`` float32 (n, d) in schema feature order; ``y`` float32 (n,) of 0.0/1.0."""

    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]


@dataclass
class ValidationResult:
    """The report, and the loaded rows when (and only when) ``report.ok``."""

    report: ValidationReport
    data: Dataset | None


def _failed(
    policy: Policy, problems: list[Problem], warnings: list[Problem] | None = None
) -> ValidationResult:
    counts = dict(Counter(p.kind for p in problems))
    report = ValidationReport(False, str(policy), 0, 0, 0, problems, counts, warnings or [])
    return ValidationResult(report, None)


def _finish(
    policy: Policy,
    label: str,
    total: int,
    y: npt.NDArray[np.floating[Any]],
    problems: list[Problem],
    counts: dict[str, int],
    warnings: list[Problem],
    load: Callable[[], Dataset | None],
) -> ValidationResult:
    """Apply the policy and the dataset-level checks to the labels ``y`` of the kept rows;
    ``load`` builds X/y, and is only called when the file is usable."""
    valid = len(y)
    rejected = policy is Policy.REJECT and any(kind in counts for kind in CELL_KINDS)
    # Dataset-level checks only make sense for the rows that would actually be loaded.
    if not rejected and valid == 0:
        problems.append(Problem(NO_VALID_ROWS, f"none of the {total} rows is valid"))
        counts[NO_VALID_ROWS] = 1
    elif not rejected and y.min() == y.max():
        # A referral centre where every patient has the condition is a good participant:
        # it trains like any site; only figures that need both classes are undefined there.
        msg = (
            f"all {valid} valid rows have label {int(y[0])}: the site takes part, but metrics that "
            "need both classes (AUROC, balanced accuracy, and the recall of the missing class) "
            "will be n/a for it"
        )
        warnings.append(Problem(SINGLE_CLASS, msg, column=label, value=str(int(y[0]))))
        counts[SINGLE_CLASS] = 1
    ok = not rejected and not any(kind in FILE_KINDS for kind in counts)
    dropped = total - valid if policy is Policy.DROP_INVALID_ROWS else 0
    report = ValidationReport(ok, str(policy), total, valid, dropped, problems, counts, warnings)
    return ValidationResult(report, load() if ok else None)

"""Slow-path diagnosis: classify every schema cell read as text (empty, non-numeric, out of
range, invalid label), map data rows to file lines, and turn the cell masks into counted
problems with examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedhealth.ml.schema import Feature, Schema
from fedhealth.ml.validation.reader import _bounds, _expected_flags, _pack
from fedhealth.ml.validation.report import (
    CELL_KINDS,
    EMPTY_VALUE,
    INVALID_LABEL,
    NON_NUMERIC,
    OUT_OF_RANGE,
    OUTSIDE_EXPECTED,
    Policy,
    Problem,
    ValidationResult,
    _finish,
)

_CONTENT_BYTE = np.ones(256, dtype=np.uint8)
_CONTENT_BYTE[[9, 10, 13, 32]] = 0  # a line of only these is blank to pandas
_EMPTY_TOKENS = ["", "nan", "-nan", "na", "n/a", "null", "none"]


def _data_lines(data: bytes, n_rows: int) -> npt.NDArray[np.int64]:
    """1-based file line of each data row: the non-blank lines after the header line."""
    arr = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(arr == 13)
    lone_cr = cr[arr[np.minimum(cr + 1, len(arr) - 1)] != 10]  # pandas ends lines there too
    ends = np.sort(np.concatenate((np.flatnonzero(arr == 10), lone_cr)))
    starts = np.concatenate(([0], ends + 1))
    starts = starts[starts < len(arr)]
    content = _CONTENT_BYTE[arr]
    # starts is strictly increasing, so each reduceat segment is exactly one line (plus its
    # end-of-line byte, which is not content). A byte max avoids a widening sum.
    non_blank = np.maximum.reduceat(content, starts) if len(starts) else content[:0]
    lines = np.flatnonzero(non_blank)[1:] + 1
    return lines if len(lines) == n_rows else np.arange(n_rows, dtype=np.int64) + 2


def _to_float(col: pd.Series) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Cells as float64 (NaN where unparseable) and the mask of empty/NaN-token cells."""
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        num = col.to_numpy(dtype=np.float64, na_value=np.nan)
        return num, np.isnan(num)
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    empty = np.zeros(len(num), dtype=bool)
    nan_at = np.flatnonzero(np.isnan(num))
    if len(nan_at):  # only unparseable cells pay for the string operations
        sub = col.iloc[nan_at]
        text = sub.astype(str).str.strip().str.lower()
        empty[nan_at] = sub.isna().to_numpy() | text.isin(_EMPTY_TOKENS).to_numpy()
    return num, empty


def _cell_message(kind: str, where: str, value: str, num: float, feature: Feature | None) -> str:
    if kind == EMPTY_VALUE:
        return f"{where}: value is empty" + (f" ({value!r})" if value else "")
    if kind == INVALID_LABEL:
        return f"{where}: label {value!r} is not 0 or 1"
    if kind == OUT_OF_RANGE and feature is not None:
        lo, hi = _bounds(feature)
        unit = f" {feature.unit}" if feature.unit else ""
        return (
            f"{where}: value {value!r} is outside the hard limits [{lo:g}, {hi:g}]{unit}: "
            "impossible, or a unit mistake"
        )
    return f"{where}: value {value!r} is not a {'finite ' if np.isinf(num) else ''}number"


@dataclass
class _Cells:
    """Per-cell findings for the schema columns of some rows."""

    values: dict[str, npt.NDArray[np.float64]]  # column -> parsed cells, NaN if unparseable
    masks: dict[tuple[str, str], npt.NDArray[np.bool_]]  # (kind, column) -> bad cells
    raw: dict[tuple[int, str], str]  # (row, column) -> text as written, for example cells

    @property
    def rows(self) -> int:
        return len(next(iter(self.values.values())))

    @staticmethod
    def concat(parts: list[_Cells], schema: Schema) -> _Cells:
        offsets = np.cumsum([0] + [p.rows for p in parts])
        return _Cells(
            values={c: np.concatenate([p.values[c] for p in parts]) for c in schema.columns},
            masks={k: np.concatenate([p.masks[k] for p in parts]) for k in parts[0].masks},
            raw={
                (r + int(off), c): t
                for p, off in zip(parts, offsets[:-1], strict=True)
                for (r, c), t in p.raw.items()
            },
        )


def _inspect(df: pd.DataFrame, schema: Schema, max_examples: int) -> _Cells:
    """Classify every schema cell of ``df``; keep the text of the first bad cells only."""
    cells = _Cells({}, {}, {})
    for name in schema.columns:
        num, empty = _to_float(df[name])
        cells.values[name] = num
        cells.masks[EMPTY_VALUE, name] = empty
        if name == schema.label:
            cells.masks[INVALID_LABEL, name] = ~empty & (num != 0) & (num != 1)
            continue
        finite = np.isfinite(num)
        lo, hi = _bounds(next(f for f in schema.features if f.name == name))
        cells.masks[NON_NUMERIC, name] = ~empty & ~finite
        cells.masks[OUT_OF_RANGE, name] = finite & ((num < lo) | (num > hi))
    for (_, name), mask in cells.masks.items():
        for row in np.flatnonzero(mask)[:max_examples]:
            cell = df[name].iat[row]
            text = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else str(cell)
            cells.raw[int(row), name] = text
    return cells


def _judge(
    cells: _Cells,
    schema: Schema,
    policy: Policy,
    max_examples: int,
    lines: npt.NDArray[np.int64],
    warnings: list[Problem],
) -> ValidationResult:
    """Turn the cell masks into counted problems with examples, then apply the policy."""
    features = {f.name: f for f in schema.features}
    problems: list[Problem] = []
    counts: dict[str, int] = {}
    bad_row = np.zeros(cells.rows, dtype=bool)
    for kind in CELL_KINDS:
        examples: list[tuple[int, int]] = []
        for ci, name in enumerate(schema.columns):
            mask = cells.masks.get((kind, name))
            if mask is not None and mask.any():
                counts[kind] = counts.get(kind, 0) + int(mask.sum())
                bad_row |= mask
                examples += [(int(row), ci) for row in np.flatnonzero(mask)[:max_examples]]
        for row, ci in sorted(examples)[:max_examples]:
            name, value = schema.columns[ci], cells.raw[row, schema.columns[ci]]
            where = f"line {lines[row]}, column {name!r}"
            num = cells.values[name][row]
            message = _cell_message(kind, where, value, num, features.get(name))
            problems.append(Problem(kind, message, int(lines[row]), name, value))
    keep = ~bad_row if bad_row.any() else None
    rows = [cells.values[n] if keep is None else cells.values[n][keep] for n in schema.columns]
    if not (policy is Policy.REJECT and bad_row.any()):  # flags describe the rows kept
        kept_lines = lines if keep is None else lines[keep]
        flagged, flags = _expected_flags(rows[:-1], schema, lambda: kept_lines, max_examples)
        if flagged:
            counts[OUTSIDE_EXPECTED] = flagged
            warnings = [*warnings, *flags]
    return _finish(
        policy,
        schema.label,
        cells.rows,
        rows[-1],
        problems,
        counts,
        warnings,
        lambda: _pack(rows[:-1], rows[-1]),
    )

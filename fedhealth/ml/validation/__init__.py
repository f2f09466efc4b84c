"""Vectorised validation and loading of a site's training CSV against a :class:`Schema`.

Two passes, so that a valid file costs about one ``pandas.read_csv``:

1. *Fast path*: a streaming UTF-8 scan, our own header checks, then one C-engine
   ``read_csv`` with ``float64`` schema columns, and NumPy range checks fused with the
   conversion to float32 ``X``/``y``. Pass a path for big files: pandas then parses on
   several threads, where bytes or a file object are parsed on one.
2. *Diagnosis*, only when the fast path fails or meets a bad value: every cell is re-read as
   text (in chunks of rows, to bound memory) and each problem is located (kind, file line,
   column, value as written) with vectorised pandas/NumPy operations, no per-row Python loop.

Problem kinds are the module-level constants below. ``FILE_KINDS`` always fail the file;
``CELL_KINDS`` fail it under ``Policy.REJECT`` and drop the row under
``Policy.DROP_INVALID_ROWS``. ``unexpected_column`` is only a *warning*: extra columns are
ignored and listed in ``report.warnings``, never in ``report.problems`` or ``report.counts``.
Infinite values (``inf``, ``1e999``) are ``non_numeric`` ("not a finite number"); a blank
cell or ``nan``/``NA``/``N/A``/``null``/``none`` (any case) is ``empty_value``.
``malformed_row`` (more fields than the header, an unclosed quote) is file-level: pandas stops
at the first one, so only that line is reported. Line numbers are 1-based file lines (the
header is line 1); blank lines are skipped as pandas does, and a quoted field spanning several
lines makes later line numbers approximate.
"""

from __future__ import annotations

import io
import os
import re
from typing import BinaryIO

import numpy as np
import pandas as pd

from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.validation.cells import _Cells, _data_lines, _inspect, _judge
from fedhealth.ml.validation.reader import (
    _CHUNK as _CHUNK,  # re-exported: tests size files to the read buffer
)
from fedhealth.ml.validation.reader import (
    DEFAULT_MAX_BYTES,
    _bounds,
    _check_header,
    _chunks,
    _expected_flags,
    _first_rows,
    _load,
    _pack,
    _read,
    _read_numeric,
    _scan,
    _utf8_problem,
)
from fedhealth.ml.validation.report import (
    _HEADER_ONLY_PROBLEM,
    CELL_KINDS,
    DUPLICATE_HEADER,
    EMPTY_FILE,
    EMPTY_VALUE,
    FILE_KINDS,
    FILE_TOO_LARGE,
    HEADER_ONLY,
    INVALID_LABEL,
    MALFORMED_ROW,
    MISSING_COLUMN,
    NO_VALID_ROWS,
    NON_NUMERIC,
    NOT_UTF8,
    OUT_OF_RANGE,
    OUTSIDE_EXPECTED,
    SINGLE_CLASS,
    UNEXPECTED_COLUMN,
    WARNING_KINDS,
    WRONG_DELIMITER,
    Dataset,
    Policy,
    Problem,
    ValidationReport,
    ValidationResult,
    _failed,
    _finish,
)

__all__ = [
    "CELL_KINDS",
    "DEFAULT_MAX_BYTES",
    "DUPLICATE_HEADER",
    "EMPTY_FILE",
    "EMPTY_VALUE",
    "FILE_KINDS",
    "FILE_TOO_LARGE",
    "HEADER_ONLY",
    "INVALID_LABEL",
    "MALFORMED_ROW",
    "MISSING_COLUMN",
    "NON_NUMERIC",
    "NOT_UTF8",
    "NO_VALID_ROWS",
    "OUT_OF_RANGE",
    "OUTSIDE_EXPECTED",
    "SINGLE_CLASS",
    "UNEXPECTED_COLUMN",
    "WARNING_KINDS",
    "WRONG_DELIMITER",
    "Dataset",
    "Policy",
    "Problem",
    "ValidationReport",
    "ValidationResult",
    "validate_csv",
    "validate_frame",
]

# Defined here, beside _diagnose which reads it, so that patching
# fedhealth.ml.validation._DIAGNOSE_ROWS (as the tests do) takes effect.
_DIAGNOSE_ROWS = 200_000  # rows per chunk of the text re-read: bounds the str objects alive


def validate_csv(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    schema: Schema = DEFAULT_SCHEMA,
    *,
    policy: Policy = Policy.REJECT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_examples: int = 10,
) -> ValidationResult:
    """Validate a comma-separated UTF-8 file and load it as float32 arrays.

    ``source`` is a path, the file's bytes, or a binary file object (read from its current
    position, at most ``max_bytes + 1`` bytes). Bad input never raises: it yields a report
    with ``ok=False``. A missing path does raise (``OSError``): that is a caller's bug.
    """
    policy = Policy(policy)
    path, data, too_large = _load(source, max_bytes)
    if too_large is not None:
        return _failed(policy, [too_large])

    head, utf8_ok, boolean_words = _scan(_chunks(path, data))
    if not utf8_ok:
        data = data if data is not None else _read(path)
        return _failed(policy, [_utf8_problem(data)])
    rows = _first_rows(head)
    if isinstance(rows, Problem):
        return _failed(policy, [rows])
    if not rows:
        return _failed(policy, [Problem(EMPTY_FILE, "the file is empty")])
    header = rows[0][1]
    problems, warnings = _check_header(header, schema)
    if len(rows) > 1 and len(rows[1][1]) > len(header) and not problems:
        # pandas would silently drop the extra field of the *first* row (later rows raise).
        line, n = rows[1][0], len(rows[1][1])
        msg = f"line {line}: malformed row ({n} fields, but the header has {len(header)})"
        problems.append(Problem(MALFORMED_ROW, msg, line=line))
    if problems:
        return _failed(policy, problems, warnings)

    # The C parser reads "true"/"false" as 1.0/0.0 in float columns, which the diagnosis
    # rejects, so such files skip the fast path to get one consistent verdict.
    if not boolean_words:
        frame = _read_numeric(path, data, header, schema)
        if frame is not None and len(frame) == 0:
            return _failed(policy, [_HEADER_ONLY_PROBLEM], warnings)
        if frame is not None:
            columns = [frame[name].to_numpy() for name in schema.feature_names]
            bounds = [_bounds(f) for f in schema.features]
            loaded = _pack(columns, frame[schema.label].to_numpy(), bounds)
            if loaded is not None:
                counts: dict[str, int] = {}
                flagged, flags = _expected_flags(
                    columns,
                    schema,
                    lambda: _data_lines(data if data is not None else _read(path), len(frame)),
                    max_examples,
                )
                if flagged:
                    counts[OUTSIDE_EXPECTED] = flagged
                    warnings = [*warnings, *flags]
                return _finish(
                    policy, schema.label, len(frame), loaded.y, [], counts, warnings, lambda: loaded
                )
        del frame
    return _diagnose(
        data if data is not None else _read(path), header, schema, policy, max_examples, warnings
    )


def validate_frame(
    df: pd.DataFrame,
    schema: Schema = DEFAULT_SCHEMA,
    *,
    policy: Policy = Policy.REJECT,
    max_examples: int = 10,
) -> ValidationResult:
    """Validate already-parsed rows (string or numeric columns), e.g. from a web form.

    Row ``i`` (0-based position) is reported as line ``i + 2``, as if read from a CSV file
    with a header. Missing schema columns fail; extra columns are warnings.
    """
    policy = Policy(policy)
    problems, warnings = _check_header([str(c).strip() for c in df.columns], schema)
    if problems:
        return _failed(policy, problems, warnings)
    cells = _inspect(df.rename(columns=lambda c: str(c).strip()), schema, max_examples)
    return _judge(cells, schema, policy, max_examples, np.arange(len(df)) + 2, warnings)


def _diagnose(
    data: bytes,
    header: list[str],
    schema: Schema,
    policy: Policy,
    max_examples: int,
    warnings: list[Problem],
) -> ValidationResult:
    """Slow path: read every cell as text, in chunks so that few Python strings live at once."""
    parts: list[_Cells] = []
    try:
        with pd.read_csv(
            io.BytesIO(data),
            header=0,
            names=header,
            dtype=object,
            na_filter=False,
            index_col=False,
            engine="c",
            chunksize=_DIAGNOSE_ROWS,
        ) as reader:
            parts.extend(_inspect(chunk, schema, max_examples) for chunk in reader)
    except ValueError as exc:  # pandas ParserError: ragged row, unclosed quote
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        # pandas names a file line ("line 7") or a record counted from the header ("row 6").
        found = re.search(r"(line|row) (\d+)", detail)
        line = int(found[2]) + (found[1] == "row") if found else None
        where = f"line {line}: " if line else ""
        problem = Problem(MALFORMED_ROW, f"{where}malformed row ({detail})", line=line)
        return _failed(policy, [problem], warnings)
    cells = _Cells.concat(parts, schema) if parts else None
    if cells is None or cells.rows == 0:
        return _failed(policy, [_HEADER_ONLY_PROBLEM], warnings)
    lines = _data_lines(data, cells.rows)
    return _judge(cells, schema, policy, max_examples, lines, warnings)

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

import codecs
import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedhealth.ml.schema import DEFAULT_SCHEMA, Feature, Schema

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
        SINGLE_CLASS,
        NO_VALID_ROWS,
    }
)
CELL_KINDS = (NON_NUMERIC, EMPTY_VALUE, OUT_OF_RANGE, INVALID_LABEL)
WARNING_KINDS = frozenset({UNEXPECTED_COLUMN})

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 1 << 20  # bytes per read of the UTF-8 scan
_BLOCK_ROWS = 32_768  # rows per block when interleaving columns into X
_DIAGNOSE_ROWS = 200_000  # rows per chunk of the text re-read: bounds the str objects alive
_CONTENT_BYTE = np.ones(256, dtype=np.uint8)
_CONTENT_BYTE[[9, 10, 13, 32]] = 0  # a line of only these is blank to pandas
_EMPTY_TOKENS = ["", "nan", "-nan", "na", "n/a", "null", "none"]


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
        }

    def format(self) -> str:
        """Human-readable multi-line summary for the CLI: counts per kind, then examples."""
        out = [
            f"{'OK' if self.ok else 'FAILED'} (policy {self.policy}): {self.rows_total} rows, "
            f"{self.rows_valid} valid, {self.rows_dropped} dropped"
        ]
        for kind, count in self.counts.items():
            examples = [p for p in self.problems if p.kind == kind]
            out.append(f"{kind}: {count}")
            out.extend(f"  {p.message}" for p in examples)
            if count > len(examples):
                out.append(f"  ... and {count - len(examples)} more")
        if self.warnings:
            out.append(f"warnings: {len(self.warnings)}")
            out.extend(f"  {w.kind}: {w.message}" for w in self.warnings)
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
                return _finish(
                    policy, schema.label, len(frame), loaded.y, [], {}, warnings, lambda: loaded
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


def _failed(
    policy: Policy, problems: list[Problem], warnings: list[Problem] | None = None
) -> ValidationResult:
    counts = dict(Counter(p.kind for p in problems))
    report = ValidationReport(False, str(policy), 0, 0, 0, problems, counts, warnings or [])
    return ValidationResult(report, None)


def _load(
    source: str | os.PathLike[str] | bytes | BinaryIO, max_bytes: int
) -> tuple[str | None, bytes | None, Problem | None]:
    """(path, bytes, file_too_large problem), checking the size before any parsing."""
    if isinstance(source, str | os.PathLike):
        # Absolute, so that pandas can never take a local name such as "http:/x" for a URL.
        path = os.path.abspath(os.fspath(source))
        size = os.stat(path).st_size
        return path, None, _too_large(f"{size} bytes", max_bytes) if size > max_bytes else None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        size_text = f"{len(data)} bytes"
    else:  # a stream: never read more than needed to know it is too large
        raw = source.read(max_bytes + 1)
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        size_text = f"more than {max_bytes} bytes"
    return None, data, _too_large(size_text, max_bytes) if len(data) > max_bytes else None


def _too_large(size: str, max_bytes: int) -> Problem:
    return Problem(FILE_TOO_LARGE, f"the file is {size}; the limit is {max_bytes} bytes")


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as fh:
        return fh.read()


def _chunks(path: str | None, data: bytes | None) -> Iterator[bytes | bytearray]:
    """The file in pieces; a path is read into one reused buffer (fresh 1 MiB allocations
    would each pay page faults). The caller must not keep a piece beyond its iteration."""
    if data is not None:
        yield data
        return
    assert path is not None
    buf = bytearray(_CHUNK)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            yield buf if n == _CHUNK else buf[:n]


def _scan(chunks: Iterator[bytes | bytearray]) -> tuple[bytes, bool, bool]:
    """One streaming pass: (first 64 KiB, is valid UTF-8, has "true"/"false" after line 1)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    head, tail, boolean_words = b"", b"", False
    try:
        for chunk in chunks:
            start = 0
            if not head:
                head, start = bytes(chunk[:65536]), chunk.find(b"\n") + 1
            # ASCII is valid UTF-8 unless a multi-byte sequence is pending from the last piece.
            if not chunk.isascii() or decoder.getstate()[0]:
                decoder.decode(chunk)
            # Cheap memchr probes first; lower-casing is only paid when such a letter shows up.
            if not boolean_words and any(chunk.find(c, start) >= 0 for c in b"rRlL"):
                low = (tail + bytes(chunk[start:])).lower()
                boolean_words = b"true" in low or b"false" in low
            tail = bytes(chunk[-4:])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return head, False, boolean_words
    return head, True, boolean_words


def _utf8_problem(data: bytes) -> Problem:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return Problem(
            NOT_UTF8,
            f"line {line}: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is not valid UTF-8; save the file as UTF-8",
            line=line,
        )
    return Problem(NOT_UTF8, "the file is not valid UTF-8")


def _first_rows(head: bytes) -> list[tuple[int, list[str]]] | Problem:
    """(line, stripped cells) of the first two non-blank lines: the header and first row."""
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text, maxsplit=100), start=1):
        if line.strip():
            try:
                rows.append((number, [cell.strip() for cell in next(csv.reader([line]))]))
            except csv.Error as exc:
                return Problem(MALFORMED_ROW, f"line {number}: cannot be parsed ({exc})", number)
            if len(rows) == 2:
                break
    return rows


def _check_header(header: list[str], schema: Schema) -> tuple[list[Problem], list[Problem]]:
    expected = schema.columns
    if len(header) == 1 and header[0] not in expected:
        for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"), (" ", "space")):
            parts = [p.strip() for p in header[0].split(sep)]
            if sep in ";\t" and len(parts) > 1 or set(parts) & set(expected):
                msg = f"line 1: the header looks {name}-separated; use commas between columns"
                return [Problem(WRONG_DELIMITER, msg, line=1, value=header[0])], []
    problems = [
        Problem(DUPLICATE_HEADER, f"line 1: column {name!r} appears {n} times", 1, name)
        for name, n in Counter(header).items()
        if n > 1
    ]
    problems += [
        Problem(MISSING_COLUMN, f"line 1: required column {name!r} is missing", 1, name)
        for name in expected
        if name not in header
    ]
    warnings = [
        Problem(
            UNEXPECTED_COLUMN, f"line 1: column {name!r} is not in the schema; ignored", 1, name
        )
        for name in dict.fromkeys(header)
        if name not in expected
    ]
    return problems, warnings


def _read_numeric(
    path: str | None, data: bytes | None, header: list[str], schema: Schema
) -> pd.DataFrame | None:
    """Fast path: schema columns as float64 (extra columns as text); None if pandas refuses."""
    wanted = set(schema.columns)
    # A single dtype when there are no extra columns: a dict costs pandas a second header parse.
    dtype: str | dict[str, Any] = "float64"
    if not wanted.issuperset(header):
        dtype = {c: ("float64" if c in wanted else object) for c in header}
    # A path (not a file object) lets pandas >= 3.1 parse a large file on several threads;
    # compression=None stops it from inflating a stored "upload.csv.gz" we never scanned.
    src = io.BytesIO(data) if data is not None else path
    try:
        return pd.read_csv(
            src, header=0, names=header, dtype=dtype, index_col=False, engine="c", compression=None
        )
    except ValueError:  # a non-numeric cell or a ParserError: the diagnosis explains it
        return None


def _bounds(feature: Feature) -> tuple[float, float]:
    lo = -np.inf if feature.min is None else feature.min
    return lo, np.inf if feature.max is None else feature.max


def _pack(
    columns: list[npt.NDArray[np.float64]],
    label: npt.NDArray[np.float64],
    bounds: list[tuple[float, float]] | None = None,
) -> Dataset | None:
    """Interleave float64 columns into float32 ``X`` (n, d) and ``y`` (n,).

    Works in row blocks, so each value is read once while in cache. With ``bounds`` (one
    (min, max) per column) it also checks every cell, and returns None at the first block
    holding NaN, inf, an out-of-range value or a label other than 0/1.
    """
    X = np.empty((len(label), len(columns)), dtype=np.float32)
    y = np.empty(len(label), dtype=np.float32)
    for start in range(0, len(label), _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        for j, column in enumerate(columns):
            part = column[block]
            if bounds is not None:
                # min/max propagate NaN and expose inf: two reductions check every cell.
                low, high = part.min(), part.max()
                lo, hi = bounds[j]
                if not (np.isfinite(low) and np.isfinite(high) and lo <= low and high <= hi):
                    return None
            X[block, j] = part
        part = label[block]
        if bounds is not None and not ((part == 0) | (part == 1)).all():
            return None
        y[block] = part
    y += 0.0  # a label written "-0" becomes 0.0, not -0.0
    return Dataset(X=X, y=y)


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
        return f"{where}: value {value!r} is outside the allowed range [{lo:g}, {hi:g}]{unit}"
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
        msg = f"all {valid} valid rows have label {int(y[0])}; training needs both 0 and 1"
        problems.append(Problem(SINGLE_CLASS, msg, column=label))
        counts[SINGLE_CLASS] = 1
    ok = not rejected and not any(kind in FILE_KINDS for kind in counts)
    dropped = total - valid if policy is Policy.DROP_INVALID_ROWS else 0
    report = ValidationReport(ok, str(policy), total, valid, dropped, problems, counts, warnings)
    return ValidationResult(report, load() if ok else None)

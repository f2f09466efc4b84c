"""Fast path of the CSV validation: size limit, streaming UTF-8 scan, header and delimiter
checks, one C-engine ``read_csv`` of the schema columns as float64, and the fused range check
and conversion to float32 ``X``/``y``.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedhealth.ml.schema import Feature, Schema
from fedhealth.ml.validation.identifiers import looks_like_identifier
from fedhealth.ml.validation.report import (
    DUPLICATE_HEADER,
    FILE_TOO_LARGE,
    MALFORMED_ROW,
    MISSING_COLUMN,
    NOT_UTF8,
    OUTSIDE_EXPECTED,
    UNEXPECTED_COLUMN,
    WRONG_DELIMITER,
    Dataset,
    Problem,
)

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 1 << 20  # bytes per read of the UTF-8 scan
_BLOCK_ROWS = 32_768  # rows per block when interleaving columns into X


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
        Problem(UNEXPECTED_COLUMN, _unexpected_message(name), 1, name)
        for name in dict.fromkeys(header)
        if name not in expected
    ]
    return problems, warnings


def _unexpected_message(name: str) -> str:
    if looks_like_identifier(name):
        return (
            f"line 1: column {name!r} is not in the schema and looks like a patient identifier; "
            "it is dropped and never stored (remove it from your export)"
        )
    return f"line 1: column {name!r} is not in the schema; dropped, not stored"


def _read_numeric(
    path: str | None, data: bytes | None, header: list[str], schema: Schema
) -> pd.DataFrame | None:
    """Fast path: schema columns as float64 (extra columns as text); None if pandas refuses."""
    wanted = set(schema.columns)
    # A single dtype when there are no extra columns: a dict costs pandas a second header parse.
    # (Not usecols, which would spare the extra columns' strings: with it pandas no longer
    # refuses a row with more fields than the header.)
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
    """The hard limits: a value outside them rejects its row."""
    lo = -np.inf if feature.hard_min is None else feature.hard_min
    return lo, np.inf if feature.hard_max is None else feature.hard_max


def _expected(feature: Feature) -> tuple[float, float]:
    """The expected range: a value outside it is flagged and kept."""
    lo = -np.inf if feature.min is None else feature.min
    return lo, np.inf if feature.max is None else feature.max


def _expected_flags(
    columns: list[npt.NDArray[np.float64]],
    schema: Schema,
    lines: Callable[[], npt.NDArray[np.int64]],
    max_examples: int,
) -> tuple[int, list[Problem]]:
    """Count the kept values outside their feature's expected range; the first
    ``max_examples`` (by line) become warnings naming line, column and value.

    ``lines`` maps the kept rows to file lines; it is only called when something is flagged.
    """
    masks = []
    for column, feature in zip(columns, schema.features, strict=True):
        lo, hi = _expected(feature)
        masks.append((column < lo) | (column > hi))
    total = int(sum(int(m.sum()) for m in masks))
    if not total:
        return 0, []
    at = lines()
    examples = sorted(
        (int(row), j) for j, m in enumerate(masks) for row in np.flatnonzero(m)[:max_examples]
    )[:max_examples]
    flags = []
    for row, j in examples:
        feature, value = schema.features[j], float(columns[j][row])
        lo, hi = _expected(feature)
        unit = f" {feature.unit}" if feature.unit else ""
        line = int(at[row])
        flags.append(
            Problem(
                OUTSIDE_EXPECTED,
                f"line {line}, column {feature.name!r}: value {value:g}{unit} is outside the expected "
                f"range [{lo:g}, {hi:g}]{unit}; kept",
                line,
                feature.name,
                f"{value:g}",
            )
        )
    return total, flags


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

"""The canonical CSV of a validated dataset: what a hosted site's storage keeps.

Only the schema's columns, in the schema's order (features, then the label), of the rows
that were loaded, never the original file: an extra column (an MRN, a name) or a row the
policy dropped never reaches storage. Values are written as the shortest text that reads
back to the same float32 (so re-validating the file gives exactly the loaded arrays), the
label as 0/1, lines end in ``\\n``. Written in blocks of rows to a binary file object, with
the SHA-256 computed on the way, so no copy of the whole file is built in memory.

The text is what ``pandas.DataFrame.to_csv`` writes for float32 columns (NumPy's shortest
repr), but built with array arithmetic: for each value the fewest decimals ``k`` (0-12) whose
nearest ``k``-decimal number reads back to the same float32, then the digits of that number
placed in a byte matrix whose padding is squeezed out. About 8x faster than ``to_csv``
(1,000,000 rows: ~0.2 s of CPU against ~1.75 s), which was most of a big upload's time. A block
holding a value NumPy prints in scientific notation (|x| >= 1e6 or 0 < |x| < 1e-3 here) is
written by pandas, as before.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedhealth.ml.schema import Schema
from fedhealth.ml.validation.report import Dataset

BLOCK_ROWS = 65_536
_MAX_DECIMALS = 12
_POW10 = 10.0 ** np.arange(_MAX_DECIMALS + 1)
_IPOW10 = 10 ** np.arange(_MAX_DECIMALS + 1, dtype=np.int64)
_MINUS, _ZERO, _DOT, _COMMA, _NEWLINE = (ord(c) for c in "-0.,\n")


def write_canonical_csv(data: Dataset, schema: Schema, out: BinaryIO, *, block_rows: int = BLOCK_ROWS) -> tuple[int, str]:
    """Write ``data`` as canonical CSV to ``out``; return (bytes written, SHA-256 hex)."""
    digest = hashlib.sha256()
    written = 0
    columns = [*schema.feature_names, schema.label]

    def emit(chunk: bytes) -> None:
        nonlocal written
        out.write(chunk)
        digest.update(chunk)
        written += len(chunk)

    emit((",".join(columns) + "\n").encode("utf-8"))
    labels = data.y.astype(np.int8)
    for start in range(0, len(labels), block_rows):
        X, y = data.X[start:start + block_rows], labels[start:start + block_rows]
        text = _block_text(X, y)
        if text is None:
            block = pd.DataFrame(X, columns=schema.feature_names, copy=False)
            block[schema.label] = y
            text = block.to_csv(header=False, index=False, lineterminator="\n").encode("utf-8")
        emit(text)
    return written, digest.hexdigest()


def _decimals(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
    """(n, k) per value with |x| == float32(n / 10**k) and the fewest such decimals ``k``,
    ``n`` the nearest integer to |x| * 10**k; None when a value is not printed positionally
    by NumPy (or needs more than 12 decimals).

    n < 2**53 and 10**k are exact in float64, so ``n / 10**k`` is the correctly rounded
    double of the decimal written, what the validator's parser reads back.
    """
    a = np.abs(x)
    if not (((a >= 1e-3) & (a < 1e6)) | (a == 0)).all():
        return None
    a64 = a.astype(np.float64)
    n = np.zeros(len(x), dtype=np.int64)
    k = np.zeros(len(x), dtype=np.int64)
    pending = np.ones(len(x), dtype=bool)
    # Whole-array steps with masks: gathering the pending values by index costs more.
    for decimals in range(_MAX_DECIMALS + 1):
        scaled = np.rint(a64 * _POW10[decimals])
        hit = pending & ((scaled / _POW10[decimals]).astype(np.float32) == a)
        np.copyto(n, scaled, casting="unsafe", where=hit)
        np.copyto(k, decimals, where=hit)
        pending &= ~hit
        if not pending.any():
            return n, k
    return None


def _block_text(X: npt.NDArray[np.float32], y: npt.NDArray[np.int8]) -> bytes | None:
    """Rows of ``X`` (b, d) and labels ``y`` (b,) as CSV lines, or None (pandas writes them).

    Each value gets a fixed-width field in a (b, width) byte matrix: sign, integer digits
    right-aligned, the point, decimals left-aligned, zeros where a character is absent;
    dropping the zeros leaves the lines.
    """
    parts = []
    for j in range(X.shape[1]):
        found = _decimals(X[:, j])
        if found is None:
            return None
        n, k = found
        scale = _IPOW10[k[0]] if (k == k[0]).all() else _IPOW10[k]  # one scalar divisor, usually
        whole, frac = np.divmod(n, scale)
        digits = len(str(int(whole.max()))) if len(whole) else 1
        parts.append((np.signbit(X[:, j]), whole, frac, k, digits, max(int(k.max(initial=0)), 1)))
    width = sum(3 + digits + places for *_, digits, places in parts) + 2
    chars = np.zeros((len(y), width), dtype=np.uint8)
    at = 0
    for negative, whole, frac, k, digits, places in parts:
        chars[:, at] = np.where(negative, _MINUS, 0)
        rest = whole.astype(np.int32)  # < 1e6
        for p in range(digits):  # p-th digit from the right; the units digit always
            rest, digit = np.divmod(rest, 10)
            chars[:, at + digits - p] = _ZERO + digit if p == 0 else np.where(whole >= _IPOW10[p], _ZERO + digit, 0)
        at += digits + 1
        chars[:, at] = _DOT
        for q in range(1, places + 1):  # q-th decimal; "0" when there are none (k == 0)
            exponent = k - q
            digit = _ZERO + (frac // _IPOW10[np.maximum(exponent, 0)]) % 10
            chars[:, at + q] = np.where((exponent >= 0) | ((q == 1) & (k == 0)), digit, 0)
        at += places + 1
        chars[:, at] = _COMMA
        at += 1
    chars[:, at] = _ZERO + y
    chars[:, at + 1] = _NEWLINE
    flat = chars.ravel()
    return np.compress(flat != 0, flat).tobytes()

"""The canonical CSV of a validated dataset: what a hosted site's storage keeps.

Only the schema's columns, in the schema's order (features, then the label), of the rows
that were loaded, never the original file: an extra column (an MRN, a name) or a row the
policy dropped never reaches storage. Values are written as the shortest text that reads
back to the same float32 (so re-validating the file gives exactly the loaded arrays), the
label as 0/1, lines end in ``\\n``. Written in blocks of rows to a binary file object, with
the SHA-256 computed on the way, so no copy of the whole file is built in memory.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import numpy as np
import pandas as pd

from fedhealth.ml.schema import Schema
from fedhealth.ml.validation.report import Dataset

BLOCK_ROWS = 65_536


def write_canonical_csv(data: Dataset, schema: Schema, out: BinaryIO, *, block_rows: int = BLOCK_ROWS) -> tuple[int, str]:
    """Write ``data`` as canonical CSV to ``out``; return (bytes written, SHA-256 hex)."""
    digest = hashlib.sha256()
    written = 0
    columns = [*schema.feature_names, schema.label]

    def emit(text: str) -> None:
        nonlocal written
        chunk = text.encode("utf-8")
        out.write(chunk)
        digest.update(chunk)
        written += len(chunk)

    emit(",".join(columns) + "\n")
    labels = data.y.astype(np.int8)
    for start in range(0, len(labels), block_rows):
        block = pd.DataFrame(data.X[start:start + block_rows], columns=schema.feature_names, copy=False)
        block[schema.label] = labels[start:start + block_rows]
        emit(block.to_csv(header=False, index=False, lineterminator="\n"))
    return written, digest.hexdigest()

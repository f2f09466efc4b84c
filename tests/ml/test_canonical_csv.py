"""The canonical CSV writer (fedhealth/ml/validation/canonical.py): the bytes pandas writes
for float32 columns, built with array arithmetic, and read back to the very same arrays."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest

from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.validation import validate_csv
from fedhealth.ml.validation.canonical import write_canonical_csv
from fedhealth.ml.validation.report import Dataset

N = 40_000


def pandas_canonical(data: Dataset) -> bytes:
    """The writer as it was: ``DataFrame.to_csv`` of the float32 block and 0/1 labels."""
    frame = pd.DataFrame(data.X, columns=DEFAULT_SCHEMA.feature_names)
    frame[DEFAULT_SCHEMA.label] = data.y.astype(np.int8)
    return (",".join(DEFAULT_SCHEMA.columns) + "\n").encode() + frame.to_csv(
        header=False, index=False, lineterminator="\n"
    ).encode()


def signs(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.choice([-1.0, 1.0], shape)


CASES = {
    "vitals": lambda rng: np.stack(
        [rng.uniform(50, 120, N).round(1), rng.integers(90, 161, N), rng.integers(60, 101, N),
         rng.uniform(90, 100, N).round(1)], axis=1),
    "every magnitude printed positionally": lambda rng: 10 ** rng.uniform(-3, 6, (N, 4)) * signs(rng, (N, 4)),
    "arbitrary float32 bit patterns": lambda rng: (
        rng.integers(0x3A83126F, 0x49742400, (N, 4)).astype(np.uint32).view(np.float32) * signs(rng, (N, 4))
    ),
    "zeros, negative zeros and two decimals": lambda rng: np.where(
        rng.random((N, 4)) < 0.3, 0.0, rng.uniform(0, 5, (N, 4)).round(2)) * signs(rng, (N, 4)),
    "a block with scientific notation (pandas writes it)": lambda rng: np.concatenate(
        [rng.uniform(50, 120, (N - 3, 4)), [[1e7, 2e-5, -3.5e9, 123456789.0]] * 3]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_bytes_are_pandas_float32_text_and_read_back_exactly(case):
    # Prepare
    rng = np.random.default_rng(7)
    data = Dataset(X=CASES[case](rng).astype(np.float32), y=rng.integers(0, 2, N).astype(np.float32))
    out = io.BytesIO()

    # Execute
    size, sha256 = write_canonical_csv(data, DEFAULT_SCHEMA, out, block_rows=10_000)

    # Assert
    written = out.getvalue()
    assert written == pandas_canonical(data)
    assert size == len(written) and sha256 == hashlib.sha256(written).hexdigest()
    again = validate_csv(written, DEFAULT_SCHEMA, max_bytes=len(written)).data
    if case.startswith("vitals"):  # the other cases hold values outside the schema's limits
        np.testing.assert_array_equal(again.X, data.X)
        np.testing.assert_array_equal(again.y, data.y)
    else:
        frame = pd.read_csv(io.BytesIO(written), dtype="float64")
        np.testing.assert_array_equal(frame[DEFAULT_SCHEMA.feature_names].to_numpy().astype(np.float32), data.X)


def test_each_block_is_written_as_it_is_made():
    rng = np.random.default_rng(1)
    data = Dataset(X=CASES["vitals"](rng).astype(np.float32), y=rng.integers(0, 2, N).astype(np.float32))

    class Writes(io.BytesIO):
        sizes: list[int] = []

        def write(self, chunk):
            self.sizes.append(len(chunk))
            return super().write(chunk)

    out = Writes()
    write_canonical_csv(data, DEFAULT_SCHEMA, out, block_rows=5_000)

    assert len(out.sizes) == 1 + N // 5_000  # the header, then one write per block
    assert max(out.sizes) < len(out.getvalue()) / 6

"""safetensors serialisation of weights: exact round trips, checksums, hostile input."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.weights_io import (
    ORDER_KEY,
    ChecksumMismatch,
    WeightsFormatError,
    load_weights,
    read_metadata,
    save_weights,
    sha256_hex,
    weights_from_bytes,
    weights_to_bytes,
)

UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Booby:
    """Unpickling this object calls ``_record_unpickling``: proof that pickle ran."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record_unpickling, ("unpickled!",))


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    # state_dict order (weight before bias) is not alphabetical: order must survive.
    return init_weights(ModelConfig(n_features=5), seed=3)


def assert_weights_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], expected[key])


def test_bytes_round_trip_is_exact_and_keeps_key_order(weights: dict[str, np.ndarray]) -> None:
    # Prepare
    unordered = {
        "z": np.arange(3, dtype=np.float32),
        "a": np.float32([[1e-38, -0.0]]),
        "m": np.float32(2.5),
    }

    # Execute
    got = weights_from_bytes(weights_to_bytes(weights))
    got_unordered = weights_from_bytes(weights_to_bytes(unordered))

    # Assert
    assert list(weights) != sorted(weights)
    assert_weights_equal(got, weights)
    assert_weights_equal(got_unordered, unordered)


def test_loaded_arrays_are_writable(weights: dict[str, np.ndarray]) -> None:
    # Execute
    got = weights_from_bytes(weights_to_bytes(weights))
    got["out.bias"][0] = 1.0

    # Assert
    assert got["out.bias"][0] == 1.0


def test_float64_input_is_stored_as_float32() -> None:
    # Execute
    got = weights_from_bytes(weights_to_bytes({"w": np.array([0.1, 0.2], dtype=np.float64)}))

    # Assert
    np.testing.assert_array_equal(got["w"], np.float32([0.1, 0.2]))


def test_metadata_round_trip_hides_the_order_key(weights: dict[str, np.ndarray]) -> None:
    # Prepare
    metadata = {"round": "3", "site": "st-marys"}

    # Execute
    data = weights_to_bytes(weights, metadata)

    # Assert
    assert read_metadata(data) == metadata
    assert read_metadata(weights_to_bytes(weights)) == {}
    assert_weights_equal(weights_from_bytes(data), weights)


@pytest.mark.parametrize("metadata", [{ORDER_KEY: "[]"}, {"round": 3}])
def test_bad_metadata_is_rejected(weights: dict[str, np.ndarray], metadata: dict) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="metadata"):
        weights_to_bytes(weights, metadata)


def test_checksum_is_verified(weights: dict[str, np.ndarray]) -> None:
    # Prepare
    data = weights_to_bytes(weights)
    good = sha256_hex(data)
    tampered = bytearray(data)
    tampered[-1] ^= 0x01

    # Execute
    got = weights_from_bytes(data, expected_sha256=good.upper())

    # Assert
    assert len(good) == 64
    assert_weights_equal(got, weights)
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch") as excinfo:
        weights_from_bytes(bytes(tampered), expected_sha256=good)
    assert isinstance(excinfo.value, ValueError)


def _valid_bytes() -> bytes:
    return weights_to_bytes({"w": np.ones((2, 2), np.float32)})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"abc",
        b"\x00" * 8,
        np.random.default_rng(0).bytes(256),
        struct.pack("<Q", 10**9) + b"{}",
        struct.pack("<Q", 4) + b"{{{{",
        struct.pack("<Q", 2) + b"[]",
        _valid_bytes()[:-3],
    ],
    ids=[
        "empty",
        "short",
        "zero-header",
        "random",
        "huge-header",
        "bad-json",
        "not-object",
        "truncated",
    ],
)
def test_garbage_bytes_are_rejected(data: bytes) -> None:
    # Execute / Assert
    with pytest.raises(WeightsFormatError):
        weights_from_bytes(data)


def test_non_float32_tensor_is_rejected() -> None:
    # Prepare
    data = safetensors.numpy.save({"w": np.arange(4, dtype=np.int64)})

    # Execute / Assert
    with pytest.raises(WeightsFormatError, match="dtype"):
        weights_from_bytes(data)


def test_inconsistent_order_metadata_is_rejected() -> None:
    # Prepare
    data = safetensors.numpy.save(
        {"w": np.ones(2, np.float32)}, metadata={ORDER_KEY: json.dumps(["w", "ghost"])}
    )

    # Execute / Assert
    with pytest.raises(WeightsFormatError, match=ORDER_KEY):
        weights_from_bytes(data)


def test_file_from_another_tool_loads_in_header_order() -> None:
    # Prepare
    data = safetensors.numpy.save({"b": np.ones(1, np.float32), "a": np.zeros(2, np.float32)})

    # Execute
    got = weights_from_bytes(data)

    # Assert
    assert list(got) == ["a", "b"]


def test_pickle_file_is_rejected_without_unpickling(tmp_path: Path) -> None:
    # Prepare
    UNPICKLED.clear()
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"out.bias": Booby()}))

    # Execute / Assert
    with pytest.raises(WeightsFormatError):
        load_weights(path)
    assert UNPICKLED == []


def test_torch_save_file_is_rejected(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "model.pt"
    torch.save({"out.bias": torch.zeros(1)}, path)

    # Execute / Assert
    with pytest.raises(WeightsFormatError):
        load_weights(path)


def test_save_and_load_file(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    # Prepare
    path = tmp_path / "global.safetensors"

    # Execute
    digest = save_weights(path, weights, {"round": "1"})
    got = load_weights(path, expected_sha256=digest)

    # Assert
    assert digest == sha256_hex(path.read_bytes())
    assert_weights_equal(got, weights)
    assert read_metadata(path.read_bytes()) == {"round": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.safetensors"]
    with pytest.raises(ChecksumMismatch):
        load_weights(path, expected_sha256="0" * 64)


def test_save_replaces_atomically_and_cleans_up_on_failure(
    tmp_path: Path, weights: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    path = tmp_path / "global.safetensors"
    old_digest = save_weights(path, weights)
    newer = {k: v + 1 for k, v in weights.items()}

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    # Execute
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, newer)
    monkeypatch.undo()
    after_failure = path.read_bytes()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    new_digest = save_weights(path, newer)

    # Assert
    assert sha256_hex(after_failure) == old_digest
    assert leftovers == ["global.safetensors"]
    assert sha256_hex(path.read_bytes()) == new_digest != old_digest
    assert_weights_equal(load_weights(path), newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.safetensors"]

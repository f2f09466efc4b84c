"""Weights <-> bytes/files in the safetensors format (never pickle).

safetensors stores a JSON header and raw little-endian buffers, so loading an untrusted
upload cannot execute code (unlike ``torch.load``/pickle). The format sorts tensors by
name, so the original ``state_dict`` order is kept in the header metadata under
``ORDER_KEY`` and restored on load. Every tensor is stored as float32 (``F32``); a file
holding any other dtype is rejected on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from fedhealth.ml.types import Weights

__all__ = [
    "ORDER_KEY",
    "ChecksumMismatch",
    "WeightsFormatError",
    "load_weights",
    "read_metadata",
    "save_weights",
    "sha256_hex",
    "weights_from_bytes",
    "weights_to_bytes",
]

ORDER_KEY = "fedhealth.key_order"
_HEADER_LEN_BYTES = 8


class WeightsFormatError(ValueError):
    """The bytes are not a valid FedHealth safetensors weights file."""


class ChecksumMismatch(ValueError):
    """The bytes' SHA-256 differs from the expected one (corrupt or tampered upload)."""


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data`` (64 characters)."""
    return hashlib.sha256(data).hexdigest()


def weights_to_bytes(weights: Weights, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``weights`` (cast to contiguous float32) to safetensors bytes.

    ``metadata`` is free-form ``str -> str`` stored in the header (e.g. round, site);
    the key ``ORDER_KEY`` is reserved. Raises ``ValueError`` on non-string metadata, a
    reserved key or a non-numeric array.
    """
    header: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str, got {key!r}: {value!r}")
        if key == ORDER_KEY:
            raise ValueError(f"metadata key {ORDER_KEY!r} is reserved")
        header[key] = value
    header[ORDER_KEY] = json.dumps(list(weights))
    arrays: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        try:
            arrays[name] = np.ascontiguousarray(array, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameter {name!r} is not a float array: {exc}") from exc
    return safetensors.numpy.save(arrays, metadata=header)


def _parse_header(data: bytes) -> dict[str, Any]:
    if len(data) < _HEADER_LEN_BYTES:
        raise WeightsFormatError("not a safetensors file: too short")
    (length,) = struct.unpack("<Q", data[:_HEADER_LEN_BYTES])
    if length > len(data) - _HEADER_LEN_BYTES:
        raise WeightsFormatError("not a safetensors file: header length exceeds file size")
    try:
        header = json.loads(data[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsFormatError(f"not a safetensors file: bad header ({exc})") from exc
    if not isinstance(header, dict):
        raise WeightsFormatError("not a safetensors file: header is not a JSON object")
    return header


def _raw_metadata(header: Mapping[str, Any]) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsFormatError("safetensors metadata must map str to str")
    return meta


def read_metadata(data: bytes) -> dict[str, str]:
    """User metadata stored by ``weights_to_bytes`` (without the reserved order key).

    Only the header is parsed, so this is cheap. Raises ``WeightsFormatError`` on garbage.
    """
    meta = dict(_raw_metadata(_parse_header(data)))
    meta.pop(ORDER_KEY, None)
    return meta


def weights_from_bytes(data: bytes, expected_sha256: str | None = None) -> Weights:
    """Parse safetensors bytes into writable float32 arrays, in the order they were written.

    Raises:
        ChecksumMismatch: ``expected_sha256`` is given and differs from ``sha256_hex(data)``
            (checked before anything is parsed).
        WeightsFormatError: the bytes are not safetensors, a tensor is not float32, or the
            stored key order does not match the tensors.
    """
    if expected_sha256 is not None:
        actual = sha256_hex(data)
        if actual != expected_sha256.strip().lower():
            raise ChecksumMismatch(f"sha256 mismatch: expected {expected_sha256}, got {actual}")
    header = _parse_header(data)
    meta = _raw_metadata(header)
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as exc:  # the Rust parser raises SafetensorError and friends
        raise WeightsFormatError(f"not a safetensors file: {exc}") from exc
    for name, array in loaded.items():
        if array.dtype != np.float32:
            raise WeightsFormatError(f"parameter {name!r} has dtype {array.dtype}, expected F32")

    if ORDER_KEY in meta:
        try:
            order = json.loads(meta[ORDER_KEY])
        except json.JSONDecodeError as exc:
            raise WeightsFormatError(f"bad {ORDER_KEY} metadata: {exc}") from exc
        if not isinstance(order, list) or sorted(order) != sorted(loaded):
            raise WeightsFormatError(f"{ORDER_KEY} metadata does not match the stored tensors")
    else:  # written by another tool: fall back to header order
        order = [k for k in header if k != "__metadata__"]
    # np.array copies, so results are writable and independent of ``data``.
    return {name: np.array(loaded[name], dtype=np.float32) for name in order}


def save_weights(
    path: str | os.PathLike[str],
    weights: Weights,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write ``weights`` to ``path`` atomically and return the file's SHA-256 hex.

    The bytes go to a temporary file in the same directory, are fsynced, then
    ``os.replace``-d over ``path``: readers see the old file or the new one, never a
    partial write. The file is created with mode 0600 (weights can leak training data).
    """
    data = weights_to_bytes(weights, metadata)
    write_atomic(path, data)
    return sha256_hex(data)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a crash) see the old file or the new
    one, never half: a temporary file in the same directory (mode 0600, as mkstemp makes
    it), fsynced, then ``os.replace``-d over ``path``. The temporary file is removed on
    any failure. The one writer of the core's and the agent's files that must not tear."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_weights(path: str | os.PathLike[str], expected_sha256: str | None = None) -> Weights:
    """Read a file written by ``save_weights``; errors as in ``weights_from_bytes``."""
    return weights_from_bytes(Path(path).read_bytes(), expected_sha256)

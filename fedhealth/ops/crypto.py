"""Streamed authenticated encryption of backup archives (AES-256-GCM, in chunks).

A backup holds hosted sites' CSVs, so it can be encrypted with a key that lives
outside the archive (``FEDHEALTH_BACKUP_KEY``: 32 bytes, URL-safe base64). The stream is
cut into chunks of ``CHUNK`` bytes, each sealed on its own, so neither side ever holds
more than one chunk in memory. Each chunk's nonce is a random per-archive prefix plus the
chunk's counter and a "last chunk" flag (the STREAM construction of Hoang, Reyhanitabar,
Rogaway and Vizár, 2015): reordering, dropping, truncating or extending chunks fails
authentication, as does any altered byte of the header (authenticated as associated data).

Layout::

    MAGIC (8) | chunk size (4, big-endian) | nonce prefix (7) | chunk_0 | chunk_1 | ...
    chunk_i = AES-GCM(key, prefix | i (4, big-endian) | last (1), plaintext_i, header)
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"FHBKAES1"
CHUNK = 1024 * 1024
_TAG = 16
_PREFIX = 7
_HEADER = len(MAGIC) + 4 + _PREFIX


class BackupKeyError(Exception):
    """The key is missing or malformed, or does not open this archive."""


def is_encrypted(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def parse_key(value: str) -> bytes:
    """A 32-byte key from its URL-safe base64 text (``generate_key()`` makes one)."""
    try:
        key = base64.urlsafe_b64decode(value.strip().encode() + b"=" * (-len(value.strip()) % 4))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BackupKeyError(
            "FEDHEALTH_BACKUP_KEY must be 32 bytes in URL-safe base64 (44 characters), for example the "
            "output of: python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        )
    return key


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


class EncryptingWriter:
    """A write-only file object that encrypts everything written to it into ``raw``."""

    def __init__(self, raw: BinaryIO, key: bytes, chunk: int = CHUNK):
        self._raw, self._aead, self._chunk = raw, AESGCM(key), chunk
        self._prefix = os.urandom(_PREFIX)
        self._header = MAGIC + struct.pack(">I", chunk) + self._prefix
        raw.write(self._header)
        self._buffer = bytearray()
        self._counter = 0
        self.closed = False

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) > self._chunk:
            # Strictly more than a chunk buffered: this one is not the last.
            self._seal(bytes(self._buffer[: self._chunk]), last=False)
            del self._buffer[: self._chunk]
        return len(data)

    def _seal(self, plain: bytes, *, last: bool) -> None:
        if self._counter >= 2**32 - 1:
            raise ValueError("archive too large for one encrypted stream")
        self._raw.write(
            self._aead.encrypt(_nonce(self._prefix, self._counter, last), plain, self._header)
        )
        self._counter += 1

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        """Seal the final chunk (possibly empty): a stream without it is truncated."""
        if not self.closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self.closed = True
            self._raw.flush()


def decrypt_chunks(raw: BinaryIO, key: bytes) -> Iterator[bytes]:
    """The plaintext of an encrypted archive, chunk by chunk; raises BackupKeyError when
    the key is wrong or any byte was altered, dropped or added."""
    header = raw.read(_HEADER)
    if len(header) != _HEADER or not header.startswith(MAGIC):
        raise BackupKeyError("not an encrypted FedHealth backup")
    (chunk,) = struct.unpack(">I", header[len(MAGIC) : len(MAGIC) + 4])
    if not 0 < chunk <= 64 * CHUNK:
        raise BackupKeyError("the encrypted archive's header is damaged")
    prefix = header[len(MAGIC) + 4 :]
    aead = AESGCM(key)
    counter = 0
    current = raw.read(chunk + _TAG)
    while True:
        following = raw.read(chunk + _TAG)
        last = not following
        try:
            yield aead.decrypt(_nonce(prefix, counter, last), current, header)
        except InvalidTag:
            raise BackupKeyError(
                "the archive cannot be decrypted: the key (FEDHEALTH_BACKUP_KEY) is not the one it was "
                "written with, or the archive was altered or truncated"
            ) from None
        if last:
            return
        counter += 1
        current = following

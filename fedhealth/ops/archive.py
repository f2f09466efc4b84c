"""The backup archive: a plain tar file whose every byte is covered by a checksum.

Members, in order::

    data/<app_label>.<model>.json   rows, Django's JSON serializer (never pickle)
    files/<storage name>            every stored file, byte for byte
    manifest.json                   format, time, migrations, row counts, SHA-256 of every member
    SEAL.sha256                     SHA-256 of every archive byte before this member's header

The per-member checksums name what is damaged; the seal covers the rest (tar headers,
padding, the manifest itself), and the reader checks that nothing but zero padding
follows the seal. An archive with any altered byte is therefore refused. Standard tools
(``tar -tf``) can still list and extract an unencrypted archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

FORMAT = "fedhealth-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SEAL = "SEAL.sha256"
_COPY = 1024 * 1024


class ArchiveError(Exception):
    """The archive is damaged, incomplete or not a FedHealth backup."""


class _HashingWriter:
    """Passes writes through to ``raw`` and hashes them (tarfile writes sequentially)."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest, self.position = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.position += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.raw.flush()


class ArchiveWriter:
    """Writes members to a tar stream (which may be an EncryptingWriter); ``close``
    adds the manifest and the seal."""

    def __init__(self, raw: BinaryIO):
        self._out = _HashingWriter(raw)
        # Mode "w" (not the buffered stream mode "w|") writes straight through, so the
        # hash at any moment covers exactly the bytes written so far.
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed in close())
        self.members: dict[str, dict] = {}

    def add_bytes(self, name: str, data: bytes) -> str:
        return self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, stream: BinaryIO, size: int) -> str:
        """Copy ``size`` bytes of ``stream`` in as ``name``; returns their SHA-256."""
        digest = hashlib.sha256()

        class _Tee:
            def read(self, n=-1):
                chunk = stream.read(n)
                digest.update(chunk)
                return chunk

        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, int(time.time()), 0o600
        self._tar.addfile(info, _Tee())
        self.members[name] = {"sha256": digest.hexdigest(), "size": size}
        return digest.hexdigest()

    def close(self, manifest: dict) -> dict:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **manifest,
            "members": dict(sorted(self.members.items())),
        }
        self.add_bytes(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        seal = self._out.digest.hexdigest()
        info = tarfile.TarInfo(SEAL)
        data = (seal + "\n").encode()
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()
        return manifest


@dataclass
class Archive:
    """A verified, unencrypted archive on disk, open for reading."""

    path: Path
    manifest: dict
    _tar: tarfile.TarFile = field(repr=False)

    def open_member(self, name: str) -> BinaryIO:
        fh = self._tar.extractfile(name)
        if fh is None:
            raise ArchiveError(f"{name}: not a file in the archive")
        return fh

    def close(self) -> None:
        self._tar.close()


def open_verified(path: Path) -> Archive:
    """Open ``path`` after checking the seal, the manifest and every member's SHA-256.

    Raises ArchiveError naming the first problem found."""
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (the Archive returned owns it)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(
            f"{path} is not a readable backup archive ({exc.__class__.__name__})"
        ) from None
    try:
        infos = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        tar.close()
        raise ArchiveError(f"{path} is damaged or truncated ({exc.__class__.__name__})") from None
    try:
        by_name = {i.name: i for i in infos}
        if len(by_name) != len(infos):
            raise ArchiveError("the archive holds a member twice")
        if not infos or infos[-1].name != SEAL or MANIFEST not in by_name:
            raise ArchiveError(
                "the archive is incomplete: no manifest or seal at its end (interrupted backup?)"
            )
        _check_seal(path, infos[-1], tar)
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        if manifest.get("format") != FORMAT:
            raise ArchiveError("not a FedHealth backup (manifest format)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(
                f"backup format version {manifest.get('format_version')} is not supported here"
            )
        expected = manifest["members"]
        present = set(by_name) - {MANIFEST, SEAL}
        if present != set(expected):
            missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
            raise ArchiveError(
                f"members differ from the manifest: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, meta in expected.items():
            digest = hashlib.sha256()
            fh = tar.extractfile(name)
            while chunk := fh.read(_COPY):
                digest.update(chunk)
            if digest.hexdigest() != meta["sha256"] or by_name[name].size != meta["size"]:
                raise ArchiveError(f"{name}: SHA-256 does not match the manifest")
    except ArchiveError:
        tar.close()
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as exc:
        tar.close()
        raise ArchiveError(f"the archive is damaged ({exc.__class__.__name__})") from None
    return Archive(Path(path), manifest, tar)


def _check_seal(path: Path, seal: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = seal.offset
        while remaining:
            chunk = fh.read(min(_COPY, remaining))
            if not chunk:
                raise ArchiveError("the archive is truncated")
            digest.update(chunk)
            remaining -= len(chunk)
        fh.seek(seal.offset_data + seal.size)
        # After the seal's data: padding and the end-of-archive blocks, all zeros.
        while chunk := fh.read(_COPY):
            if chunk.count(0) != len(chunk):
                raise ArchiveError("the archive was altered after its seal")
    recorded = tar.extractfile(seal).read().decode("ascii", "replace").strip()
    if recorded != digest.hexdigest():
        raise ArchiveError("the archive's seal does not match its contents: it was altered")

"""Full backups: every row of the project's apps and auth users, every stored file.

``create_backup`` takes the rows in one read transaction (REPEATABLE READ on PostgreSQL,
a WAL read transaction on SQLite), so the rows are one consistent moment of the
platform even while rounds run. Files are written before the rows that point at them
(docs/architecture.md, "Files before rows"), so every file a snapshot row references
already existed when the snapshot was taken: those are copied after it and checked
against the SHA-256 the rows record. A round being aggregated during the backup is
either wholly in the snapshot (its version row and file) or not at all (its file at
most, as an unreferenced file). Other stored files (logs, strategy state, orphans) are
copied as found.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from fedhealth.uploads import staging_root

from . import crypto
from .archive import ArchiveWriter
from .status import STATUS_PREFIX, record_backup

# Apps whose every table is backed up, plus auth's users and groups. Sessions, admin
# log, django-axes' lock-outs and content types are not: they are rebuilt or expire.
PROJECT_APPS = ("clients", "aggregation", "fedhealth")
EXTRA_MODELS = ("auth.Group", "auth.User")

# Storage names held in rows, with the field holding their SHA-256 (None: unrecorded).
FILE_REFERENCES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "clients.Dataset": (("file", "sha256"),),
    "aggregation.Experiment": (
        ("initial_weights", "initial_sha256"),
        ("strategy_state_file", None),
    ),
    "aggregation.ClientUpdate": (("weights_file", "sha256"),),
    "aggregation.ModelVersion": (("weights_file", "sha256"),),
}
_COPY = 1024 * 1024


class BackupError(Exception):
    """The backup could not be completed (a file a row references is missing or changed)."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    rows: int
    files: int
    bytes: int
    encrypted: bool


def backed_up_models() -> list:
    """Concrete models to back up, in an order where dependencies come first."""
    models = [
        m
        for label in PROJECT_APPS
        if label in apps.app_configs
        for m in apps.get_app_config(label).get_models()
    ]
    models += [apps.get_model(label) for label in EXTRA_MODELS]
    models = [m for m in models if m._meta.managed and not m._meta.proxy]
    # Foreign keys first (Django's sort_dependencies orders natural keys only). Wiping in
    # the reverse order never meets a PROTECT; loading needs no order (constraint
    # checks are deferred), but this one reads well in a manifest.
    remaining = list(models)
    ordered: list = []
    while remaining:
        ready = [
            m
            for m in remaining
            if not any(
                f.related_model in remaining and f.related_model is not m
                for f in m._meta.get_fields()
                if f.many_to_one or f.one_to_one and f.concrete
            )
        ]
        ready = ready or remaining[:1]  # a cycle (none today): break it in listing order
        ordered += ready
        remaining = [m for m in remaining if m not in ready]
    return ordered


@contextmanager
def snapshot() -> Iterator[None]:
    """One consistent read of the database for the duration of the block."""
    if connection.in_atomic_block:
        # Already inside a transaction (a test, or a caller's own): read in it.
        yield
        return
    if connection.vendor == "sqlite":
        # Django's atomic() starts "BEGIN IMMEDIATE" here (settings), which takes the
        # write lock and would stall every worker for the whole backup. A deferred
        # BEGIN becomes a WAL read transaction at the first SELECT: a snapshot that
        # writers do not wait for.
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _excluded_prefixes() -> list[str]:
    excluded = [STATUS_PREFIX]
    media = Path(settings.MEDIA_ROOT).resolve()
    staging = staging_root().resolve()
    if staging.is_relative_to(media):
        excluded.append(staging.relative_to(media).as_posix().rstrip("/") + "/")
    return excluded


def stored_files(storage=None) -> list[str]:
    """Every file name in the storage, except upload staging and the backup status."""
    storage = storage or default_storage
    excluded = _excluded_prefixes()
    names: list[str] = []

    def walk(folder: str) -> None:
        try:
            dirs, files = storage.listdir(folder)
        except FileNotFoundError:
            return
        for name in files:
            names.append(f"{folder}/{name}" if folder else name)
        for d in dirs:
            sub = f"{folder}/{d}" if folder else d
            if not any((sub + "/").startswith(p) for p in excluded):
                walk(sub)

    walk("")
    return sorted(n for n in names if not any(n.startswith(p) for p in excluded))


def _work_dir(near: Path) -> Path:
    """A private (0700) folder for temporary copies of rows and decrypted archives:
    FEDHEALTH_BACKUP_WORK_DIR, or beside the archive; never the system temp folder
    (a decrypted archive holds patient rows)."""
    root = Path(settings.FEDHEALTH_BACKUP_WORK_DIR or near)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".fedhealth-backup-", dir=root))


def create_backup(out: Path, *, key: bytes | None = None) -> BackupSummary:
    """Write a full backup archive to ``out`` (encrypted when ``key`` is given)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    work = _work_dir(out.parent)
    try:
        with open(partial, "wb") as raw:
            os.chmod(partial, 0o600)
            sink = crypto.EncryptingWriter(raw, key) if key else raw
            writer = ArchiveWriter(sink)
            manifest = _write(writer, work)
            if key:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        # Only a complete archive gets the final name: an interrupted backup never
        # looks like a good one.
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
    rows = sum(manifest["rows"].values())
    size = out.stat().st_size
    record_backup(
        archive=str(out), size=size, encrypted=bool(key), rows=rows, files=len(manifest["files"])
    )
    return BackupSummary(out, rows, len(manifest["files"]), size, bool(key))


class ExactJSONEncoder(DjangoJSONEncoder):
    """Django's encoder cuts datetimes to milliseconds; a backup must give back the
    microseconds it was given (a restored row equals the original, to the digit)."""

    def default(self, o):
        if isinstance(o, (datetime.datetime, datetime.time)):
            text = o.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return super().default(o)


def _write(writer: ArchiveWriter, work: Path) -> dict:
    models = backed_up_models()
    rows: dict[str, int] = {}
    referenced: dict[str, str | None] = {}
    with snapshot():
        applied = sorted(
            f"{app}.{name}" for app, name in MigrationRecorder(connection).applied_migrations()
        )
        for model in models:
            label = model._meta.label
            queryset = model._default_manager.order_by("pk")
            with tempfile.TemporaryFile(dir=work) as spool:
                serializers.serialize(
                    "json",
                    queryset.iterator(chunk_size=500),
                    stream=_TextSink(spool),
                    use_natural_foreign_keys=True,
                    cls=ExactJSONEncoder,
                )
                rows[label] = queryset.count()  # same snapshot as the rows written
                size = spool.tell()
                spool.seek(0)
                writer.add_stream(f"data/{label}.json", spool, size)
            for name_field, sha_field in FILE_REFERENCES.get(label, ()):
                values = [name_field] + ([sha_field] if sha_field else [])
                for row in queryset.exclude(**{name_field: ""}).values_list(*values):
                    referenced[str(row[0])] = row[1] if sha_field else None
    files: dict[str, dict] = {}
    for name in sorted(referenced):
        files[name] = _copy_file(writer, name, referenced[name], required=True)
    for name in stored_files():
        if name not in files:
            entry = _copy_file(writer, name, None, required=False)
            if entry:
                files[name] = entry
    return writer.close(
        {
            "created_at": timezone.now().isoformat(),
            "database": connection.vendor,
            "migrations": applied,
            "models": [m._meta.label for m in models],
            "rows": rows,
            "files": files,
            "referenced_files": sorted(referenced),
        }
    )


class _TextSink:
    """The JSON serializer writes text; the archive wants bytes."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, text: str) -> None:
        self.raw.write(text.encode())


def _copy_file(
    writer: ArchiveWriter, name: str, sha256: str | None, *, required: bool
) -> dict | None:
    try:
        size = default_storage.size(name)
        with default_storage.open(name, "rb") as fh:
            digest = writer.add_stream(f"files/{name}", fh, size)
    except (FileNotFoundError, OSError) as exc:
        if not required:
            return None  # removed since it was listed (a staged or replaced file)
        raise BackupError(
            f"{name} is referenced by the database but could not be read ({exc.__class__.__name__})"
        ) from None
    if sha256 and digest != sha256:
        raise BackupError(f"{name}: stored file does not match the SHA-256 its row records")
    return {"sha256": digest, "size": size, "member": f"files/{name}"}


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY):
            digest.update(chunk)
    return digest.hexdigest()


def read_key(required: bool) -> bytes | None:
    """The backup key from FEDHEALTH_BACKUP_KEY (or the file FEDHEALTH_BACKUP_KEY_FILE names)."""
    value = os.environ.get("FEDHEALTH_BACKUP_KEY", "")
    key_file = os.environ.get("FEDHEALTH_BACKUP_KEY_FILE", "")
    if not value and key_file:
        try:
            value = Path(key_file).read_text().strip()
        except OSError:
            raise crypto.BackupKeyError(
                f"FEDHEALTH_BACKUP_KEY_FILE={key_file!r} cannot be read"
            ) from None
    if not value:
        if required:
            raise crypto.BackupKeyError(
                "the archive is encrypted (or --encrypt was given) but FEDHEALTH_BACKUP_KEY is not set: "
                "set it (or FEDHEALTH_BACKUP_KEY_FILE) to the backup key"
            )
        return None
    return crypto.parse_key(value)

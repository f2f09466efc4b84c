"""Verify a backup archive, and restore one into an empty instance (SQLite or PostgreSQL,
whichever took it).

Order of a restore: verify every byte (an altered archive changes nothing); refuse a
non-empty instance unless forced, and a backup from a newer version; migrate the
database to this version's schema; write the files (files before rows, as everywhere
in this codebase); load the rows in one transaction; reset the primary-key sequences.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.apps import apps
from django.core import serializers
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from . import crypto
from .archive import Archive, ArchiveError, open_verified
from .backup import _work_dir, read_key, stored_files

_COPY = 1024 * 1024


class RestoreError(Exception):
    """The instance is not one this archive may be restored into."""


@dataclass(frozen=True)
class RestoreSummary:
    rows: int
    files: int
    created_at: str
    database: str


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    """The verified archive at ``path``; an encrypted one is decrypted (with the key from
    the environment) into a private work folder first and removed afterwards."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive")
    work = None
    try:
        if crypto.is_encrypted(path):
            key = read_key(required=True)
            work = _work_dir(path.parent)
            plain = work / "archive.tar"
            with open(path, "rb") as raw, open(plain, "wb") as out:
                for chunk in crypto.decrypt_chunks(raw, key):
                    out.write(chunk)
            archive = open_verified(plain)
        else:
            archive = open_verified(path)
        try:
            yield archive
        finally:
            archive.close()
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def verify_archive(path: Path) -> dict:
    """The manifest of a sound archive; raises ArchiveError or BackupKeyError otherwise."""
    with open_archive(path) as archive:
        return archive.manifest


def _models(manifest: dict) -> list:
    try:
        return [apps.get_model(label) for label in manifest["models"]]
    except LookupError as exc:
        raise RestoreError(f"the backup holds a model this version does not have ({exc})") from None


def _check_migrations(manifest: dict) -> None:
    """Refuse a backup taken by a newer version: its rows may need columns this code
    does not have. An older backup is fine: its rows load into this code's schema, and
    fields added since take their defaults."""
    graph = MigrationExecutor(connection).loader.graph
    applied = {tuple(name.split(".", 1)) for name in manifest["migrations"]}
    unknown = sorted(".".join(node) for node in applied if node not in graph.nodes)
    if unknown:
        raise RestoreError(
            "the backup was taken by a newer FedHealth (migrations unknown here: "
            + ", ".join(unknown[:5])
            + "); restore it with that version or later"
        )


def instance_contents(models: list) -> list[str]:
    """What this instance already holds (row counts and stored files), empty if nothing."""
    found = []
    tables = set(connection.introspection.table_names())
    for model in models:
        if model._meta.db_table in tables and (n := model._default_manager.count()):
            found.append(f"{n} {model._meta.label} rows")
    if files := stored_files():
        found.append(f"{len(files)} stored files")
    return found


def restore_backup(
    path: Path, *, force: bool = False, log: Callable[[str], None] = lambda _: None
) -> RestoreSummary:
    with open_archive(path) as archive:
        manifest = archive.manifest
        models = _models(manifest)
        existing = instance_contents(models)
        if existing and not force:
            raise RestoreError(
                "this instance is not empty ("
                + ", ".join(existing[:4])
                + "); restore into an empty "
                "database and storage, or pass --force to replace everything in it"
            )
        _check_migrations(manifest)
        # The rows are loaded with this code's models, so into this code's schema (an
        # empty database is created here). migrate also makes the content types and
        # permissions that users' permissions load by natural key.
        log("migrating the database to this version's schema")
        call_command("migrate", interactive=False, verbosity=0)
        if existing:
            log("--force: removing this instance's rows and files")
            _wipe(models)
        log(f"writing {len(manifest['files'])} files")
        for name, meta in manifest["files"].items():
            _write_file(archive, meta["member"], name)
        log(f"loading {sum(manifest['rows'].values())} rows")
        _load_rows(archive, models)
    return RestoreSummary(
        sum(manifest["rows"].values()),
        len(manifest["files"]),
        manifest["created_at"],
        manifest["database"],
    )


def _wipe(models: list) -> None:
    with transaction.atomic():
        for model in reversed(models):
            model._base_manager.all().delete()
    for name in stored_files():
        default_storage.delete(name)


def _write_file(archive: Archive, member: str, name: str) -> None:
    if default_storage.exists(name):
        default_storage.delete(name)
    with archive.open_member(member) as fh:
        saved = default_storage.save(name, fh)
    if saved != name:
        raise RestoreError(f"{name} could not be written at its own name (storage chose {saved})")


def _load_rows(archive: Archive, models: list) -> None:
    """Load every model's rows as ``loaddata`` does (raw saves, forward references
    resolved at the end), in one transaction, then reset the id sequences so new rows
    do not collide with restored ones (PostgreSQL; SQLite needs nothing)."""
    with transaction.atomic(using=DEFAULT_DB_ALIAS):
        with connection.constraint_checks_disabled():
            deferred = []
            for model in models:
                with archive.open_member(f"data/{model._meta.label}.json") as fh:
                    for obj in serializers.deserialize("json", fh, handle_forward_references=True):
                        obj.save()
                        if obj.deferred_fields:
                            deferred.append(obj)
            for obj in deferred:
                obj.save_deferred_fields()
        connection.check_constraints(table_names=[m._meta.db_table for m in models])
        statements = connection.ops.sequence_reset_sql(no_style(), models)
        if statements:
            with connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)

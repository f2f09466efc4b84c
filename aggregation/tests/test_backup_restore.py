"""Full backup and restore (fedhealth/ops): every row and file comes back, checksums
hold, a model predicts the same, a paused experiment finishes after a restore; altered,
truncated or keyless archives are refused before anything changes."""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from aggregation import services
from aggregation.models import Experiment, ModelVersion
from aggregation.services.predict import predict_records
from fedhealth.ops import crypto
from fedhealth.ops.status import last_backup

from .backup_world import RECORDS, build_world, describe_files, describe_rows, wipe

pytestmark = pytest.mark.django_db

KEY = crypto.generate_key()


@pytest.fixture
def world(make_site, make_dataset, make_experiment, make_user, drive):
    return build_world(make_site, make_dataset, make_experiment, make_user, drive)


def _predictions(experiment: Experiment) -> list[float]:
    version = ModelVersion.objects.filter(experiment=experiment).latest("version")
    result = predict_records(version, RECORDS)
    assert result.ok
    return result.probabilities


def test_backup_wipe_restore_brings_everything_back(world, tmp_path, drive):
    finished, paused = world
    rows, files, predictions = describe_rows(), describe_files(), _predictions(finished)
    assert rows["clients.Dataset"] and rows["aggregation.ModelVersion"] and rows["auth.User"]
    assert any(name.startswith("datasets/") for name in files) and any(
        n.endswith("log.jsonl") for n in files
    )
    archive = tmp_path / "bk" / "full.tar"

    call_command("backup", "--out", str(archive), verbosity=0)
    call_command("backup", "--verify", str(archive), verbosity=0)
    wipe()
    assert describe_rows()["aggregation.Experiment"] == [] and describe_files() == {}
    call_command("restore", str(archive), verbosity=0)

    assert describe_rows() == rows
    assert describe_files() == files
    assert _predictions(finished) == predictions
    # The paused experiment picks up where it stopped and finishes.
    assert Experiment.objects.get(pk=paused.pk).status == Experiment.Status.PAUSED
    services.resume_experiment(paused.pk)
    done = drive(paused.pk)
    assert done.status == Experiment.Status.COMPLETED
    assert sorted(done.versions.values_list("version", flat=True)) == [1, 2, 3]
    status = last_backup()
    assert status["archive"] == str(archive) and not status["encrypted"]


def test_timestamps_come_back_to_the_microsecond(make_site, tmp_path):
    """Django's JSON encoder keeps milliseconds only: a row written at .000123 s came
    back as .000 (seen on PostgreSQL, where timestamps carry microseconds)."""
    import datetime

    from clients.models import Site

    site = make_site("exact")
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5, 123, tzinfo=datetime.UTC)
    Site.objects.filter(pk=site.pk).update(created_at=stamp)
    archive = tmp_path / "exact.tar"

    call_command("backup", "--out", str(archive), verbosity=0)
    wipe()
    call_command("restore", str(archive), verbosity=0)

    assert Site.objects.get(pk=site.pk).created_at == stamp


def test_restore_refuses_a_non_empty_instance_unless_forced(world, tmp_path):
    archive = tmp_path / "full.tar"
    call_command("backup", "--out", str(archive), verbosity=0)
    rows = describe_rows()
    with pytest.raises(CommandError, match="not empty"):
        call_command("restore", str(archive), verbosity=0)

    Experiment.objects.filter(name="finished").update(name="changed after the backup")
    default_storage.save("updates/stray.bin", io.BytesIO(b"x"))
    call_command("restore", "--force", str(archive), verbosity=0)
    assert describe_rows() == rows
    assert not default_storage.exists("updates/stray.bin")


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# One sound archive for the altered-byte cases: the database is rolled back and storage
# is fresh after each test, so every case restores into an empty instance.
_SOUND: dict[str, bytes] = {}


@pytest.fixture
def sound_archive(request, tmp_path):
    if "bytes" not in _SOUND:
        request.getfixturevalue("world")
        call_command("backup", "--out", str(tmp_path / "sound.tar"), verbosity=0)
        _SOUND["bytes"] = (tmp_path / "sound.tar").read_bytes()
        wipe()
    return _SOUND["bytes"]


@pytest.mark.parametrize("where", ["data", "file", "header", "manifest", "seal", "padding"])
def test_one_altered_byte_is_refused_by_verify_and_restore(sound_archive, tmp_path, where):
    import tarfile

    archive = tmp_path / "full.tar"
    archive.write_bytes(sound_archive)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    by = {
        "data": next(m for m in members if m.name.startswith("data/clients.Dataset")).offset_data
        + 5,
        "file": next(m for m in members if m.name.startswith("files/datasets/")).offset_data + 40,
        "header": next(m for m in members if m.name.startswith("files/models/")).offset + 140,
        "manifest": next(m for m in members if m.name == "manifest.json").offset_data + 30,
        "seal": members[-1].offset_data + 3,
        "padding": archive.stat().st_size - 10,
    }
    _flip(archive, by[where])

    with pytest.raises(CommandError, match="refused"):
        call_command("backup", "--verify", str(archive), verbosity=0)
    with pytest.raises(CommandError, match="was not restored"):
        call_command("restore", str(archive), verbosity=0)
    assert describe_rows()["aggregation.Experiment"] == [] and describe_files() == {}


def test_the_unaltered_archive_restores(sound_archive, tmp_path):
    """The control for the cases above: the same bytes, unaltered, restore."""
    archive = tmp_path / "full.tar"
    archive.write_bytes(sound_archive)
    call_command("restore", str(archive), verbosity=0)
    assert len(describe_rows()["aggregation.ModelVersion"]) == 3


def test_a_truncated_archive_is_refused(world, tmp_path):
    archive = tmp_path / "full.tar"
    call_command("backup", "--out", str(archive), verbosity=0)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CommandError, match="refused"):
        call_command("restore", "--verify", str(archive), verbosity=0)


def test_encrypted_backup_needs_its_key(world, tmp_path, monkeypatch):
    finished, _ = world
    rows, files = describe_rows(), describe_files()
    archive = tmp_path / "full.tar.enc"
    monkeypatch.delenv("FEDHEALTH_BACKUP_KEY", raising=False)
    with pytest.raises(CommandError, match="FEDHEALTH_BACKUP_KEY is not set"):
        call_command("backup", "--out", str(archive), "--encrypt", verbosity=0)

    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", KEY)
    call_command("backup", "--out", str(archive), "--encrypt", verbosity=0)
    raw = archive.read_bytes()
    dataset = finished.participants.first().dataset
    with default_storage.open(dataset.file.name, "rb") as fh:
        csv_line = fh.read().splitlines()[3]
    assert raw.startswith(crypto.MAGIC) and csv_line not in raw and b"manifest.json" not in raw
    assert last_backup()["encrypted"]

    monkeypatch.delenv("FEDHEALTH_BACKUP_KEY")
    with pytest.raises(CommandError, match="encrypted.*FEDHEALTH_BACKUP_KEY is not set"):
        call_command("restore", "--verify", str(archive), verbosity=0)
    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", crypto.generate_key())
    with pytest.raises(CommandError, match="key .* is not the one it was written with"):
        call_command("restore", "--verify", str(archive), verbosity=0)
    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", "too-short")
    with pytest.raises(CommandError, match="32 bytes"):
        call_command("restore", "--verify", str(archive), verbosity=0)

    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", KEY)
    call_command("restore", "--verify", str(archive), verbosity=0)
    wipe()
    call_command("restore", str(archive), verbosity=0)
    assert describe_rows() == rows and describe_files() == files
    # No decrypted copy is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tar.enc", "media"]


def test_an_altered_encrypted_archive_is_refused(world, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHEALTH_BACKUP_KEY", KEY)
    archive = tmp_path / "full.tar.enc"
    call_command("backup", "--out", str(archive), "--encrypt", verbosity=0)
    size = archive.stat().st_size
    for offset in (10, size // 2, size - 1):
        copy = tmp_path / f"altered-{offset}.enc"
        copy.write_bytes(archive.read_bytes())
        _flip(copy, offset)
        with pytest.raises(CommandError, match="refused"):
            call_command("backup", "--verify", str(copy), verbosity=0)
    truncated = tmp_path / "truncated.enc"
    truncated.write_bytes(archive.read_bytes()[:-17])
    with pytest.raises(CommandError, match="refused"):
        call_command("backup", "--verify", str(truncated), verbosity=0)


def test_a_missing_referenced_file_fails_the_backup(world, tmp_path):
    finished, _ = world
    default_storage.delete(finished.versions.get(version=1).weights_file)
    with pytest.raises(CommandError, match="referenced by the database"):
        call_command("backup", "--out", str(tmp_path / "full.tar"), verbosity=0)
    assert not (tmp_path / "full.tar").exists() and not (tmp_path / "full.tar.partial").exists()


def test_a_changed_referenced_file_fails_the_backup(world, tmp_path):
    finished, _ = world
    name = finished.versions.get(version=2).weights_file
    default_storage.delete(name)
    default_storage.save(name, io.BytesIO(b"not the weights"))
    with pytest.raises(CommandError, match="does not match the SHA-256"):
        call_command("backup", "--out", str(tmp_path / "full.tar"), verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_the_snapshot_is_one_moment_and_does_not_stall_writers():
    """Rows written by another connection while a backup reads are not in its snapshot,
    and that writer is not kept waiting (SQLite: a WAL read transaction, not BEGIN
    IMMEDIATE; PostgreSQL: REPEATABLE READ)."""
    import threading
    import time

    from clients.models import Site
    from fedhealth.ops.backup import snapshot

    Site.objects.create(name="Before", slug="before")
    done = threading.Event()

    def write_elsewhere():
        from django.db import connection as own

        try:
            Site.objects.create(name="During", slug="during")
        finally:
            own.close()
            done.set()

    with snapshot():
        assert list(Site.objects.values_list("slug", flat=True)) == ["before"]
        started = time.monotonic()
        writer = threading.Thread(target=write_elsewhere)
        writer.start()
        assert done.wait(10) and time.monotonic() - started < 5
        writer.join()
        assert list(Site.objects.values_list("slug", flat=True)) == ["before"]
    assert sorted(Site.objects.values_list("slug", flat=True)) == ["before", "during"]


def _repack(source, target, change) -> None:
    """A correctly sealed copy of ``source`` whose manifest ``change`` edited."""
    from fedhealth.ops.archive import ArchiveWriter, open_verified

    archive = open_verified(source)
    try:
        with open(target, "wb") as raw:
            writer = ArchiveWriter(raw)
            for name, meta in archive.manifest["members"].items():
                writer.add_stream(name, archive.open_member(name), meta["size"])
            manifest = {
                k: v
                for k, v in archive.manifest.items()
                if k not in ("format", "format_version", "members")
            }
            change(manifest)
            writer.close(manifest)
    finally:
        archive.close()


def test_a_backup_from_a_newer_version_is_refused(world, tmp_path):
    archive, newer = tmp_path / "full.tar", tmp_path / "newer.tar"
    call_command("backup", "--out", str(archive), verbosity=0)
    _repack(archive, newer, lambda m: m["migrations"].append("aggregation.9999_from_the_future"))
    call_command("backup", "--verify", str(newer), verbosity=0)  # sound, just not for this code
    wipe()
    with pytest.raises(CommandError, match="newer FedHealth .*aggregation.9999_from_the_future"):
        call_command("restore", str(newer), verbosity=0)
    assert describe_rows()["aggregation.Experiment"] == [] and describe_files() == {}


def test_a_backup_from_an_older_version_restores_with_defaults(world, tmp_path):
    """A backup taken before a migration that added a field: its rows load into this
    version's schema and the field takes its default."""
    import json as _json

    archive, older = tmp_path / "full.tar", tmp_path / "older.tar"
    call_command("backup", "--out", str(archive), verbosity=0)
    rows = describe_rows()
    from fedhealth.ops.archive import ArchiveWriter, open_verified

    source = open_verified(archive)
    try:
        with open(older, "wb") as raw:
            writer = ArchiveWriter(raw)
            for name in source.manifest["members"]:
                data = source.open_member(name).read()
                if name == "data/aggregation.Round.json":
                    old_rows = _json.loads(data)
                    for row in old_rows:
                        row["fields"].pop("aggregation_started_at")
                    data = _json.dumps(old_rows).encode()
                writer.add_bytes(name, data)
            manifest = {
                k: v
                for k, v in source.manifest.items()
                if k not in ("format", "format_version", "members")
            }
            manifest["migrations"].remove("aggregation.0003_round_aggregation_started_at")
            writer.close(manifest)
    finally:
        source.close()
    wipe()

    call_command("restore", str(older), verbosity=0)
    restored = describe_rows()
    assert all(r["fields"]["aggregation_started_at"] is None for r in restored["aggregation.Round"])
    for row in rows["aggregation.Round"]:
        row["fields"]["aggregation_started_at"] = None
    assert restored == rows

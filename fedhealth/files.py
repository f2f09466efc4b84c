"""Storage helpers over Django's storage API (local disk, or S3 via django-storages).

Django's ``Storage.save`` never overwrites: it picks another name. Model versions,
logs and strategy state have fixed names, so these helpers replace the file instead.
"""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import Storage, default_storage


def write_bytes(name: str, data: bytes, storage: Storage | None = None) -> str:
    """Write ``data`` at exactly ``name``, replacing any earlier file there."""
    storage = storage or default_storage
    if storage.exists(name):
        storage.delete(name)
    saved = storage.save(name, ContentFile(data))
    if saved != name:  # a concurrent writer took the name between delete and save
        storage.delete(saved)
        raise FileExistsError(f"{name} was written concurrently")
    return saved


def read_bytes(name: str, storage: Storage | None = None) -> bytes:
    storage = storage or default_storage
    with storage.open(name, "rb") as fh:
        return fh.read()


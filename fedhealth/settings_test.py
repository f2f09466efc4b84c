"""Settings for the test suite: the production module with test-only secrets and speed-ups."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}

# Unit tests queue tasks on commit but run no worker: keep those messages in memory
# rather than in the repository's var/broker, where a later `make run` would find them.
# Integration tests pass CELERY_BROKER_URL to their workers explicitly.
if "CELERY_BROKER_URL" not in os.environ:
    CELERY_BROKER_URL = "memory://"

# Integration tests start Celery workers in other processes; they must reach the same
# test database, so SQLite's test database is a file rather than in memory.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test-db.sqlite3")}  # noqa: F405

"""Settings for the test suite: the production module with test-only secrets and speed-ups."""

import os

# 50+ characters, as the production settings require outside DEBUG.
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-0123456789abcdef")
# A developer's .env (written by `make run`, DEBUG=1) must not change what the suite
# tests; child processes started by tests inherit this too.
os.environ.setdefault("ENV_FILE", "")
# Readable log lines in test output (production defaults to JSON lines; tests of the
# JSON format set LOG_FORMAT=json in their own processes). Children inherit it.
os.environ.setdefault("LOG_FORMAT", "plain")

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
    # One file per test run (children get its path through DATABASE_URL), so two runs
    # on one machine never write to the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")}  # noqa: F405

# Throttle counters and the failed-authentication limit live in the cache: an
# in-process one, cleared by the API tests' fixtures between tests.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests"}}

# The test client speaks plain HTTP; the production default would redirect every
# request to HTTPS (tests of the deploy settings run them in a subprocess).
SECURE_SSL_REDIRECT = False

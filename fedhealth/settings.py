"""Django settings for FedHealth, read from the environment.

Every variable is documented in `.env.example`. django-environ parses the values and
raises ImproperlyConfigured on a malformed one, so a bad deployment fails at start-up
rather than at the first request.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# `make run` writes .env (DEBUG=1 and a generated key) for local use; variables already
# in the environment win. ENV_FILE names another file, or none when empty: the test
# settings set it empty so a developer's .env cannot change what the suite tests.
_ENV_FILE = env.str("ENV_FILE", default=str(BASE_DIR / ".env"))
if _ENV_FILE:
    environ.Env.read_env(_ENV_FILE, overwrite=False)

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
# Only DEBUG may run on this key; outside DEBUG a real one is required (below).
_DEV_SECRET = "dev-only-insecure-key-change-me"
# Django signs sessions, CSRF tokens and password-reset links with the key; Django's own
# deploy check (security.W009) asks for 50+ characters, 5+ distinct, no default prefix.
SECRET_KEY_MIN_LENGTH = 50


def secret_key_problem(value: str) -> str | None:
    """Why ``value`` is not a usable production SECRET_KEY, or None when it is."""
    if not value.strip():
        return "is empty"
    if value.startswith("django-insecure") or value == _DEV_SECRET:
        return "is a development default"
    if len(value) < SECRET_KEY_MIN_LENGTH:
        return f"has {len(value)} characters; at least {SECRET_KEY_MIN_LENGTH} are needed"
    if len(set(value)) < 5:
        return "has fewer than 5 distinct characters"
    return None


SECRET_KEY = env.str("SECRET_KEY", default="")
if DEBUG and not SECRET_KEY:
    SECRET_KEY = _DEV_SECRET
elif not DEBUG and (_problem := secret_key_problem(SECRET_KEY)):
    # Refused at start-up, not at the first request: an empty key passes `check` and
    # then every request fails.
    raise ImproperlyConfigured(
        f"SECRET_KEY {_problem}. Outside DEBUG set SECRET_KEY to a random string of "
        f"{SECRET_KEY_MIN_LENGTH}+ characters, for example the output of: "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'  "
        "(for local development, `make run` writes a .env with DEBUG=1 and a generated key)"
    )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
TIME_ZONE = "UTC"
USE_TZ = True
LANGUAGE_CODE = "en-gb"
USE_I18N = True

# APPS
# ------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "fedhealth",
    "clients",
    "aggregation",
    "audit",
]

MIDDLEWARE = [
    # First: a request id for the logs and X-Request-ID, request metrics (fedhealth/ops).
    "fedhealth.ops.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who and from where, for the audit trail (audit/middleware.py).
    "audit.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Content-Security-Policy outside DEBUG (policy under SECURITY below).
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes requires: it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fedhealth.urls"
WSGI_APPLICATION = "fedhealth.wsgi.application"
ASGI_APPLICATION = "fedhealth.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASES
# ------------------------------------------------------------------------------
# SQLite is the embedded default so a fresh machine needs no server; PostgreSQL in
# docker-compose, CI and production (DATABASE_URL=postgres://...).
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'federated_learning.db'}")
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Keep each thread's connection between requests (seconds; 0 = a new one per request).
# Opening one cost ~1.5 ms CPU per request on SQLite (connect, PRAGMAs) and closing the
# last one checkpoints the WAL; on PostgreSQL it is a TCP and authentication round trip.
# Health checks replace a connection that broke while idle (a database restart).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker processes write concurrently; WAL + a busy timeout turn SQLite's
    # "database is locked" errors into short waits. synchronous=NORMAL is WAL's
    # recommended pairing: still crash-safe (no corruption), it skips an fsync per
    # commit, which a round makes dozens of.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )

# CACHES
# ------------------------------------------------------------------------------
# Throttles and the failed-authentication limit count in the cache. Several web
# processes must share one count, or an address gets the limit once per process:
# docker-compose points CACHE_URL at Redis. Unset: a per-process memory cache (one
# process, e.g. `make run`).
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://fedhealth")}

# STORAGE
# ------------------------------------------------------------------------------
# Datasets, model weights and experiment logs go through Django's storage API, so
# setting STORAGE_BACKEND=s3 (django-storages) moves them to S3 without code changes.
MEDIA_ROOT = env.str("MEDIA_ROOT", default=str(BASE_DIR / "var" / "media"))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "var" / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
_storage_backend = env.str("STORAGE_BACKEND", default="filesystem")
if _storage_backend == "s3":
    # django-storages over boto3; credentials as boto3 reads them (AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY, or an instance role). A self-hosted S3 (MinIO, Ceph, Garage)
    # needs AWS_S3_ENDPOINT_URL. Objects are private and encrypted at rest by the server
    # (AWS_S3_SSE: AES256 by default, or aws:kms with AWS_S3_SSE_KMS_KEY_ID; "none" only
    # for a server that cannot). Nothing links to the bucket: every download streams
    # through the app's views after their permission checks, so querystring_auth (signed
    # URLs) is never handed out.
    _sse = env.str("AWS_S3_SSE", default="AES256")
    if _sse not in ("AES256", "aws:kms", "none"):
        raise ImproperlyConfigured(f"AWS_S3_SSE must be AES256, aws:kms or none, not {_sse!r}")
    _object_parameters = {} if _sse == "none" else {"ServerSideEncryption": _sse}
    if _sse == "aws:kms" and (_kms_key := env.str("AWS_S3_SSE_KMS_KEY_ID", default="")):
        _object_parameters["SSEKMSKeyId"] = _kms_key
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            # A key prefix inside the bucket (empty: the bucket's root); sites' CSVs are
            # under <location>/datasets/<site>/.
            "location": env.str("AWS_LOCATION", default=""),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "default_acl": None,
            "querystring_auth": True,
            "object_parameters": _object_parameters,
            # Fixed names (versions, logs) are replaced through fedhealth.files, which
            # checks the name it got; never overwrite silently.
            "file_overwrite": False,
            # Path-style addressing for self-hosted servers without wildcard DNS.
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="") or None,
        },
    }
elif _storage_backend == "filesystem":
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
else:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"STORAGE_BACKEND must be 'filesystem' or 's3', not {_storage_backend!r}"
    )
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# BACKUPS (fedhealth/ops; README "Backup and restore")
# ------------------------------------------------------------------------------
# Celery beat writes a full backup every FEDHEALTH_BACKUP_INTERVAL_HOURS into
# FEDHEALTH_BACKUP_DIR (empty: no scheduled backups) and keeps the newest
# FEDHEALTH_BACKUP_KEEP archives. With FEDHEALTH_BACKUP_KEY set (32 bytes, URL-safe
# base64; or FEDHEALTH_BACKUP_KEY_FILE) scheduled archives are encrypted. The coordinator's
# dashboard warns when the last successful backup is older than FEDHEALTH_BACKUP_WARN_HOURS
# (default: two intervals, so one failed run is not yet a warning).
FEDHEALTH_BACKUP_DIR = env.str("FEDHEALTH_BACKUP_DIR", default="")
FEDHEALTH_BACKUP_INTERVAL_HOURS = env.float("FEDHEALTH_BACKUP_INTERVAL_HOURS", default=24.0)
FEDHEALTH_BACKUP_KEEP = env.int("FEDHEALTH_BACKUP_KEEP", default=14)
FEDHEALTH_BACKUP_WARN_HOURS = env.float("FEDHEALTH_BACKUP_WARN_HOURS", default=2 * FEDHEALTH_BACKUP_INTERVAL_HOURS)
# Private folder for temporary files of a backup or restore (empty: beside the archive);
# a decrypted archive holds patient rows, so never the system temp folder.
FEDHEALTH_BACKUP_WORK_DIR = env.str("FEDHEALTH_BACKUP_WORK_DIR", default="")
# /readyz waits at most this many seconds for the storage to answer (fedhealth/ops/ready.py).
FEDHEALTH_READYZ_TIMEOUT = env.float("FEDHEALTH_READYZ_TIMEOUT", default=3.0)
# A backup task's time limit in seconds (beyond the site-work limits: copying every file
# of a large instance takes longer than training).
FEDHEALTH_BACKUP_TIME_LIMIT = env.int("FEDHEALTH_BACKUP_TIME_LIMIT", default=6 * 3600)
if FEDHEALTH_BACKUP_INTERVAL_HOURS <= 0 or FEDHEALTH_BACKUP_KEEP < 1:
    raise ImproperlyConfigured(
        "FEDHEALTH_BACKUP_INTERVAL_HOURS must be above 0 and FEDHEALTH_BACKUP_KEEP at least 1, not "
        f"{FEDHEALTH_BACKUP_INTERVAL_HOURS} and {FEDHEALTH_BACKUP_KEEP}"
    )

# SITES, INVITATIONS AND RETENTION (clients/people.py, clients/deletion.py; docs/sites.md)
# ------------------------------------------------------------------------------
# An invitation link works once, for this many days. A rejected upload's report (which
# quotes cells of the file) is kept this many days for the site to read, then removed by
# Celery beat's daily `clients.purge_rejected_uploads` (or `manage.py purge_rejected_uploads`).
FEDHEALTH_INVITATION_DAYS = env.float("FEDHEALTH_INVITATION_DAYS", default=7.0)
FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS = env.float("FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS", default=30.0)
if FEDHEALTH_INVITATION_DAYS <= 0 or FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS < 0:
    raise ImproperlyConfigured(
        "FEDHEALTH_INVITATION_DAYS must be above 0 and FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS at least 0, not "
        f"{FEDHEALTH_INVITATION_DAYS} and {FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS}"
    )

# UPLOADS
# ------------------------------------------------------------------------------
FEDHEALTH_MAX_UPLOAD_BYTES = env.int("FEDHEALTH_MAX_UPLOAD_BYTES", default=50 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# An upload larger than FILE_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) waits on disk while the
# request is read. It holds patient rows, so it waits in a private staging folder under
# the storage root (empty: MEDIA_ROOT/staging), never the system temp folder; see
# fedhealth/uploads.py. Leftovers of a killed process older than
# FEDHEALTH_STAGING_MAX_AGE seconds are removed at worker start (and by `clean_staging`);
# an hour is far longer than any upload of FEDHEALTH_MAX_UPLOAD_BYTES takes.
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "fedhealth.uploads.StagingUploadHandler",
]
FEDHEALTH_UPLOAD_STAGING_DIR = env.str("FEDHEALTH_UPLOAD_STAGING_DIR", default="")
FEDHEALTH_STAGING_MAX_AGE = env.int("FEDHEALTH_STAGING_MAX_AGE", default=3600)

# CELERY
# ------------------------------------------------------------------------------
# Without CELERY_BROKER_URL the product uses kombu's filesystem transport under var/,
# so `make run` works on a machine with no Redis; Redis in docker-compose, CI and
# production.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
_BROKER_DIR = Path(env.str("CELERY_FILESYSTEM_BROKER_DIR", default=str(BASE_DIR / "var" / "broker")))
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR),
        "data_folder_out": str(_BROKER_DIR),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # Broadcast (remote control) exchanges; kombu's default is ./control.
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
    }
    # kombu's filesystem transport expects its folder to exist, for producers (web)
    # and consumers (workers) alike.
    (_BROKER_DIR / "processed").mkdir(parents=True, exist_ok=True)
# Results are not used for control flow (state lives in the database), so none are stored.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# acks_late + reject_on_worker_lost: a task whose worker dies is redelivered; tasks
# are idempotent (database-guarded state transitions), so redelivery is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Local training of a few hundred thousand rows takes seconds to a minute on one
# core; 10 min soft / 11 min hard leaves room for large sites without letting a hung
# task hold a worker forever.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=660)

# SECURITY
# ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG:
    # Production defaults; a plain-HTTP test deployment turns them off explicitly.
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Container health checks call /healthz over plain HTTP inside the host.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # HSTS (sent on HTTPS responses only): a year, subdomains included.
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading commits the whole domain to HTTPS in browsers' built-in lists, a
        # decision for the domain's owner (SECURE_HSTS_PRELOAD=1), not a default.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    # Behind a TLS-terminating proxy: the header it sets, e.g. HTTP_X_FORWARDED_PROTO
    # (only if the proxy always sets or strips it, or clients could claim HTTPS).
    if _proxy_header := env.str("SECURE_PROXY_SSL_HEADER", default=""):
        SECURE_PROXY_SSL_HEADER = (_proxy_header, "https")

    # Content-Security-Policy (django-csp): the pages load scripts, styles, images and
    # JSON from this origin only. No 'unsafe-inline' and no 'unsafe-eval': data for the
    # scripts travels in <script type="application/json"> blocks, and the two <style>
    # elements plotly.js fills at run time carry the request's nonce
    # (templates/includes/plotly.html). DEBUG keeps no policy: Django's debug pages are
    # inline HTML.
    from csp.constants import NONCE, NONE, SELF

    CONTENT_SECURITY_POLICY = {
        "DIRECTIVES": {
            "default-src": [SELF],
            # NONCE: the inline start-up script of the API docs page (templates/drf_spectacular/).
            "script-src": [SELF, NONCE],
            "style-src": [SELF, NONCE],
            # plotly.js draws heatmaps and mode-bar icons as data: images (Swagger UI too).
            "img-src": [SELF, "data:"],
            "connect-src": [SELF],
            "font-src": [SELF],
            "object-src": [NONE],
            "base-uri": [NONE],
            "form-action": [SELF],
            "frame-ancestors": [NONE],
        }
    }

# AUTHENTICATION
# ------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # django-axes first: it refuses locked-out credentials before they are checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Five failures lock a username from an address for 15 minutes.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# WEB (pages under templates/, assets under static/; nothing from a CDN)
# ------------------------------------------------------------------------------
# How often the live experiment page polls its JSON endpoint, in milliseconds.
FEDHEALTH_POLL_MS = env.int("FEDHEALTH_POLL_MS", default=2000)
# What a site may see of other sites' figures (aggregation/policy): an aggregate over
# sites is shown to a site only when at least this many sites contributed to it (with
# two, a site's own figure and the mean give the other's), and a version's mean only
# once its evaluations are complete or this many seconds after the version was made.
FEDHEALTH_MIN_FIGURE_SITES = env.int("FEDHEALTH_MIN_FIGURE_SITES", default=3)
FEDHEALTH_EVALUATION_GRACE_SECONDS = env.int("FEDHEALTH_EVALUATION_GRACE_SECONDS", default=3600)
if FEDHEALTH_MIN_FIGURE_SITES < 2 or FEDHEALTH_EVALUATION_GRACE_SECONDS < 0:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "FEDHEALTH_MIN_FIGURE_SITES must be at least 2 and FEDHEALTH_EVALUATION_GRACE_SECONDS "
        f"at least 0, not {FEDHEALTH_MIN_FIGURE_SITES} and {FEDHEALTH_EVALUATION_GRACE_SECONDS}"
    )
# Disclosure limits (clients/policy.py): a dataset joins an experiment only with at least
# FEDHEALTH_MIN_DATASET_ROWS rows and FEDHEALTH_MIN_ROWS_PER_LABEL rows of each label it has;
# the coordinator sees a dataset's counts, label balance and rounded means and standard
# deviations (never minima or maxima), and no figure at all from fewer rows than the first.
# 5 follows the small-cell rule of published health statistics (no cell under 5).
FEDHEALTH_MIN_DATASET_ROWS = env.int("FEDHEALTH_MIN_DATASET_ROWS", default=20)
FEDHEALTH_MIN_ROWS_PER_LABEL = env.int("FEDHEALTH_MIN_ROWS_PER_LABEL", default=5)
if FEDHEALTH_MIN_DATASET_ROWS < 1 or FEDHEALTH_MIN_ROWS_PER_LABEL < 1:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "FEDHEALTH_MIN_DATASET_ROWS and FEDHEALTH_MIN_ROWS_PER_LABEL must be at least 1, not "
        f"{FEDHEALTH_MIN_DATASET_ROWS} and {FEDHEALTH_MIN_ROWS_PER_LABEL}"
    )
# A CSV of patients to score is far smaller than a training set: 10,000 records (the
# prediction service's batch limit) of a few vitals fit in ~1 MB; 5 MB leaves room for
# extra ID columns.
FEDHEALTH_MAX_PREDICT_BYTES = 5 * 1024 * 1024
# django-axes answers a locked-out sign-in with this page (HTTP 429) rather than its
# plain-text message.
AXES_LOCKOUT_CALLABLE = "clients.views.auth.locked_out"

# API (Django REST Framework under /api/v1/, OpenAPI via drf-spectacular)
# ------------------------------------------------------------------------------
def _throttle_rate(name: str, default: str) -> str:
    """A DRF rate such as "600/min" from the environment; malformed values stop start-up."""
    import re

    from django.core.exceptions import ImproperlyConfigured

    value = env.str(name, default=default)
    if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name} must look like 600/min (count/s|min|hour|day), not {value!r}")
    return value


REST_FRAMEWORK = {
    # Tokens for programs (personal and site-agent tokens, stored hashed); the session
    # for the browser pages' own JSON calls (CSRF-checked by DRF).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "clients.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bodies, refused past a small nesting depth before they are decoded (a deep
    # document makes json.loads recurse until it fails); the two file uploads
    # (datasets, agent updates) take multipart.
    "DEFAULT_PARSER_CLASSES": ["fedhealth.api.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "fedhealth.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["fedhealth.api.filters.QueryParamFilter"],
    "EXCEPTION_HANDLER": "fedhealth.api.exceptions.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["fedhealth.api.throttles.ScopedThrottle"],
    # Per caller (user or site) and per web process (the cache is process-local unless
    # a shared cache is configured). Agents poll every few seconds and predictions may
    # be batched by programs, so the defaults are generous.
    "DEFAULT_THROTTLE_RATES": {
        "api": _throttle_rate("API_THROTTLE_RATE", "1200/min"),
        "agent": _throttle_rate("API_AGENT_THROTTLE_RATE", "600/min"),
        "predict": _throttle_rate("API_PREDICT_THROTTLE_RATE", "6000/min"),
        "upload": _throttle_rate("API_UPLOAD_THROTTLE_RATE", "30/min"),
    },
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Client addresses (throttles, failed-authentication limit) come from REMOTE_ADDR;
    # behind N trusted proxies, from the N-th address from the right of X-Forwarded-For.
    # Never None: DRF would then key on the whole header, which any client can vary.
    "NUM_PROXIES": env.int("API_NUM_PROXIES", default=0),
}
# Failed token authentications allowed per client address within the window; then
# that address gets 429 until the window (counted from its first failure) ends.
FEDHEALTH_API_AUTH_FAILURES = env.int("API_AUTH_FAILURE_LIMIT", default=20)
FEDHEALTH_API_AUTH_WINDOW_SECONDS = env.int("API_AUTH_FAILURE_WINDOW", default=600)
# Largest model update an agent may upload, in bytes. The default model has ~3,000
# parameters (12 KB); 8 MiB leaves room for much wider models and stays under
# DATA_UPLOAD_MAX_MEMORY_SIZE.
FEDHEALTH_MAX_UPDATE_BYTES = env.int("FEDHEALTH_MAX_UPDATE_BYTES", default=8 * 1024 * 1024)
SPECTACULAR_SETTINGS = {
    "TITLE": "FedHealth API",
    "DESCRIPTION": (
        "Federated learning of health classifiers: sites, datasets, experiments, rounds, "
        "models, predictions, and the endpoints site agents use. Errors share one format: "
        '`{"detail", "code", "errors": {field: [messages]}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fedhealth.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "DatasetStatusEnum": "clients.models.Dataset.Status",
        "ExperimentStatusEnum": "aggregation.models.Experiment.Status",
        "RoundStatusEnum": "aggregation.models.Round.Status",
        "UpdateStatusEnum": "aggregation.models.ClientUpdate.Status",
    },
    # Swagger UI and ReDoc assets come from drf-spectacular-sidecar, served locally.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# LOGGING
# ------------------------------------------------------------------------------
# LOG_FORMAT=json (the default outside DEBUG): one JSON line per event with the request
# id or Celery task id (fedhealth/ops/logs.py), for a log collector; plain for a terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "fedhealth.ops.logs.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "fedhealth.ops.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes logs its start-up banner at INFO in every process, commands included.
    "loggers": {"axes": {"level": "WARNING"}},
}

# Celery workers log through LOGGING above rather than their own root-logger setup, so
# task lines are JSON with their task id too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"

# METRICS (/metrics, fedhealth/ops/metrics.py)
# ------------------------------------------------------------------------------
# Prometheus scrapes with this bearer token; without one /metrics is off (404).
FEDHEALTH_METRICS_TOKEN = env.str("FEDHEALTH_METRICS_TOKEN", default="")

# FEDHEALTH ORCHESTRATION
# ------------------------------------------------------------------------------
# Aggregation and the sweeper run on the server queue; site work runs on site.<slug>.
FEDHEALTH_SERVER_QUEUE = "server"
CELERY_TASK_DEFAULT_QUEUE = FEDHEALTH_SERVER_QUEUE
# Site work or an aggregation quiet for this long is re-queued by the sweeper. Local
# training of a typical site takes seconds; 5 minutes means only lost work is re-sent.
FEDHEALTH_STALE_SECONDS = env.int("FEDHEALTH_STALE_SECONDS", default=300)
FEDHEALTH_SWEEP_SECONDS = env.float("FEDHEALTH_SWEEP_SECONDS", default=30.0)
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "aggregation.sweep", "schedule": FEDHEALTH_SWEEP_SECONDS},
    # Rejected uploads past FEDHEALTH_REJECTED_UPLOAD_RETENTION_DAYS (clients/deletion.py);
    # daily is fine-grained enough for a retention counted in days.
    "purge-rejected-uploads": {
        "task": "clients.purge_rejected_uploads",
        "schedule": 24 * 3600,
        "options": {"queue": FEDHEALTH_SERVER_QUEUE, "expires": 24 * 3600},
    },
}
if FEDHEALTH_BACKUP_DIR:
    # Full backups (fedhealth/ops/scheduled.py) on the server queue. A run not started
    # within one interval is dropped rather than stacked behind the next.
    CELERY_BEAT_SCHEDULE["backup"] = {
        "task": "fedhealth.backup",
        "schedule": FEDHEALTH_BACKUP_INTERVAL_HOURS * 3600,
        "options": {"queue": FEDHEALTH_SERVER_QUEUE, "expires": FEDHEALTH_BACKUP_INTERVAL_HOURS * 3600},
    }
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
# Publishing when the broker is unreachable (aggregation.dispatch): connecting and each
# read give up after FEDHEALTH_BROKER_TIMEOUT seconds, and a publish is tried twice
# (one retry after 0.5 s). Worst case for a broker that accepts connections but never
# answers: 2 x (2 + 2) + 0.5 = 8.5 s; a refused connection (the usual outage) fails in
# well under a second. The state change is already committed by then; the sweeper
# sends the work once the broker is back.
FEDHEALTH_BROKER_TIMEOUT = env.float("FEDHEALTH_BROKER_TIMEOUT", default=2.0)
CELERY_BROKER_CONNECTION_TIMEOUT = FEDHEALTH_BROKER_TIMEOUT
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 0.5}
# Workers write a heartbeat per queue they consume every FEDHEALTH_HEARTBEAT_SECONDS
# (aggregation.heartbeat). A queue is "attended" while its last heartbeat is younger
# than three intervals: one late write (a slow database) is not an outage.
FEDHEALTH_HEARTBEAT_SECONDS = env.float("FEDHEALTH_HEARTBEAT_SECONDS", default=15.0)
FEDHEALTH_HEARTBEAT_LIVE_SECONDS = 3 * FEDHEALTH_HEARTBEAT_SECONDS
if CELERY_BROKER_URL.startswith("redis"):
    # A message a killed worker had taken comes back after this many seconds. It must
    # exceed the longest task (the hard limit, 660 s), or Redis hands running tasks to
    # a second worker; the sweeper covers the gap faster for site work.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=900),
        # Without these, a publish to a Redis that stopped answering waits forever
        # (kombu's default): a web request would hang instead of saying so.
        "socket_connect_timeout": FEDHEALTH_BROKER_TIMEOUT,
        "socket_timeout": FEDHEALTH_BROKER_TIMEOUT,
    }

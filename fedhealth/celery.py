"""The Celery application (cookiecutter-django's celery_app.py, same shape)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedhealth.settings")

app = Celery("fedhealth")
# All CELERY_* settings live in fedhealth/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

"""The Celery application (cookiecutter-django's celery_app.py, same shape)."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedhealth.settings")

app = Celery("fedhealth")
# All CELERY_* settings live in fedhealth/settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _one_torch_thread_per_process(**kwargs) -> None:
    # Concurrency comes from worker processes; torch's own thread pool on top of that
    # oversubscribes the cores (on 2 cores a small model trained ~10x slower).
    import torch

    torch.set_num_threads(int(os.environ.get("FEDHEALTH_TORCH_THREADS", "1")))

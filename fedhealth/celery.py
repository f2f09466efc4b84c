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
def _prepare_worker_process(**kwargs) -> None:
    # Concurrency comes from worker processes; torch's own thread pool on top of that
    # oversubscribes the cores (on 2 cores a small model trained ~10x slower).
    import torch

    torch.set_num_threads(int(os.environ.get("FEDHEALTH_TORCH_THREADS", "1")))
    warm_up_torch()


def warm_up_torch() -> None:
    # The first local step in a fresh process pays one-off initialisation (lazy imports
    # and kernels; ~1 s while torch.optim imported torch._dynamo, far less since
    # fedhealth/ml/adam.py); paying it at start-up keeps it out of the first round.
    import numpy as np

    from fedhealth.ml.model import ModelConfig, init_weights
    from fedhealth.ml.training import TrainConfig, train_local

    cfg = ModelConfig(n_features=2)
    X = np.zeros((8, 2), dtype=np.float32)
    y = np.array([0, 1] * 4, dtype=np.float32)
    train_local(cfg, init_weights(cfg, 0), X, y, TrainConfig(epochs=1, batch_size=8))

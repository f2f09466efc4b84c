"""Browser pages of experiments, models and predictions (routes in fedhealth/web_urls.py)."""

from .experiments import (
    experiment_action,
    experiment_create,
    experiment_detail,
    experiment_edit,
    experiment_list,
)
from .export import experiment_export
from .live import experiment_live
from .predict import predict
from .versions import model_card, model_download, model_list

__all__ = [
    "experiment_action",
    "experiment_create",
    "experiment_detail",
    "experiment_edit",
    "experiment_export",
    "experiment_list",
    "experiment_live",
    "model_card",
    "model_download",
    "model_list",
    "predict",
]

"""Workflows over experiments, rounds and model versions (see docs/architecture.md)."""

from .lifecycle import (
    TransitionError,
    cancel_experiment,
    check_ready,
    pause_experiment,
    resume_experiment,
    start_experiment,
)
from .rounds import UpdateRefused, aggregate_round, fail_update, maybe_close_round, submit_update

__all__ = [
    "TransitionError",
    "UpdateRefused",
    "aggregate_round",
    "cancel_experiment",
    "check_ready",
    "evaluate_hosted",
    "fail_update",
    "maybe_close_round",
    "pause_experiment",
    "record_evaluation",
    "resume_experiment",
    "start_experiment",
    "submit_update",
    "train_hosted_update",
]

# Site work trains and evaluates (torch): loaded on first use, so that importing the
# services (the admin, the views, `manage.py check`) does not import torch.
_SITEWORK = ("evaluate_hosted", "record_evaluation", "train_hosted_update")


def __getattr__(name: str):
    if name in _SITEWORK:
        from . import sitework

        return getattr(sitework, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

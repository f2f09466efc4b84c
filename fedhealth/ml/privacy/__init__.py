"""Record-level differential privacy for local training: accounting and DP-SGD."""

from .accounting import (
    ALPHAS,
    DEFAULT_CLIP_NORM,
    DEFAULT_EPSILON,
    DP_TRAIN_DEFAULTS,
    PrivacySettings,
    RoundSpend,
    composed_epsilon,
    default_delta,
    derive_noise,
    epsilon_for,
    plan_round_spend,
    sample_rate,
    steps_per_round,
)
from .dpsgd import GRAD_SAMPLERS, dp_optimizer, poisson_batches, private_gradients, train_local_dp

__all__ = [
    "ALPHAS",
    "DEFAULT_CLIP_NORM",
    "DEFAULT_EPSILON",
    "DP_TRAIN_DEFAULTS",
    "GRAD_SAMPLERS",
    "PrivacySettings",
    "RoundSpend",
    "composed_epsilon",
    "default_delta",
    "derive_noise",
    "dp_optimizer",
    "epsilon_for",
    "plan_round_spend",
    "poisson_batches",
    "private_gradients",
    "sample_rate",
    "steps_per_round",
    "train_local_dp",
]

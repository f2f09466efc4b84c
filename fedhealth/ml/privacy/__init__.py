"""Differential privacy: record-level (DP-SGD at each site, its accounting) and site-level
(DP-FedAvg, ``sitelevel``)."""

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
from .sitelevel import (
    DEFAULT_SITE_DELTA,
    MIN_SITE_DP_SITES,
    SiteDPSettings,
    SiteSpend,
    apply_mean_change,
    checked_share_request,
    clip_change,
    dp_fedavg,
    secure_coordinate_bound,
    secure_dp_fedavg,
    secure_site_input,
    site_epsilon,
    site_share,
)

__all__ = [
    "ALPHAS",
    "DEFAULT_CLIP_NORM",
    "DEFAULT_EPSILON",
    "DEFAULT_SITE_DELTA",
    "MIN_SITE_DP_SITES",
    "DP_TRAIN_DEFAULTS",
    "GRAD_SAMPLERS",
    "PrivacySettings",
    "RoundSpend",
    "SiteDPSettings",
    "SiteSpend",
    "apply_mean_change",
    "checked_share_request",
    "clip_change",
    "composed_epsilon",
    "default_delta",
    "derive_noise",
    "dp_fedavg",
    "dp_optimizer",
    "epsilon_for",
    "plan_round_spend",
    "poisson_batches",
    "private_gradients",
    "sample_rate",
    "secure_coordinate_bound",
    "secure_dp_fedavg",
    "secure_site_input",
    "site_epsilon",
    "site_share",
    "steps_per_round",
    "train_local_dp",
]

# DP-SGD imports torch: loaded on first use, so that the settings and the accounting
# (fedhealth.ml.config, the experiment model, web processes) come without it.
_DPSGD = ("GRAD_SAMPLERS", "dp_optimizer", "poisson_batches", "private_gradients", "train_local_dp")


def __getattr__(name: str):
    if name in _DPSGD:
        from . import dpsgd

        return getattr(dpsgd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

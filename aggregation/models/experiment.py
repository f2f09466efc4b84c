"""An experiment: the configuration of a federated study and where it stands."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

# The configurations come from the core's torch-free module: this model is imported by
# every web process and `manage.py check`.
from fedhealth.ml.config import FederatedConfig, ModelConfig, TrainConfig
from fedhealth.ml.privacy import (
    DEFAULT_CLIP_NORM,
    DEFAULT_EPSILON,
    DEFAULT_SITE_DELTA,
    PrivacySettings,
    SiteDPSettings,
)
from fedhealth.ml.schema import Schema

# The core's defaults are the product's defaults (tuned in fedhealth/ml; see README).
_MODEL = ModelConfig(n_features=1)
_TRAIN = TrainConfig()
_FED = FederatedConfig()


def _default_hidden() -> list[int]:
    return list(_MODEL.hidden)


class Experiment(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.RUNNING, Status.PAUSED)
    FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    schema = models.JSONField()
    hidden_layers = models.JSONField(default=_default_hidden, blank=True)
    dropout = models.FloatField(default=_MODEL.dropout, validators=[MinValueValidator(0.0), MaxValueValidator(0.9)])
    strategy = models.CharField(max_length=30, default="fedavg")
    strategy_params = models.JSONField(default=dict, blank=True)
    num_rounds = models.PositiveIntegerField(default=_FED.rounds, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    local_epochs = models.PositiveIntegerField(default=_TRAIN.epochs, validators=[MinValueValidator(1), MaxValueValidator(100)])
    batch_size = models.PositiveIntegerField(default=_TRAIN.batch_size, validators=[MinValueValidator(1), MaxValueValidator(65536)])
    lr = models.FloatField(default=_TRAIN.lr, validators=[MinValueValidator(1e-6), MaxValueValidator(1.0)])
    weight_decay = models.FloatField(default=_TRAIN.weight_decay, validators=[MinValueValidator(0.0)])
    min_sites = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    fraction_fit = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="Fraction of participating sites sampled each round.",
    )
    round_timeout = models.PositiveIntegerField(
        default=1800, help_text="Seconds a round waits for its sites before closing."
    )
    test_fraction = models.FloatField(default=0.25, validators=[MinValueValidator(0.05), MaxValueValidator(0.5)])
    seed = models.IntegerField(default=0, validators=[MinValueValidator(0), MaxValueValidator(2**31 - 1)])
    # An update whose distance from the global model is more than this many times the
    # median distance of the round's other updates is refused (see fedhealth.ml.robust).
    outlier_factor = models.FloatField(
        default=10.0, validators=[MinValueValidator(1.5), MaxValueValidator(1000.0)],
        help_text="Refuse an update farther from the global model than this many times "
        "the median of the round's other updates.",
    )
    # Record-level differential privacy (fedhealth.ml.privacy): a request to each site,
    # which derives its own noise from it and enforces its own budget. Site-level
    # (fedhealth.ml.privacy.sitelevel, DP-FedAvg): each site's change is clipped and noised
    # at aggregation; the same epsilon, delta and clip fields, read per site.
    class DPMode(models.TextChoices):
        OFF = "off", "Off"
        RECORD = "record", "Record-level (DP-SGD at each site)"
        SITE = "site", "Site-level (DP-FedAvg: each site's whole contribution)"

    dp_mode = models.CharField(max_length=10, choices=DPMode.choices, default=DPMode.OFF)
    dp_epsilon = models.FloatField(default=DEFAULT_EPSILON)
    dp_delta = models.FloatField(null=True, blank=True, help_text="Empty: 1/(10 x rows) at each site.")
    dp_clip_norm = models.FloatField(default=DEFAULT_CLIP_NORM)
    # Secure aggregation (fedhealth.ml.secagg): the server learns only the sum of the
    # sites' updates. Threshold empty: a majority of the sites in the round, at least 2.
    secure_aggregation = models.BooleanField(default=False)
    secagg_threshold = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(2)],
        help_text="Empty: a majority of the sites in the round, at least 2.",
    )
    # Model selection (fedhealth.ml.personalize): each site holds out this share of its
    # training rows and reports each version's loss on it; the best version is
    # recommended. 0: no slice, the last version is recommended.
    validation_fraction = models.FloatField(
        default=_FED.validation_fraction, validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of each site's training rows held out to pick the best round (0: off).",
    )
    # Platform early stopping: the experiment completes once the sites' weighted
    # validation loss has not improved for this many scored rounds (empty: off; needs
    # a validation fraction). Why it finished early: ``finish_code`` (aggregation.reasons).
    early_stopping = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Stop after this many rounds without a better validation loss (empty: off).",
    )
    finish_code = models.CharField(max_length=32, blank=True)
    stopped_after_round = models.PositiveIntegerField(null=True, blank=True)

    # Personalisation (fedhealth.ml.personalize): at the end, each site builds its own
    # model from the selected global version, and compares it with the global model
    # and a local-only model on its own test rows (aggregation.SiteComparison).
    class Personalize(models.TextChoices):
        OFF = "off", "Off"
        FEDPER = "fedper", "FedPer (a site-kept output layer)"
        FINETUNE = "finetune", "Fine-tuning"
        DITTO = "ditto", "Ditto (fine-tuning pulled toward the global model)"

    personalize = models.CharField(max_length=10, choices=Personalize.choices, default=Personalize.OFF)
    sites = models.ManyToManyField("clients.Site", through="Participant", related_name="experiments")

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    failure_reason = models.TextField(blank=True)
    failure_code = models.CharField(max_length=32, blank=True)
    # Fixed when the experiment starts: the global normaliser (from the participants'
    # sufficient statistics) and the initial weights every site starts from.
    normalizer = models.JSONField(null=True, blank=True)
    initial_weights = models.CharField(max_length=255, blank=True)
    initial_sha256 = models.CharField(max_length=64, blank=True)
    # Server-side strategy state (e.g. FedAdam moments): JSON part here, arrays in a
    # safetensors file, so a restart loses nothing.
    strategy_state = models.JSONField(default=dict, blank=True)
    strategy_state_file = models.CharField(max_length=255, blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    # -- the core's view of this experiment ---------------------------------------

    @property
    def schema_obj(self) -> Schema:
        return Schema.from_dict(self.schema)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(
            n_features=len(self.schema_obj.features), hidden=tuple(self.hidden_layers), dropout=self.dropout
        )

    def train_config(self, seed: int, **extra: Any) -> TrainConfig:
        return TrainConfig(
            epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, seed=seed,
            positive=self.schema_obj.positive_value, **extra,
        )

    @property
    def privacy_settings(self) -> PrivacySettings | None:
        """The DP request sent to each site in its plan; ``None`` with DP off."""
        if self.dp_mode != self.DPMode.RECORD:
            return None
        return PrivacySettings(
            epsilon=self.dp_epsilon, delta=self.dp_delta, clip_norm=self.dp_clip_norm, rounds=self.num_rounds
        )

    def site_dp_settings(self, *, sites: int, per_round: int) -> SiteDPSettings | None:
        """Site-level DP-FedAvg's settings for a round of ``per_round`` of ``sites`` sites;
        ``None`` unless ``dp_mode`` is site. ValueError on settings the core refuses."""
        if self.dp_mode != self.DPMode.SITE:
            return None
        return SiteDPSettings(
            epsilon=self.dp_epsilon, clip_norm=self.dp_clip_norm, rounds=self.num_rounds,
            delta=DEFAULT_SITE_DELTA if self.dp_delta is None else self.dp_delta,
            sites=sites, per_round=per_round,
        )

    def federated_config(self) -> FederatedConfig:
        return FederatedConfig(
            rounds=self.num_rounds, strategy=self.strategy, strategy_params=dict(self.strategy_params),
            model=self.model_config, train=self.train_config(self.seed), seed=self.seed,
            validation_fraction=self.validation_fraction,
        )

    @property
    def storage_prefix(self) -> str:
        return f"experiments/{self.pk}"


class Participant(models.Model):
    """A site invited to an experiment, its consent, and the dataset it chose to train on.

    Only a site that accepted the experiment's current terms (``terms_hash`` equal to
    the hash of what it is asked now, aggregation/services/consent.py) is ever trained
    on; a withdrawal applies from round ``withdrawn_from_round``.
    """

    class Consent(models.TextChoices):
        INVITED = "invited", "Invited"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        WITHDRAWN = "withdrawn", "Withdrawn"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="participants")
    site = models.ForeignKey("clients.Site", on_delete=models.CASCADE, related_name="participations")
    # Proposed by the coordinator (or empty) when inviting; the site's own choice on acceptance.
    dataset = models.ForeignKey("clients.Dataset", on_delete=models.PROTECT, null=True, blank=True)
    joined_at = models.DateTimeField(auto_now_add=True)
    consent = models.CharField(max_length=10, choices=Consent.choices, default=Consent.INVITED)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decline_reason = models.CharField(max_length=500, blank=True)
    terms_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the terms accepted.")
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_from_round = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["experiment", "site"], name="one_participation_per_site")]

    def __str__(self) -> str:
        return f"{self.site} in {self.experiment}"

"""Versioned global models and how they score on each site's own test data."""

from __future__ import annotations

from django.db import models


class ModelVersion(models.Model):
    """The global model after a round; the latest version is "the global model"."""

    experiment = models.ForeignKey("aggregation.Experiment", on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    round = models.OneToOneField("aggregation.Round", on_delete=models.PROTECT, related_name="model_version")
    weights_file = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    # Travels with the weights: predictions must scale inputs as training did.
    normalizer = models.JSONField()
    model_config = models.JSONField()
    schema = models.JSONField()
    # Mean of the sites' evaluations, filled in as they report (see SiteEvaluation).
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["experiment", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "version"], name="one_version_number")
        ]

    def __str__(self) -> str:
        return f"{self.experiment} v{self.version}"


class SiteEvaluation(models.Model):
    """A site's evaluation of a global model version on its own held-out rows.

    Evaluation runs at the site (federated evaluation), so the server only ever sees
    these figures, never the test rows.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    site = models.ForeignKey("clients.Site", on_delete=models.CASCADE, related_name="evaluations")
    metrics = models.JSONField(default=dict)
    # Curves for the analytics page (ROC points, calibration bins, confusion counts):
    # aggregates of predictions, not rows.
    curves = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "site"], name="one_evaluation_per_site")]

    def __str__(self) -> str:
        return f"{self.site} on {self.version}"


class EvaluationAttempt(models.Model):
    """Bookkeeping of a hosted site's evaluation of a version: how often it was tried,
    and whether it was given up (the sweeper never resends a failed one)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FAILED = "failed", "Failed"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluation_attempts")
    site = models.ForeignKey("clients.Site", on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "site"], name="one_evaluation_attempt_per_site")]

    def __str__(self) -> str:
        return f"{self.site} on {self.version}: {self.status} after {self.attempts}"


class WorkerHeartbeat(models.Model):
    """The last time a worker consuming ``queue`` said it was alive. Lets pages say
    "no worker has taken site X's work for N minutes" instead of counting down."""

    queue = models.CharField(max_length=100, unique=True)
    hostname = models.CharField(max_length=255, blank=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.queue} @ {self.hostname} ({self.seen_at:%Y-%m-%d %H:%M:%S})"

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

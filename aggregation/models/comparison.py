"""Alone / global / personalised: a site's own figures at the end of an experiment.

One row per participant (``SiteComparison``), written once through
``aggregation.services.site_comparison.record_site_comparison`` by the site's hosted
worker or its agent. The figures are aggregates on the site's own test rows; the
models they describe (the site's local-only and personalised models) stay in the
site's private storage (hosted) or the agent's folder, never in a table.
"""

from __future__ import annotations

from django.db import models


class SiteComparison(models.Model):
    """A site's local-only, selected global and personalised models, scored on its own
    test rows. ``status`` moves pending -> running -> done (or failed) only forward,
    by conditional updates, so a retried end-of-experiment task finds nothing to do."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        HOSTED = "hosted", "Hosted worker"
        AGENT = "agent", "Site agent"

    participant = models.OneToOneField(
        "aggregation.Participant", on_delete=models.CASCADE, related_name="comparison"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    source = models.CharField(max_length=10, choices=Source.choices)
    # The personalisation mode used ("" when the experiment has none).
    mode = models.CharField(max_length=10, blank=True)
    # The global version compared (the selected one when the site reported).
    version = models.ForeignKey(
        "aggregation.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Metrics dicts (fedhealth.ml.metrics, undefined as null), or null when not measured.
    alone = models.JSONField(null=True, blank=True)
    global_metrics = models.JSONField(null=True, blank=True)
    personalized = models.JSONField(null=True, blank=True)
    # Hosted sites only: where the personalised model lies in the site's own storage
    # (datasets/<site>/personal/...), for that site's own predictions.
    personal_file = models.CharField(max_length=255, blank=True)
    personal_sha256 = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.participant}: {self.status}"

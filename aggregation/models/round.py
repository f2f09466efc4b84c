"""Rounds and the updates sites send in them."""

from __future__ import annotations

from django.db import models


class Round(models.Model):
    """One federated round: selected sites train, the server aggregates once.

    The status only moves forward (open -> aggregating -> completed, or -> failed),
    always through a conditional UPDATE or under a row lock, so a retried or
    duplicated task can never close a round or aggregate it twice.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Waiting for sites"
        AGGREGATING = "aggregating", "Aggregating"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    experiment = models.ForeignKey("aggregation.Experiment", on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OPEN)
    deadline = models.DateTimeField()
    started_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Aggregate figures only: sample-weighted training loss, counts, rejections.
    metrics = models.JSONField(default=dict, blank=True)
    failure_reason = models.TextField(blank=True)
    failure_code = models.CharField(max_length=32, blank=True)
    # Bounded retries of the aggregation task (see aggregation.tasks): a permanent
    # failure ends the round instead of being resent by the sweeper forever.
    aggregation_attempts = models.PositiveIntegerField(default=0)
    # When the latest aggregation attempt began: the sweeper re-sends an aggregation
    # only once it has been quiet this long, so a slow attempt is not duplicated.
    aggregation_started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["experiment", "number"]
        constraints = [models.UniqueConstraint(fields=["experiment", "number"], name="one_round_number")]

    def __str__(self) -> str:
        return f"{self.experiment} round {self.number}"


class ClientUpdate(models.Model):
    """A selected site's part in a round: created pending when the round opens."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        TRAINING = "training", "Training"
        RECEIVED = "received", "Received"
        FAILED = "failed", "Failed"

    TERMINAL = (Status.RECEIVED, Status.FAILED)

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="updates")
    site = models.ForeignKey("clients.Site", on_delete=models.CASCADE, related_name="updates")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    num_samples = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    # The site's own metrics: its local model on its own test split.
    metrics = models.JSONField(default=dict, blank=True)
    weights_file = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    # The product's message and its code (aggregation.reasons), shown to whoever may
    # see this update; never raw exception text.
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    # An agent's own free-text explanation: length-limited, shown to its own site only.
    site_note = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    source = models.CharField(max_length=10, blank=True)  # "hosted" or "agent"
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["round", "site"]
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="one_update_per_site_per_round")]

    def __str__(self) -> str:
        return f"{self.site} in {self.round}: {self.status}"

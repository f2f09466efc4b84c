"""Each site's privacy ledger: what every round of every experiment spent on a dataset.

A hosted site's worker writes here before it trains. An agent keeps its own ledger file
on the hospital's machine and enforces its own budget there; it reports each round's
spend with its update, and the server records that report here (``source=agent``),
checked against the experiment's settings (``consistency``). The ledger is the
site's: it is composed over *all* experiments on the dataset and checked against the
dataset's lifetime budget before each round, whatever the experiment asks.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from fedhealth.ml.privacy import RoundSpend


class PrivacyBudget(models.Model):
    """A dataset's lifetime epsilon budget, set by its site's admin (none: no limit)."""

    dataset = models.OneToOneField(
        "clients.Dataset", on_delete=models.CASCADE, related_name="privacy_budget"
    )
    epsilon = models.FloatField(validators=[MinValueValidator(0.0)])
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.dataset}: epsilon {self.epsilon:g}"


class PrivacyLedgerEntry(models.Model):
    """One round's spend at one site: written *before* the site trains (a crash can only
    over-count). One entry per training attempt: a retried round trains again with fresh
    noise, which is a second release and is counted as one."""

    class Source(models.TextChoices):
        HOSTED = "hosted", "Hosted worker"
        AGENT = "agent", "Site agent"

    class Check(models.TextChoices):
        # A hosted worker's entry is the server's own computation: nothing to check.
        OWN = "own", "Computed by the site's hosted worker"
        CONSISTENT = "consistent", "Reported by the agent; follows from the experiment's settings"
        MISMATCH = (
            "mismatch",
            "Reported by the agent; does not follow from the experiment's settings",
        )

    dataset = models.ForeignKey(
        "clients.Dataset", on_delete=models.PROTECT, related_name="privacy_ledger"
    )
    experiment = models.ForeignKey(
        "aggregation.Experiment", on_delete=models.CASCADE, related_name="privacy_ledger"
    )
    round_number = models.PositiveIntegerField()
    epsilon = models.FloatField(help_text="This round alone, at delta.")
    epsilon_total = models.FloatField(
        help_text="The experiment's spend at this site after this round."
    )
    delta = models.FloatField()
    noise_multiplier = models.FloatField()
    sample_rate = models.FloatField()
    steps = models.PositiveIntegerField()
    clip_norm = models.FloatField()
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.HOSTED)
    # An agent's entry is what the agent reported with its update (it enforces its own
    # budget on its own machine); the server checks it against the experiment's settings
    # and the registered row count and flags, never corrects, a mismatch.
    consistency = models.CharField(max_length=12, choices=Check.choices, default=Check.OWN)
    consistency_detail = models.CharField(max_length=500, blank=True)
    update = models.OneToOneField(
        "aggregation.ClientUpdate",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reported_spend",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["experiment", "round_number"])]

    def __str__(self) -> str:
        return f"{self.dataset} round {self.round_number} of {self.experiment_id}: epsilon {self.epsilon:.3g}"

    def spend(self) -> RoundSpend:
        return RoundSpend(
            round=self.round_number,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            delta=self.delta,
            clip_norm=self.clip_norm,
            epsilon=self.epsilon,
            epsilon_total=self.epsilon_total,
        )

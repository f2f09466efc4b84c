"""A secure round's protocol state (fedhealth.ml.secagg) and each site's place in it.

``SecureRound`` holds the server's side only (``AggregationSession.export_state``: public
keys, encrypted shares, the running masked sum, revealed shares): no site secret and no
site's update in the clear. Each site's secret state lives in that site's private storage
(aggregation.services.secure_round), never in a table a page or the API reads.
"""

from __future__ import annotations

from django.db import models


class SecureRound(models.Model):
    """The protocol phase of one round of a secure experiment, with its deadline.

    The phase only moves forward, under this row's lock, so a retried or duplicated task
    neither counts a message twice nor unmasks twice.
    """

    class Phase(models.TextChoices):
        ADVERTISE = "advertise", "Advertising keys"
        SHARE = "share", "Sharing keys"
        MASKED = "masked", "Sending masked updates"
        CONSISTENCY = "consistency", "Signing the survivor list"
        UNMASK = "unmask", "Unmasking the sum"
        DONE = "done", "Done"
        FAILED = "failed", "Failed closed"

    round = models.OneToOneField("aggregation.Round", on_delete=models.CASCADE, related_name="secure")
    phase = models.CharField(max_length=12, choices=Phase.choices, default=Phase.ADVERTISE)
    phase_deadline = models.DateTimeField()
    threshold = models.PositiveIntegerField()
    # AggregationSession.export_state(): what the relay needs to resume after a restart.
    state = models.JSONField(default=dict)
    # The server's task for the open phase (roster, per-recipient inbox, unmask request).
    task = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.round} secure ({self.phase})"


class SecureSite(models.Model):
    """A site's progress through a secure round: the last phase whose message counted."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Taking part"
        DROPPED = "dropped", "Dropped"

    secure_round = models.ForeignKey(SecureRound, on_delete=models.CASCADE, related_name="sites")
    site = models.ForeignKey("clients.Site", on_delete=models.CASCADE, related_name="secure_rounds")
    # The site's name inside the protocol for this round only: random, never its slug or pk,
    # so that rosters, share recipients and survivor lists do not say which sites take part.
    # Mapped back to the site here, on the server's side only.
    protocol_id = models.CharField(max_length=32, default="", blank=True)
    last_phase = models.CharField(max_length=12, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    dropped_in = models.CharField(max_length=12, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["secure_round", "site"], name="one_secure_site"),
            models.UniqueConstraint(
                fields=["secure_round", "protocol_id"], name="one_protocol_id_per_secure_round"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.secure_round}: {self.site} {self.last_phase or '-'}"

"""The audit trail: an append-only, hash-chained record of who did what, when and from where.

Each event's ``hash`` is the SHA-256 of a canonical JSON of its fields *and* the previous
event's hash (``prev_hash``), so altering a stored event breaks its own hash, and removing
one breaks the link of the next; ``AuditHead`` holds the last position and hash, so removing
the newest events is caught too (``manage.py audit verify``). Writers serialise on the head
row (audit/services.py), which keeps the chain linear on PostgreSQL and SQLite.

Who and which site are stored as values (ids and names), not foreign keys: deleting a user or
a site must not rewrite (SET_NULL) or delete (CASCADE) a chained event. ``details`` never
holds patient data: counts, ids, names of files and experiments, never a row or an input.
"""

from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    class Kind(models.TextChoices):
        SIGN_IN = "sign_in", "Signed in"
        SIGN_IN_FAILED = "sign_in_failed", "Sign-in failed"
        UPLOAD = "upload", "Dataset uploaded"
        DATASET_DOWNLOAD = "dataset_download", "Dataset downloaded"
        EXPERIMENT_CREATE = "experiment_create", "Experiment created"
        EXPERIMENT_START = "experiment_start", "Experiment started"
        EXPERIMENT_PAUSE = "experiment_pause", "Experiment paused"
        EXPERIMENT_RESUME = "experiment_resume", "Experiment resumed"
        EXPERIMENT_CANCEL = "experiment_cancel", "Experiment cancelled"
        MODEL_DOWNLOAD = "model_download", "Model downloaded"
        PREDICTION = "prediction", "Predictions made"
        TOKEN_CREATE = "token_create", "API token created"
        TOKEN_REVOKE = "token_revoke", "API token revoked"
        AGENT_REGISTER = "agent_register", "Agent registered a dataset"
        SITE_CREATE = "site_create", "Site created"
        INVITATION_CREATE = "invitation_create", "Invitation created"
        INVITATION_ACCEPT = "invitation_accept", "Invitation accepted"
        INVITATION_REVOKE = "invitation_revoke", "Invitation revoked"
        MEMBER_ROLE = "member_role", "Member's role changed"
        MEMBER_REMOVE = "member_remove", "Member removed"
        DATASET_DELETE = "dataset_delete", "Dataset deleted"
        RETENTION_PURGE = "retention_purge", "Rejected uploads removed"
        CONSENT_ACCEPT = "consent_accept", "Experiment accepted by a site"
        CONSENT_DECLINE = "consent_decline", "Experiment declined by a site"
        CONSENT_WITHDRAW = "consent_withdraw", "Site withdrew from an experiment"
        DATASET_WITHDRAW = "dataset_withdraw", "Dataset withdrawn"

    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    kind = models.CharField(max_length=32, choices=Kind.choices, db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor = models.CharField(max_length=200, blank=True, db_index=True, help_text="Username, or the site token.")
    site_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    site_name = models.CharField(max_length=200, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    target = models.CharField(max_length=255, blank=True, help_text='What it was done to, e.g. "dataset 12".')
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} by {self.actor or 'system'}"


class AuditHead(models.Model):
    """One row: the chain's last position and hash; its row is the writers' lock."""

    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit head at event {self.seq}"

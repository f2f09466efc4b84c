"""Sites, the people who belong to them, and the datasets they hold."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Site(models.Model):
    """A participating institution (hospital, clinic)."""

    class Mode(models.TextChoices):
        # Hosted: the site's CSV sits in the platform's site-private storage and a
        # worker on the site's queue trains on it. Agent: the data never leaves the
        # site's machine; its agent pulls work over the API.
        HOSTED = "hosted", "Hosted worker"
        AGENT = "agent", "Remote site agent"

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=50, unique=True)
    contact_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.HOSTED)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        """The Celery queue only this site's worker consumes."""
        return f"site.{self.slug}"


class Membership(models.Model):
    """A user's place: a member or admin of one site, or a coordinator of none."""

    class Role(models.TextChoices):
        MEMBER = "member", "Site member"
        SITE_ADMIN = "site_admin", "Site admin"
        COORDINATOR = "coordinator", "Coordinator"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    site = models.ForeignKey(
        Site, on_delete=models.CASCADE, null=True, blank=True, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            # Coordinators see aggregate figures only, so they belong to no site; every
            # other role needs exactly one.
            models.CheckConstraint(
                condition=(Q(role="coordinator") & Q(site__isnull=True))
                | (~Q(role="coordinator") & Q(site__isnull=False)),
                name="membership_site_matches_role",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}{', ' + str(self.site) if self.site else ''})"

    @property
    def is_coordinator(self) -> bool:
        return self.role == self.Role.COORDINATOR


def dataset_upload_to(instance: Dataset, filename: str) -> str:
    # Random names: the original filename may itself carry patient identifiers.
    return f"datasets/{instance.site.slug}/{uuid.uuid4().hex}.csv"


class Dataset(models.Model):
    """A site's validated CSV and what may be shared about it (never its rows)."""

    class Status(models.TextChoices):
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        REJECTED = "rejected", "Rejected"

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=255)
    # Empty for an agent site's dataset: its file stays on the site's machine.
    file = models.FileField(upload_to=dataset_upload_to, max_length=255, blank=True)
    schema = models.JSONField()
    policy = models.CharField(max_length=30, default="reject")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    row_count = models.PositiveIntegerField(default=0)
    positive_count = models.PositiveIntegerField(default=0)
    rows_dropped = models.PositiveIntegerField(default=0)
    # Sufficient statistics (count, per-feature sum and sum of squares) for federated
    # normalisation, plus per-feature min/max/mean for the summary page.
    stats = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    validation_report = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.VALIDATING)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.site.slug}/{self.name}"

    @property
    def label_balance(self) -> float:
        """Fraction of rows labelled 1."""
        return self.positive_count / self.row_count if self.row_count else 0.0

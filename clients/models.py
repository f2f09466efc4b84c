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
        # Deleted by its site (clients/deletion.py): the file is gone, the row keeps the
        # summary and who deleted it when, and no code path makes it usable again.
        DELETED = "deleted", "Deleted"

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
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, editable=False,
        related_name="+",
    )
    # Withdrawn by its site admin: it joins no new experiment, and running experiments
    # stop using it from their next round (aggregation/services/consent.py).
    withdrawn_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A deletion record and the deleted status go together, and a deleted
            # dataset points at no file.
            models.CheckConstraint(
                condition=(Q(deleted_at__isnull=True) & ~Q(status="deleted"))
                | (Q(deleted_at__isnull=False) & Q(status="deleted") & Q(file="")),
                name="dataset_deleted_has_record_and_no_file",
            )
        ]

    def __str__(self) -> str:
        return f"{self.site.slug}/{self.name}"

    @property
    def label_balance(self) -> float:
        """Fraction of rows labelled 1."""
        return self.positive_count / self.row_count if self.row_count else 0.0


# API tokens (appended: the models above are edited elsewhere, so imports stay here).
import hashlib  # noqa: E402
import hmac  # noqa: E402
import secrets  # noqa: E402

from django.utils import timezone  # noqa: E402


def _token_prefix() -> str:
    return secrets.token_hex(4)


class ApiToken(models.Model):
    """A bearer token for the REST API: a person's own, or a site agent's.

    Only the SHA-256 of the token is stored; the token itself is shown once, when it
    is issued. The short random ``prefix`` is part of the token and finds the row
    without a scan; comparing hashes (not the prefix) is what authenticates. Tokens
    carry ~256 bits of randomness, so an unsalted hash is as good as a slow one here.
    """

    class Kind(models.TextChoices):
        PERSONAL = "personal", "Personal (acts as its user)"
        SITE = "site", "Site agent (acts for its site)"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True, help_text="What the token is for.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True,
        related_name="api_tokens",
    )
    site = models.ForeignKey(Site, on_delete=models.CASCADE, null=True, blank=True, related_name="api_tokens")
    prefix = models.CharField(max_length=8, unique=True, default=_token_prefix, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="personal") & Q(user__isnull=False) & Q(site__isnull=True))
                | (Q(kind="site") & Q(site__isnull=False) & Q(user__isnull=True)),
                name="api_token_owner_matches_kind",
            )
        ]

    def __str__(self) -> str:
        owner = self.user if self.kind == self.Kind.PERSONAL else self.site
        return f"{self.prefix} ({self.get_kind_display()}: {owner})"

    @staticmethod
    def hash_key(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    def set_new_secret(self) -> str:
        """Give the (unsaved) token a fresh prefix and secret; return the token text,
        which is never stored and so can be shown only now."""
        self.prefix = _token_prefix()
        letter = "s" if self.kind == self.Kind.SITE else "p"
        raw = f"fh{letter}_{self.prefix}_{secrets.token_urlsafe(32)}"
        self.key_hash = self.hash_key(raw)
        return raw

    @classmethod
    def issue(cls, *, user=None, site: Site | None = None, name: str = "", created_by=None) -> tuple[ApiToken, str]:
        """Create a personal token (``user``) or a site token (``site``); returns the
        row and the token text to hand over once."""
        if (user is None) == (site is None):
            raise ValueError("a token belongs to exactly one user or one site")
        token = cls(kind=cls.Kind.SITE if site else cls.Kind.PERSONAL, user=user, site=site,
                    name=name[:200], created_by=created_by)
        raw = token.set_new_secret()
        token.save()
        from audit import services as audit  # here: audit's views import this module

        audit.record(audit.Kind.TOKEN_CREATE, site=site, target=f"token {token.prefix}",
                     details={"kind": token.kind, "name": token.name, "user": user.get_username() if user else None})
        return token, raw

    @classmethod
    def parse_prefix(cls, raw: str) -> str | None:
        parts = raw.split("_", 2)
        if len(parts) != 3 or parts[0] not in ("fhp", "fhs") or len(parts[1]) != 8:
            return None
        return parts[1]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def matches(self, raw: str) -> bool:
        return hmac.compare_digest(self.key_hash, self.hash_key(raw))

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            if ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=self.revoked_at):
                from audit import services as audit

                audit.record(audit.Kind.TOKEN_REVOKE, site=self.site, target=f"token {self.prefix}",
                             details={"kind": self.kind, "name": self.name})


class Invitation(models.Model):
    """A single-use link that lets its holder create an account and join one site.

    Only the SHA-256 of the link's secret is stored (as for ApiToken: ~256 random bits,
    so an unsalted hash suffices); the link is shown once, to whoever created it.
    Accepting is a conditional UPDATE on ``accepted_at IS NULL`` (clients/invitations.py),
    so two tabs racing on one link make one account.
    """

    class Role(models.TextChoices):
        MEMBER = Membership.Role.MEMBER.value, Membership.Role.MEMBER.label
        SITE_ADMIN = Membership.Role.SITE_ADMIN.value, Membership.Role.SITE_ADMIN.label

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=20, choices=Role.choices)
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=["member", "site_admin"]), name="invitation_site_role")
        ]

    def __str__(self) -> str:
        return f"invitation to {self.site} as {self.get_role_display()}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()

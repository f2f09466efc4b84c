"""The secure-aggregation steps of the agent protocol (docs/secure-aggregation.md).

A secure round for an agent: ``POST rounds/<id>/trained/`` (figures only, the weights stay
at the site), then, once the round closes, ``GET rounds/<id>/secure/`` for this site's task
in the open phase and one POST per step: ``secure/advertise/``, ``secure/shares/``,
``secure/masked/``, ``secure/consistency/``, ``secure/unmask/``. Bodies are the core's JSON wire format (bytes as
base64, never pickle); each endpoint bounds its body before parsing it, takes only its own
message kind, and the protocol checks the rest (round, sender, recipients, length, replay).
Every POST is safe to retry: a message already counted answers ``replay``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.decorators import action
from rest_framework.response import Response

from aggregation.models import SecureRound, SecureSite
from aggregation.services import UpdateRefused
from aggregation.services import privacy as privacy_ledger
from aggregation.services import secure_agent as service
from fedhealth.api.exceptions import Conflict, PayloadTooLarge, field_error
from fedhealth.api.schema import ErrorSerializer
from fedhealth.ml.secagg import SecAggError
from fedhealth.ml.secagg.shamir import SHARE_BYTES

from . import agent_serializers as s
from .serializers import UpdateSerializer

ENVELOPE = 4096  # the JSON around a message's bytes: kind, ctx, site, keys
PER_SITE = (
    2 * 4 * (2 * SHARE_BYTES + 64)
)  # one site's ciphertext or revealed share, base64, with its key


class ProtocolRefused(exceptions.APIException):
    """The message broke the protocol; ``code`` is the core's (secagg_protocol, ...)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "secagg_protocol"


def _limit(round_, kind: str) -> int:
    """The largest body a step can need in this round: refused (413) above it, unread."""
    if kind == "advertise":
        return ENVELOPE
    secure = SecureRound.objects.filter(round=round_).first()
    if kind == "masked":
        roster = (secure.state.get("roster") or {}) if secure else {}
        length = roster.get("length") or settings.FEDHEALTH_MAX_UPDATE_BYTES // 4
        return ENVELOPE + 4 * ((4 * length + 2) // 3)  # base64 of 4 bytes per element
    sites = SecureSite.objects.filter(secure_round=secure).count() if secure else 1
    return ENVELOPE + PER_SITE * max(sites, 1)


class SecureStepsMixin:
    """Actions of ``AgentRoundViewSet`` (which provides ``selected()`` and ``site``)."""

    @extend_schema(
        request=s.TrainedSerializer,
        responses={
            201: UpdateSerializer,
            200: UpdateSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    @action(detail=True, methods=["post"])
    def trained(self, request, pk=None):
        """Secure experiments: report that this site trained (sample count, loss, local
        metrics and, with record-level DP, its accountant's spend). The weights stay at the
        site until they leave masked."""
        from .agent import _reported_spend  # agent.py imports this mixin

        round_, update = self.selected()
        form = s.TrainedSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        reported = _reported_spend(round_, data.get("privacy"))
        try:
            # The report and the spend are recorded together, as with update/: a counted
            # update of a private experiment never lacks its ledger entry.
            with transaction.atomic():
                counted = service.report_trained(
                    update,
                    num_samples=data["num_samples"],
                    loss=data.get("loss"),
                    metrics=data.get("metrics", {}),
                )
                if reported is not None and counted:
                    privacy_ledger.record_reported_spend(update.pk, reported)
        except UpdateRefused as exc:
            if exc.bad_input:
                raise field_error("num_samples", str(exc)) from None
            raise Conflict(str(exc)) from None
        update.refresh_from_db()
        body = UpdateSerializer(update, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED if counted else status.HTTP_200_OK)

    @extend_schema(responses={200: s.SecureTaskSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["get"], url_path="secure")
    def secure(self, request, pk=None):
        """This site's step in the round's secure protocol now (``task``), or null."""
        round_, _ = self.selected()
        return Response(s.SecureTaskSerializer(service.task_for(round_, self.site)).data)

    def _post_step(self, request, kind: str):
        round_, _ = self.selected()
        limit = _limit(round_, kind)
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise PayloadTooLarge(f"a {kind} message for this round is at most {limit} bytes")
        try:
            result = service.post_for(round_, self.site, kind, request.data)
        except SecAggError as exc:
            raise ProtocolRefused(exc.message, code=exc.code) from None
        except (service.NotInProtocol, service.PhaseClosed) as exc:
            raise Conflict(str(exc)) from None
        return Response(
            {"round": round_.pk, "result": result},
            status=status.HTTP_201_CREATED if result == "posted" else status.HTTP_200_OK,
        )

    _STEP_SCHEMA = extend_schema(
        request=s.SecureMessageSerializer,
        responses={
            201: s.SecurePostedSerializer,
            200: s.SecurePostedSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            413: ErrorSerializer,
        },
    )

    @_STEP_SCHEMA
    @action(detail=True, methods=["post"], url_path="secure/advertise")
    def secure_advertise(self, request, pk=None):
        """Step 1: this site's two public keys and its seed commitment for the round."""
        return self._post_step(request, "advertise")

    @_STEP_SCHEMA
    @action(detail=True, methods=["post"], url_path="secure/shares")
    def secure_shares(self, request, pk=None):
        """Step 2: one ciphertext per shareholder (the roster says who)."""
        return self._post_step(request, "shares")

    @_STEP_SCHEMA
    @action(detail=True, methods=["post"], url_path="secure/masked")
    def secure_masked(self, request, pk=None):
        """Step 3: the masked vector (uint32 little-endian, base64): uniformly random alone."""
        return self._post_step(request, "masked")

    @_STEP_SCHEMA
    @action(detail=True, methods=["post"], url_path="secure/consistency")
    def secure_consistency(self, request, pk=None):
        """Step 4: this site's Ed25519 signature over the survivor list it was told."""
        return self._post_step(request, "consistency")

    @_STEP_SCHEMA
    @action(detail=True, methods=["post"], url_path="secure/unmask")
    def secure_unmask(self, request, pk=None):
        """Step 5: the shares this site reveals (seed shares of survivors, key shares of the
        dropped), once it has checked t signatures over the survivor list it signed."""
        return self._post_step(request, "unmask")

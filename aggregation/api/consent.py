"""A site's invitations to experiments and its decisions (accept, decline, withdraw).

Scoped to the caller's own site (``consent.invitations``): another site's invitation
is a 404. Accepting needs a person, a site admin (signed in or with their personal
token); declining and withdrawing may also come from the site's token, since saying
no is always safe. The coordinator reads every site's decision in the experiment's
``participants`` (aggregation/policy), not here.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from clients.api.permissions import IsSiteMember
from fedhealth.api.exceptions import Conflict
from fedhealth.api.filters import MAX_ID
from fedhealth.api.schema import ErrorSerializer

from ..models import Participant
from ..services import consent


class InvitationSerializer(serializers.Serializer):
    experiment = serializers.IntegerField(source="experiment_id")
    name = serializers.CharField(source="experiment.name")
    status = serializers.CharField(source="experiment.status")
    consent = serializers.SerializerMethodField(
        help_text="invited, accepted, declined, withdrawn, or terms_changed (accept again)."
    )
    terms = serializers.SerializerMethodField(help_text="What the site is asked to agree to.")
    terms_sha256 = serializers.SerializerMethodField()
    dataset = serializers.IntegerField(source="dataset_id", allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    decline_reason = serializers.CharField()
    withdrawn_from_round = serializers.IntegerField(allow_null=True)

    def _terms(self, obj: Participant) -> dict:
        cache = self.context.setdefault("terms", {})
        if obj.experiment_id not in cache:
            cache[obj.experiment_id] = consent.terms(obj.experiment)
        return cache[obj.experiment_id]

    def get_terms(self, obj: Participant) -> dict:
        return self._terms(obj)

    def get_terms_sha256(self, obj: Participant) -> str:
        return consent.hash_terms(self._terms(obj))

    def get_consent(self, obj: Participant) -> str:
        return consent.state(obj, self.get_terms_sha256(obj))


class AcceptSerializer(serializers.Serializer):
    dataset = serializers.IntegerField(help_text="One of the site's ready datasets.")


class DeclineSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=consent.MAX_REASON)


class InvitationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's site's invitations; ``{id}`` is the experiment's id."""

    queryset = Participant.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = InvitationSerializer
    permission_classes = [IsAuthenticated, IsSiteMember]
    lookup_field = "experiment_id"
    lookup_url_kwarg = "pk"

    def get_queryset(self):
        return consent.invitations(self.request.user)

    def get_object(self):
        # The lookup is on a foreign key's column (experiment_id), which Django does not
        # range-check as it does a primary key: an id past bigint reached the database.
        raw = str(self.kwargs.get(self.lookup_url_kwarg, ""))
        if not raw.isdigit() or not 0 < int(raw) <= MAX_ID:
            raise NotFound("no such invitation")
        return super().get_object()

    def _decide(self, decide) -> Response:
        p = self.get_object()  # 404 for another site's
        try:
            decide(p)
        except PermissionError as exc:
            raise PermissionDenied(str(exc)) from None
        except consent.ConsentError as exc:
            raise Conflict(str(exc)) from None
        return Response(self.get_serializer(self.get_queryset().get(pk=p.pk)).data)

    @extend_schema(
        request=AcceptSerializer,
        responses={200: InvitationSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
    )
    @action(detail=True, methods=["post"])
    def accept(self, request, pk=None):
        """Accept the experiment's current terms with one of the site's datasets (site admins)."""
        form = AcceptSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return self._decide(
            lambda p: consent.accept(p.pk, request.user, form.validated_data["dataset"])
        )

    @extend_schema(
        request=DeclineSerializer,
        responses={200: InvitationSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
    )
    @action(detail=True, methods=["post"])
    def decline(self, request, pk=None):
        """Decline, with a reason the coordinator reads."""
        form = DeclineSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return self._decide(
            lambda p: consent.decline(p.pk, request.user, form.validated_data["reason"])
        )

    @extend_schema(
        request=None,
        responses={200: InvitationSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
    )
    @action(detail=True, methods=["post"])
    def withdraw(self, request, pk=None):
        """Withdraw: not selected again from the next round; unclaimed work is closed."""
        return self._decide(lambda p: consent.withdraw(p.pk, request.user))

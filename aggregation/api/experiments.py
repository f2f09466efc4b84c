"""Experiments: create, list, detail, lifecycle actions, and their metrics history."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from aggregation import dispatch, policy, services
from aggregation.models import Experiment
from aggregation.permissions import visible_evaluations, visible_experiments
from aggregation.services.creation import ExperimentInvalid, create_experiment
from clients.api.permissions import IsCoordinator
from fedhealth.api.exceptions import Conflict
from fedhealth.api.fields import finite
from fedhealth.api.filters import Param
from fedhealth.api.schema import ErrorSerializer

from .serializers import ExperimentCreateSerializer, ExperimentSerializer, MetricsHistorySerializer

ACTIONS = {
    "start": services.start_experiment,
    "pause": services.pause_experiment,
    "resume": services.resume_experiment,
    "cancel": services.cancel_experiment,
}
COORDINATOR_ONLY = {"create", *ACTIONS}
LIFECYCLE_DOC = extend_schema(
    request=None,
    responses={
        200: ExperimentSerializer,
        202: OpenApiResponse(
            ExperimentSerializer,
            description="The change is made, but the message broker could not be reached: the work "
            "it starts is sent automatically once the broker is back. The body is the experiment "
            "plus `notice`, a message saying so.",
        ),
        409: ErrorSerializer,
    },
)


class ExperimentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Experiments: coordinators see and control all; sites see those they take part in."""

    queryset = Experiment.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = ExperimentSerializer
    filter_params = {"status": Param("status", "choice", Experiment.Status.values)}

    def get_queryset(self):
        return (
            visible_experiments(self.request.user)
            .prefetch_related("participants__site", "rounds")
            .order_by("-created_at", "-pk")
        )

    def get_permissions(self):
        if self.action in COORDINATOR_ONLY:
            return [IsAuthenticated(), IsCoordinator()]
        return super().get_permissions()

    def get_serializer_class(self):
        return ExperimentCreateSerializer if self.action == "create" else ExperimentSerializer

    @extend_schema(request=ExperimentCreateSerializer, responses={201: ExperimentSerializer})
    def create(self, request):
        """Create a draft experiment over ready datasets (coordinators only).

        With fewer than three sites, each site can infer the other's feature means and
        standard deviations from the normalizer and the rounds' sample counts; a site
        sees figures over the sites only when at least three stand behind them."""
        form = ExperimentCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user = request.user if isinstance(request.user, get_user_model()) else None
        try:
            experiment = create_experiment(created_by=user, **form.validated_data)
        except ExperimentInvalid as exc:  # a dataset changed since the check: same 400
            raise ValidationError(exc.errors) from None
        return Response(
            ExperimentSerializer(
                self.get_queryset().get(pk=experiment.pk), context=self.get_serializer_context()
            ).data,
            status=status.HTTP_201_CREATED,
        )

    def _transition(self, name: str) -> Response:
        experiment = self.get_object()
        try:
            with dispatch.report() as sent:  # see LIFECYCLE_DOC: 202 when not queued
                ACTIONS[name](experiment.pk)
        except services.TransitionError as exc:
            raise Conflict(str(exc)) from None
        read = ExperimentSerializer(
            self.get_queryset().get(pk=experiment.pk), context=self.get_serializer_context()
        )
        if sent.notice:
            return Response({**read.data, "notice": sent.notice}, status=status.HTTP_202_ACCEPTED)
        return Response(read.data)

    @LIFECYCLE_DOC
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        """Draft -> running: fix the normaliser and the initial model, open round 1."""
        return self._transition("start")

    @LIFECYCLE_DOC
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Running -> paused: the round in flight finishes, no new round opens."""
        return self._transition("pause")

    @LIFECYCLE_DOC
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Paused -> running."""
        return self._transition("resume")

    @LIFECYCLE_DOC
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Any unfinished experiment -> cancelled."""
        return self._transition("cancel")

    @extend_schema(responses={200: MetricsHistorySerializer})
    @action(detail=True, methods=["get"])
    def metrics(self, request, pk=None):
        """Per round: training loss, samples, accepted/rejected sites, and the resulting
        model's mean evaluation, plus the per-site evaluations the caller may see.
        A site sees only its own acceptance, and aggregates only when final and backed by
        at least FEDHEALTH_MIN_FIGURE_SITES sites (see the round and version metrics)."""
        experiment = self.get_object()
        evaluations = visible_evaluations(request.user).filter(version__experiment=experiment)
        body = policy.metrics_history(policy.viewer_of(request.user), experiment, evaluations)
        return Response(finite(MetricsHistorySerializer(body).data))

"""Rounds, client updates and model versions (metadata, weights download, predictions)."""

from __future__ import annotations

import json

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response

from aggregation import policy
from aggregation.models import ClientUpdate, ModelVersion, Round
from aggregation.permissions import visible_rounds, visible_updates, visible_versions
from aggregation.services.predict import personal_model, predict_records
from audit import services as audit
from fedhealth.api.filters import Param
from fedhealth.files import read_bytes
from fedhealth.ml.weights_io import sha256_hex

from .serializers import (
    ModelVersionSerializer,
    PredictRequestSerializer,
    PredictResponseSerializer,
    RoundSerializer,
    UpdateSerializer,
)

BINARY = OpenApiResponse(
    {"type": "string", "format": "binary"},
    description="safetensors bytes; `X-Content-SHA256` holds their SHA-256.",
)


class FirstRenderer(BaseContentNegotiation):
    """Downloads answer bytes whatever the Accept header says; errors stay JSON."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def weights_response(data: bytes, filename: str, **headers: str) -> HttpResponse:
    """safetensors bytes with their checksum (the client must verify it)."""
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-SHA256"] = sha256_hex(data)
    for name, value in headers.items():
        response[name] = value
    return response


class RoundViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Rounds of the experiments visible to the caller."""

    queryset = Round.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = RoundSerializer
    filter_params = {
        "experiment": Param("experiment_id", "int"),
        "status": Param("status", "choice", Round.Status.values),
    }

    def get_queryset(self):
        return (
            visible_rounds(self.request.user)
            .select_related("model_version", "experiment")
            .prefetch_related("experiment__participants__site")  # for the policy's round figures
            .order_by("experiment_id", "number")
        )


class UpdateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Client updates: a site sees its own, a coordinator every site's (figures, no weights)."""

    queryset = ClientUpdate.objects.none()
    serializer_class = UpdateSerializer
    filter_params = {
        "experiment": Param("round__experiment_id", "int"),
        "round": Param("round_id", "int"),
        "site": Param("site__slug", "slug", description="site slug"),
        "status": Param("status", "choice", ClientUpdate.Status.values),
    }

    def get_queryset(self):
        return visible_updates(self.request.user).order_by("round_id", "site__slug")


class ModelVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Global model versions: metadata, weights and predictions."""

    queryset = ModelVersion.objects.none()
    serializer_class = ModelVersionSerializer
    filter_params = {"experiment": Param("experiment_id", "int")}

    def get_queryset(self):
        if self.action == "predict":
            # One row by id, the API's hot path: no ordering, no joined round.
            return visible_versions(self.request.user)
        return (
            visible_versions(self.request.user)
            .select_related("round")
            .order_by("experiment_id", "-version")
        )

    def get_throttles(self):
        self.throttle_scope = "predict" if self.action == "predict" else "api"
        return super().get_throttles()

    @extend_schema(responses={(200, "application/octet-stream"): BINARY})
    @action(detail=True, methods=["get"], content_negotiation_class=FirstRenderer)
    def weights(self, request, pk=None):
        """The version's weights as safetensors. Scale inputs with the version's
        normaliser (also in `X-Normalizer`, JSON) before feeding them to the model."""
        version = self.get_object()
        data = read_bytes(version.weights_file)
        if sha256_hex(data) != version.sha256:
            raise RuntimeError(f"stored weights of version {version.pk} fail their checksum")
        audit.record(audit.Kind.MODEL_DOWNLOAD, target=f"model version {version.pk}", details={"via": "api"})
        return weights_response(
            data,
            f"experiment-{version.experiment_id}-v{version.version}.safetensors",
            **{
                "X-Model-Version": str(version.version),
                "X-Normalizer": json.dumps(version.normalizer),
            },
        )

    @extend_schema(request=PredictRequestSerializer, responses={200: PredictResponseSerializer})
    @action(detail=True, methods=["post"])
    def predict(self, request, pk=None):
        """Probabilities and labels (threshold 0.5) for one record or a batch.
        Every value is checked against the schema; errors name record and field."""
        version = self.get_object()
        form = PredictRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        single = "record" in form.validated_data
        records = [form.validated_data["record"]] if single else form.validated_data["records"]
        personal = None
        if form.validated_data.get("personal"):
            personal = personal_model(policy.viewer_of(request.user), version)
            if personal is None:
                raise ValidationError({"personal": ["your site has no personalised model of this experiment."]})
        result = predict_records(version, records, personal=personal)
        if not result.ok:
            key = "record" if single else "records"
            errors: dict = {}
            for e in result.errors:
                path = key if single else f"{key}.{e.record}"
                errors.setdefault(f"{path}.{e.field}" if e.field else path, []).append(e.message)
            raise ValidationError(errors)
        return Response(
            {
                "model": version.pk,
                "experiment": version.experiment_id,
                "version": version.version,
                "personal": personal is not None,
                "threshold": 0.5,
                "probabilities": result.probabilities,
                "labels": result.labels,
            }
        )

"""Sites and datasets over the API. Querysets are scoped by clients/permissions.py."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.template.defaultfilters import filesizeformat
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.generics import get_object_or_404
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from clients.api.permissions import IsSiteAgent, IsSiteMember
from clients.deletion import DatasetDeletionRefused, delete_dataset
from clients.models import Dataset, Site
from clients.permissions import is_site_admin, site_of, visible_datasets, visible_sites
from clients.services import (
    DatasetSummaryError,
    UploadRefused,
    check_can_upload,
    ingest_dataset,
    register_remote_dataset,
)
from clients.views.access import SizeLimitedUploadHandler
from fedhealth.api.exceptions import Conflict, InvalidWithContext, PayloadTooLarge, field_error
from fedhealth.api.filters import Param
from fedhealth.api.parsers import JSONParser
from fedhealth.api.schema import ErrorSerializer
from fedhealth.ml.validation import Policy

from .serializers import (
    DatasetRegisterSerializer,
    DatasetSerializer,
    DatasetUploadResultSerializer,
    DatasetUploadSerializer,
    SiteSerializer,
)


class SiteViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Sites: a coordinator sees all; a site member (or site token) its own."""

    queryset = Site.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = SiteSerializer
    filter_params = {
        "mode": Param("mode", "choice", Site.Mode.values),
        "is_active": Param("is_active", "bool"),
        "slug": Param("slug", "slug"),
    }

    def get_queryset(self):
        return visible_sites(self.request.user).order_by("name")


class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Dataset summaries (schema, counts, label balance, statistics); never rows or files."""

    queryset = Dataset.objects.none()
    serializer_class = DatasetSerializer
    parser_classes = [MultiPartParser]  # only create() has a body: the CSV upload
    filter_params = {
        "site": Param("site__slug", "slug", description="site slug"),
        "status": Param("status", "choice", Dataset.Status.values),
    }

    def get_queryset(self):
        return visible_datasets(self.request.user).order_by("-created_at", "-pk")

    def get_permissions(self):
        if self.action == "create":
            return [IsAuthenticated(), IsSiteMember()]
        return super().get_permissions()

    def get_throttles(self):
        self.throttle_scope = "upload" if self.action == "create" else "api"
        return super().get_throttles()

    @extend_schema(
        request=None,
        responses={200: DatasetSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def destroy(self, request, pk=None):
        """Delete one of your site's datasets (site admins, personal token): its file leaves
        storage; the record keeps its summary and the deletion (docs/sites.md). 409 while a
        running or paused experiment still trains on it: withdraw it first."""
        site = site_of(request.user)
        if site is None:  # a coordinator: sees summaries, never deletes a site's data
            raise PermissionDenied("Only a site admin deletes a dataset.")
        # Within the caller's own site first: another site's dataset is a 404.
        dataset = get_object_or_404(Dataset.objects.filter(site=site), pk=pk)
        if not is_site_admin(request.user):
            raise PermissionDenied("Only a site admin deletes a dataset.")
        try:
            dataset = delete_dataset(dataset, by=request.user)
        except DatasetDeletionRefused as exc:
            raise Conflict(exc.message) from None
        return Response(self.get_serializer(dataset).data)

    @extend_schema(
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={
            201: DatasetUploadResultSerializer,
            413: ErrorSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="Invalid form, or the CSV failed "
                "validation (then `report` holds the validation report).",
            ),
        },
    )
    def create(self, request):
        """Upload a hosted site's CSV: validated by the core, stored site-privately.

        Agent-mode sites never upload rows: they register a summary (/agent/datasets/).
        """
        site = site_of(request.user)
        try:
            check_can_upload(site)  # before the body is read: an agent site's rows stay home
        except UploadRefused as exc:
            raise PermissionDenied(exc.message) from None
        # The body is staged in this site's private staging folder (fedhealth/uploads.py),
        # and reading stops once the file passes the limit: nothing more reaches the disk.
        request._request.site = site
        request._request.upload_handlers.insert(
            0, SizeLimitedUploadHandler(request._request, settings.FEDHEALTH_MAX_UPLOAD_BYTES)
        )
        request.data  # noqa: B018 (parse the body now, with the handler in place)
        if request._request.upload_too_large:
            raise PayloadTooLarge(
                f"The file is larger than the {filesizeformat(settings.FEDHEALTH_MAX_UPLOAD_BYTES)} limit "
                "(FEDHEALTH_MAX_UPLOAD_BYTES). Split it, or ask your coordinator to raise the limit. "
                "Nothing was stored."
            )
        form = DatasetUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        user = request.user if isinstance(request.user, get_user_model()) else None
        try:
            result = ingest_dataset(
                site,
                upload,
                name=form.validated_data.get("name") or upload.name or "upload.csv",
                schema=form.validated_schema(),
                policy=Policy(form.validated_data["policy"]),
                user=user,
            )
        except UploadRefused as exc:
            if exc.field == "site":
                raise PermissionDenied(exc.message) from None
            raise field_error(exc.field, exc.message) from None
        body = DatasetUploadResultSerializer(
            result.dataset, context=self.get_serializer_context()
        ).data
        if not result.ok:
            messages = [p.message for p in result.report.problems] or ["the file failed validation"]
            raise InvalidWithContext(
                {"file": messages},
                summary=f"the CSV failed validation: {messages[0]}",
                context={"dataset": result.dataset.pk, "report": body["report"]},
            )
        return Response(body, status=status.HTTP_201_CREATED)


class AgentDatasetViewSet(viewsets.GenericViewSet):
    """An agent registers its local dataset's summary (statistics only, never rows)."""

    serializer_class = DatasetRegisterSerializer
    parser_classes = [JSONParser]
    permission_classes = [IsAuthenticated, IsSiteAgent]
    throttle_scope = "agent"

    def get_queryset(self):
        return Dataset.objects.none()

    @extend_schema(responses={201: DatasetSerializer, 200: DatasetSerializer})
    def create(self, request):
        """Register (idempotently) the summary of the agent's local CSV.

        201 when new; 200 with the existing dataset when the same summary was
        registered before (a restarted agent).
        """
        form = DatasetRegisterSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            dataset, created = register_remote_dataset(
                request.auth.site,
                data["schema"],
                data["row_count"],
                data["positive_count"],
                dict(data["stats"]),
                {k: dict(v) for k, v in data["summary"].items()},
                name=data.get("name", ""),
            )
        except DatasetSummaryError as exc:
            raise field_error(exc.field, str(exc)) from None
        return Response(
            DatasetSerializer(dataset, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

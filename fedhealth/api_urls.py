"""REST API routes (included at /api/ by fedhealth/urls.py).

/api/v1/...        resources and the site-agent protocol (/api/v1/agent/...)
/api/v1/schema/    the OpenAPI 3 schema
/api/docs/         Swagger UI, assets served locally (drf-spectacular-sidecar)
"""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from aggregation.api.agent import AgentModelViewSet, AgentRoundViewSet, AssignmentsView
from aggregation.api.agent_comparison import AgentExperimentViewSet
from aggregation.api.consent import InvitationViewSet
from aggregation.api.experiments import ExperimentViewSet
from aggregation.api.records import ModelVersionViewSet, RoundViewSet, UpdateViewSet
from clients.api.views import AgentDatasetViewSet, DatasetViewSet, SiteViewSet
from fedhealth.api import schema  # noqa: F401  (registers the token scheme with drf-spectacular)
from fedhealth.api.exceptions import not_found

# No ".json" suffix routes: nothing uses them, and every custom action answered them
# with a 500 (DRF passes the suffix as a ``format`` argument the actions do not take).
router = DefaultRouter()
router.include_format_suffixes = False
router.register("sites", SiteViewSet, basename="site")
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("experiments", ExperimentViewSet, basename="experiment")
router.register("invitations", InvitationViewSet, basename="invitation")
router.register("rounds", RoundViewSet, basename="round")
router.register("updates", UpdateViewSet, basename="update")
router.register("models", ModelVersionViewSet, basename="modelversion")
router.register("agent/datasets", AgentDatasetViewSet, basename="agent-dataset")
router.register("agent/rounds", AgentRoundViewSet, basename="agent-round")
router.register("agent/models", AgentModelViewSet, basename="agent-model")
router.register("agent/experiments", AgentExperimentViewSet, basename="agent-experiment")

urlpatterns = [
    path("v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("v1/agent/assignments/", AssignmentsView.as_view(), name="agent-assignments"),
    path("v1/", include(router.urls)),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # One documentation page (Swagger UI, served from static/): ReDoc was dropped because
    # it needs inline styles and links its "powered by" logo from another host.
    # Last: an unknown /api/ URL answers in the API's error format.
    re_path(r"^", not_found),
]

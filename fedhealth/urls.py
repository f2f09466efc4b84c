from django.contrib import admin
from django.urls import include, path

from . import views
from .ops import metrics, ready

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", ready.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("fedhealth.api_urls")),
    path("", include("fedhealth.web_urls")),
]

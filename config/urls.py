"""URL areas: / student, /label/ labeler, /studio/ admin, /admin/ Django admin, /api/ REST."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config import metrics
from tutor import health, views_auth

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="prometheus-django-metrics"),
    path("", views_auth.home, name="home"),
    path("accounts/", include("tutor.urls_accounts")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("api/", include("tutor.api_urls")),
    path("api/", include("feedback.api_urls")),
    path("api/", include("training.api_urls")),
    path("label/", include("feedback.urls")),
    path("studio/", include("training.urls")),
    path("", include("tutor.urls")),
]

"""Student and account API (mounted at /api/)."""

from django.urls import path

from tutor import api

urlpatterns = [
    path("me/", api.MeView.as_view(), name="api-me"),
    path("auth/token/", api.ObtainTokenView.as_view(), name="api-token"),
]

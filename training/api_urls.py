"""Studio API (mounted at /api/)."""

from django.urls import path

from training import api

urlpatterns = [
    path("studio/overview/", api.OverviewView.as_view(), name="api-studio-overview"),
]

"""Labeler API (mounted at /api/)."""

from django.urls import path

from feedback import api

urlpatterns = [
    path("label/queue/", api.QueueView.as_view(), name="api-label-queue"),
]

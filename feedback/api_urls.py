"""Labeler API (mounted at /api/)."""

from django.urls import path

from feedback import api

urlpatterns = [
    path("label/queue/", api.QueueView.as_view(), name="api-label-queue"),
    path("label/next/", api.NextTaskView.as_view(), name="api-label-next"),
    path("label/tasks/<int:task_id>/submit/", api.SubmitView.as_view(), name="api-label-submit"),
    path("label/tasks/<int:task_id>/skip/", api.SkipView.as_view(), name="api-label-skip"),
    path("label/stats/", api.StatsView.as_view(), name="api-label-stats"),
    path("label/snapshots/", api.SnapshotsView.as_view(), name="api-label-snapshots"),
]

"""Studio API (mounted at /api/): what the studio's live views poll, and the actions for scripts."""

from django.urls import path

from training import api

urlpatterns = [
    path("studio/overview/", api.OverviewView.as_view(), name="api-studio-overview"),
    path("studio/jobs/", api.JobListView.as_view(), name="api-studio-jobs"),
    path("studio/jobs/<int:pk>/", api.JobDetailView.as_view(), name="api-studio-job"),
    path("studio/jobs/<int:pk>/cancel/", api.JobCancelView.as_view(), name="api-studio-job-cancel"),
    path("studio/versions/", api.VersionListView.as_view(), name="api-studio-versions"),
    # before the generic action route, which would otherwise take "optimise" as an action
    path("studio/versions/<int:pk>/optimise/", api.VersionOptimiseView.as_view(), name="api-studio-version-optimise"),
    path("studio/versions/<int:pk>/<str:action>/", api.VersionActionView.as_view(), name="api-studio-version-action"),
    path("studio/rollback/<slug:subject>/", api.RollbackView.as_view(), name="api-studio-rollback"),
    path("studio/benchmarks/", api.BenchmarkListView.as_view(), name="api-studio-benchmarks"),
]

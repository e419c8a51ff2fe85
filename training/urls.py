"""Admin studio pages (mounted at /studio/)."""

from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("", views.index, name="index"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job-retry"),
    path("launch/", views.launch, name="launch"),
    path("versions/", views.version_list, name="versions"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/promote/", views.version_promote, name="version-promote"),
    path("versions/<int:pk>/canary/", views.version_canary, name="version-canary"),
    path("versions/<int:pk>/retire/", views.version_retire, name="version-retire"),
    path("versions/<int:pk>/optimise/", views.version_optimise, name="version-optimise"),
    path("versions/<int:pk>/variants/", views.version_variants, name="version-variants"),
    path("versions/<int:pk>/gate/", views.version_gate, name="version-gate"),
    path("rollback/<slug:subject>/", views.rollback, name="rollback"),
    path("compare/", views.compare, name="compare"),
    path("schedule/", views.schedule, name="schedule"),
    path("benchmarks/", views.benchmarks, name="benchmarks"),
    path("benchmarks/run/", views.benchmarks_run, name="benchmarks-run"),
    path("benchmarks/<slug:subject>/", views.benchmarks, name="benchmarks-subject"),
    path("sources/<slug:slug>/", views.feedback_source, name="feedback-source"),
]

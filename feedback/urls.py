"""Labeler pages (mounted at /label/) and the feedback admin pages under /label/admin/."""

from django.urls import path

from feedback import views

app_name = "feedback"

urlpatterns = [
    path("", views.index, name="index"),
    path("guidelines/", views.guidelines, name="guidelines"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("admin/actions/", views.admin_actions, name="admin_actions"),
    path("admin/import/", views.admin_import, name="admin_import"),
    path("admin/snapshots/", views.admin_snapshots, name="admin_snapshots"),
]

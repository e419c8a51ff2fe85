"""Student pages (mounted at /)."""

from django.urls import path

from tutor import views

app_name = "tutor"

urlpatterns = [
    path("chat/", views.index, name="index"),
]

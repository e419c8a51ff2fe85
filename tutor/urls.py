"""Student pages (mounted at /)."""

from django.urls import path

from tutor import views

app_name = "tutor"

urlpatterns = [
    path("chat/", views.index, name="index"),
    path("chat/new/", views.new_conversation, name="new"),
    path("chat/history/", views.history, name="history"),
    path("chat/settings/", views.settings_page, name="settings"),
    path("chat/c/<int:pk>/", views.conversation, name="conversation"),
    path("chat/c/<int:pk>/send/", views.send, name="send"),
    path("chat/c/<int:pk>/regenerate/", views.regenerate, name="regenerate"),
    path("chat/c/<int:pk>/rename/", views.rename, name="rename"),
    path("chat/c/<int:pk>/delete/", views.delete, name="delete"),
    path("chat/c/<int:pk>/consent/", views.conversation_consent, name="consent"),
    path("chat/c/<int:pk>/turn/<int:message_id>/", views.turn_fragment, name="turn"),
    path("chat/m/<int:message_id>/rate/", views.rate, name="rate"),
]

"""Student and account API (mounted at /api/)."""

from django.urls import path

from tutor import api, api_chat

urlpatterns = [
    path("me/", api.MeView.as_view(), name="api-me"),
    path("auth/token/", api.ObtainTokenView.as_view(), name="api-token"),
    path("subjects/", api_chat.SubjectListView.as_view(), name="api-subjects"),
    path("profile/", api_chat.ProfileView.as_view(), name="api-profile"),
    path("conversations/", api_chat.ConversationListView.as_view(), name="api-conversations"),
    path("conversations/<int:pk>/", api_chat.ConversationDetailView.as_view(), name="api-conversation"),
    path("conversations/<int:pk>/messages/", api_chat.MessageCreateView.as_view(), name="api-messages"),
    path("conversations/<int:pk>/regenerate/", api_chat.RegenerateView.as_view(), name="api-regenerate"),
    path("messages/<int:pk>/rating/", api_chat.RatingView.as_view(), name="api-rating"),
    path("ratings/", api_chat.RatingListView.as_view(), name="api-ratings"),
]

"""Login, logout, password change and student sign-up (mounted at /accounts/)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from tutor import views_auth

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("signup/", views_auth.signup, name="signup"),
]

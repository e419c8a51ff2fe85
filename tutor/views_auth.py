"""Account pages: sign-up for students, and the home page that sends each role to its area."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render

from tutor.accounts import create_user
from tutor.forms import SignupForm
from tutor.roles import Role, is_admin, is_labeler, is_student


def signup(request):
    if not settings.TUTOR_ALLOW_SIGNUP:
        raise Http404("sign-up is turned off")
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            user = create_user(
                username=form.cleaned_data["username"],
                email=form.cleaned_data.get("email") or "",
                password=form.cleaned_data["password1"],
                role=Role.STUDENT,
                validate_password=False,  # UserCreationForm already validated it
            )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def home(request):
    """Send each role to its own area; a user with no role sees an explanation."""
    user = request.user
    if is_student(user):
        return redirect("tutor:index")
    if is_admin(user):
        return redirect("training:index")
    if is_labeler(user):
        return redirect("feedback:index")
    return render(request, "no_role.html", status=403)

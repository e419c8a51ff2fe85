"""Labeler pages. Thin: validate, call one service or selector, render."""

from django.shortcuts import render

from tutor.permissions import role_required
from tutor.roles import Role


@role_required(Role.LABELER)
def index(request):
    return render(request, "feedback/index.html")

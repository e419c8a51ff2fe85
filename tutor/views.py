"""Student pages. Thin: validate, call one service or selector, render."""

from django.shortcuts import render

from tutor.permissions import role_required
from tutor.roles import Role


@role_required(Role.STUDENT)
def index(request):
    return render(request, "tutor/index.html")

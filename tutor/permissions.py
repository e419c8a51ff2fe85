"""Role checks for pages (mixins/decorators, 403) and the API (DRF permissions, 403 JSON)."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.mixins import LoginRequiredMixin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from tutor.roles import Role, has_role, is_admin


def _allowed(user, role: Role) -> bool:
    return is_admin(user) if role == Role.ADMIN else has_role(user, role)


def role_required(role: Role):
    """Page decorator: anonymous → login redirect; wrong role → 403."""

    def deco(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not _allowed(request.user, role):
                raise PermissionDenied(f"this area needs the {role.value} role")
            return view(request, *args, **kwargs)

        return wrapper

    return deco


class RoleRequiredMixin(LoginRequiredMixin):
    """Class-based page mixin with the same rules as role_required."""

    required_role: Role = Role.STUDENT

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if not _allowed(request.user, self.required_role):
            raise PermissionDenied(f"this area needs the {self.required_role.value} role")
        return super().dispatch(request, *args, **kwargs)


class _HasRole(BasePermission):
    role: Role

    @property
    def message(self) -> str:  # DRF puts this in the 403 JSON body
        return f"this endpoint needs the {self.role.value} role"

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and _allowed(request.user, self.role))


class IsStudent(_HasRole):
    role = Role.STUDENT


class IsLabeler(_HasRole):
    role = Role.LABELER


class IsAdmin(_HasRole):
    role = Role.ADMIN

"""The three roles, as Django groups, and the checks every area uses.

Admins are staff and may enter every area; labelers enter /label/; students enter /.
"""

from __future__ import annotations

from enum import StrEnum

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group


class Role(StrEnum):
    STUDENT = "student"
    LABELER = "labeler"
    ADMIN = "admin"


def ensure_groups() -> None:
    """Create the role groups (idempotent; also run by a data migration)."""
    for role in Role:
        Group.objects.get_or_create(name=role.value)


def user_roles(user: AbstractBaseUser | AnonymousUser | None) -> set[Role]:
    if user is None or not user.is_authenticated:
        return set()
    cache = getattr(user, "_tutor_roles", None)
    if cache is None:
        names = set(user.groups.values_list("name", flat=True))
        cache = {r for r in Role if r.value in names}
        if user.is_superuser:
            cache.add(Role.ADMIN)
        user._tutor_roles = cache
    return cache


def has_role(user, role: Role) -> bool:
    """Admins may act in every area (they supervise it); others only in their own."""
    roles = user_roles(user)
    return role in roles or (Role.ADMIN in roles and getattr(user, "is_staff", False))


def is_student(user) -> bool:
    return Role.STUDENT in user_roles(user)


def is_labeler(user) -> bool:
    return has_role(user, Role.LABELER)


def is_admin(user) -> bool:
    return Role.ADMIN in user_roles(user) and getattr(user, "is_staff", False)

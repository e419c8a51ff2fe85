"""Account services: creating users in a role (signup, admin, CLI) in one transaction."""

from __future__ import annotations

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from tutor.roles import Role, ensure_groups


@transaction.atomic
def create_user(
    *, username: str, password: str, role: Role | str, email: str = "", validate_password: bool = True
):
    """Create a user in exactly one role. Admins are staff. Raises ValidationError on bad input."""
    role = Role(role)
    User = get_user_model()
    if not username or not username.strip():
        raise ValidationError("username is required")
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError(f"user {username!r} already exists")
    user = User(username=username, email=email, is_staff=(role == Role.ADMIN))
    if validate_password:
        password_validation.validate_password(password, user)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    ensure_groups()
    user.groups.add(Group.objects.get(name=role.value))
    return user


@transaction.atomic
def ensure_user(*, username: str, password: str, role: Role | str):
    """Create the user if absent, else reset its password and role (used by the demo seed)."""
    role = Role(role)
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        return create_user(username=username, password=password, role=role, validate_password=False)
    user.set_password(password)
    user.is_staff = role == Role.ADMIN
    user.save()
    ensure_groups()
    user.groups.set([Group.objects.get(name=role.value)])
    return user

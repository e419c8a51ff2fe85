"""Token authentication for the labeling API that reads the user's roles in the same query.

Why: DRF's ``TokenAuthentication`` reads token + user, then the role check (``tutor.roles.user_roles``)
reads the user's groups: two round trips and two ORM compilations on every ``next`` and ``submit``. Here
one statement, compiled once (``feedback.compiled``), returns the user with one flag per role, and the
roles are cached on the user object exactly as ``user_roles`` caches them. Same errors as DRF's class
(invalid token, inactive user: 401), and the same OpenAPI security scheme (it is a subclass).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Exists, F, OuterRef
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from feedback import compiled
from tutor.roles import Role


def _user_with_roles(values: dict):
    user_model = get_user_model()
    groups = user_model.groups.through.objects
    flags = {f"role_{role.value}": Exists(groups.filter(user_id=OuterRef("pk"), group__name=role.value))
             for role in Role}
    return (user_model.objects.filter(auth_token__key=values["key"])
            .annotate(token_created=F("auth_token__created"), **flags))


class TokenWithRolesAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``; the user comes back with its roles already read."""

    def authenticate_credentials(self, key):
        user = compiled.first("token user with roles", get_user_model(), _user_with_roles, {"key": key})
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        roles = {role for role in Role if getattr(user, f"role_{role.value}")}
        if user.is_superuser:
            roles.add(Role.ADMIN)
        user._tutor_roles = roles  # tutor.roles.user_roles' per-object cache: no groups query
        token = Token(key=key, user=user, created=user.token_created)
        token._state.adding, token._state.db = False, user._state.db
        return user, token

"""Account API: who am I, and token auth for scripts (simulated labelers, benchmarks)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response
from rest_framework.views import APIView

from tutor.roles import user_roles


class MeView(APIView):
    """The authenticated user and their roles."""

    @extend_schema(
        responses=inline_serializer(
            "Me", {"id": serializers.IntegerField(), "username": serializers.CharField(),
                   "roles": serializers.ListField(child=serializers.CharField())}
        )
    )
    def get(self, request):
        user = request.user
        return Response({"id": user.id, "username": user.username, "roles": sorted(r.value for r in user_roles(user))})


class ObtainTokenView(ObtainAuthToken):
    """POST username + password, get a token for `Authorization: Token <key>`."""

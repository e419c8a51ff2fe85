"""Studio API views."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tutor.permissions import IsAdmin


class OverviewView(APIView):
    """Figures for the studio overview."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=inline_serializer("Overview", {"users": serializers.IntegerField()}))
    def get(self, request):
        from django.contrib.auth import get_user_model

        return Response({"users": get_user_model().objects.count()})

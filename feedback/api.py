"""Labeler API views."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tutor.permissions import IsLabeler


class QueueView(APIView):
    """The labeler's queue summary."""

    permission_classes = [IsLabeler]

    @extend_schema(responses=inline_serializer("Queue", {"in_queue": serializers.IntegerField()}))
    def get(self, request):
        return Response({"in_queue": 0})

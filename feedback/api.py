"""Labeler API (token or session auth): next task, submit, skip, my stats; admin: snapshots.

Thin: validate with a serializer, call one service/selector, return. Simulated labelers drive
the whole labeling flow through these endpoints.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback import selectors, services
from feedback import serializers as s
from feedback.models import DatasetSnapshot
from feedback.services import FeedbackError
from tutor.permissions import IsAdmin, IsLabeler

EMPTY_MESSAGE = "No tasks need your labels right now. Thank you! Check back later."


def _error(exc: FeedbackError) -> Response:
    return Response({"detail": exc.message, **exc.payload}, status=exc.status)


def _ranking_out(ranking) -> dict:
    return s.RankingOut(ranking).data


class QueueView(APIView):
    """The labeler's queue summary."""

    permission_classes = [IsLabeler]

    @extend_schema(responses=inline_serializer("Queue", {"in_queue": serializers.IntegerField()}))
    def get(self, request):
        return Response({"in_queue": selectors.queue_size(request.user)})


class NextTaskView(APIView):
    """Lease the next task (or resume the one you hold). ``task`` is null when the queue is empty."""

    permission_classes = [IsLabeler]

    @extend_schema(request=None, responses=s.NextOut, parameters=None)
    def post(self, request):
        subject = request.query_params.get("subject") or None
        lease = services.next_task(request.user, subject=subject)
        payload = selectors.task_payload(lease.assignment, rows=lease.rows) if lease else None
        return Response({"task": payload, "resumed": bool(lease and lease.resumed),
                         "message": "" if lease else EMPTY_MESSAGE,
                         "progress": selectors.progress(request.user)})


class SubmitView(APIView):
    """Submit a ranking. Idempotent: a retry returns the stored ranking (200, created=false)."""

    permission_classes = [IsLabeler]

    @extend_schema(request=s.SubmitIn, responses={
        201: s.SubmitOut, 200: s.SubmitOut,
        409: OpenApiResponse(s.RefusedOut, description="lease expired and the task was filled; work shown back"),
        400: OpenApiResponse(s.RefusedOut, description="invalid ranking")})
    def post(self, request, task_id: int):
        body = s.SubmitIn(data=request.data)
        if not body.is_valid():
            return Response({"detail": "invalid submission", "errors": body.errors, "your_submission": request.data},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            result = services.submit_ranking(request.user, task_id, body.validated_data)
        except FeedbackError as exc:
            if exc.status == 400:
                exc.payload.setdefault("your_submission", request.data)
            return _error(exc)
        return Response({"ranking": _ranking_out(result.ranking), "created": result.created,
                         "progress": selectors.progress(request.user)},
                        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class SkipView(APIView):
    """Skip a leased task with a reason."""

    permission_classes = [IsLabeler]

    @extend_schema(request=s.SkipIn, responses={200: s.SkipOut, 409: s.RefusedOut})
    def post(self, request, task_id: int):
        body = s.SkipIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            assignment = services.skip_task(request.user, task_id, body.validated_data["reason"])
        except FeedbackError as exc:
            return _error(exc)
        return Response({"task_id": task_id, "status": assignment.status,
                         "progress": selectors.progress(request.user)})


class StatsView(APIView):
    """My labeling stats: done today/total, skips, queue size, reliability, gold accuracy."""

    permission_classes = [IsLabeler]

    @extend_schema(responses=s.ProgressOut)
    def get(self, request):
        return Response(selectors.progress(request.user))


class SnapshotsView(APIView):
    """Admins: list preference snapshots, or create one (idempotent by content hash)."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=s.SnapshotOut(many=True))
    def get(self, request):
        return Response(s.SnapshotOut(DatasetSnapshot.objects.order_by("-id")[:100], many=True).data)

    @extend_schema(request=s.SnapshotIn, responses={201: s.SnapshotOut, 200: s.SnapshotOut})
    def post(self, request):
        body = s.SnapshotIn(data=request.data)
        body.is_valid(raise_exception=True)
        before = DatasetSnapshot.objects.count()
        snap = services.create_snapshot(since_ranking_id=body.validated_data.get("since_ranking_id"))
        created = DatasetSnapshot.objects.count() > before
        return Response(s.SnapshotOut(snap).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

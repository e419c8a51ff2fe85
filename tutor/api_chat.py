"""Student chat API: subjects, conversations, messages (JSON or streamed), ratings, consent.

The chat page's JavaScript uses these same endpoints, so pages and API share permissions,
throttling and the failure behaviour. Streaming: ``?stream=1`` or ``Accept:
application/jsonlines`` (one JSON event per line) or ``Accept: text/event-stream`` (SSE). The
message and regenerate views are async views around DRF's synchronous dispatch: auth, permission,
throttle, the conversation, saving the message and reading the context for the endpoint run in ONE
thread hop, then the body (an async generator the ASGI server drives) proxies the endpoint on the event
loop, so tokens flow as the endpoint produces them and no thread is held while they do.
"""

from __future__ import annotations

import contextlib
import json
import logging

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from config import request_id
from tutor import selectors, services
from tutor.models import Message, Rating, Subject
from tutor.permissions import IsStudent
from tutor.serializers import (
    AnswerSerializer,
    ConversationDetailSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    MessageCreateSerializer,
    ProfileSerializer,
    RatingSerializer,
    SubjectSerializer,
)

log = logging.getLogger(__name__)

STREAM_TYPES = {"application/jsonlines": "jsonl", "application/x-ndjson": "jsonl", "text/event-stream": "sse"}


def _throttle_cache():
    """The default cache, unless it is the embedded file cache: a file write per message costs
    ~5 ms of the time to first token, so the single-process demo counts in memory instead.
    (With REDIS_URL the shared Redis cache is used, correct across web processes.)"""
    from django.core.cache import caches
    from django.core.cache.backends.filebased import FileBasedCache
    from django.core.cache.backends.locmem import LocMemCache

    default = caches["default"]
    return LocMemCache("tutor-throttle", {}) if isinstance(default, FileBasedCache) else default


class StudentMessageThrottle(UserRateThrottle):
    """Per-student rate limit on asking (``REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']['student_messages']``)."""

    scope = "student_messages"
    cache = _throttle_cache()

    def allow_request(self, request, view) -> bool:
        """Fail open when the shared cache (Redis) is down: the student's question must not get a 500 for a
        rate limit that cannot be read (seen in the soak while Redis restarted); the outage is logged."""
        from redis.exceptions import RedisError

        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            log.warning("student message rate limit not checked: the cache is unavailable (%s)", exc)
            return True


class JSONLinesRenderer(BaseRenderer):
    """Lets ``Accept: application/jsonlines`` negotiate; errors render as one JSON line."""

    media_type = "application/jsonlines"
    format = "jsonl"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return json.dumps(data).encode() + b"\n"


class NDJSONRenderer(JSONLinesRenderer):
    media_type = "application/x-ndjson"
    format = "ndjson"


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return f"data: {json.dumps(data)}\n\n".encode()


def stream_format(request) -> str | None:
    """"jsonl"/"sse" when the client asked for a stream, else None (JSON answer)."""
    accept = request.META.get("HTTP_ACCEPT", "")
    for media, fmt in STREAM_TYPES.items():
        if media in accept:
            return fmt
    if request.query_params.get("stream") in {"1", "true", "yes", "jsonl"}:
        return "jsonl"
    if request.query_params.get("stream") == "sse":
        return "sse"
    return None


def streaming_response(reply_to: Message, fmt: str, first: dict, payload: dict | None = None) -> StreamingHttpResponse:
    """The answer as a stream of events; ``payload`` (``services.endpoint_payload``) read by the caller in
    the same thread hop as the message, else read in the body."""
    rid = request_id.get()  # the body runs after the middleware returned: carry the request id into it

    async def body():
        token = request_id.set(rid)
        try:
            yield services.encode_event(first, fmt)
            async for event in services.stream_answer(reply_to, payload):
                yield services.encode_event(event, fmt)
        finally:
            with contextlib.suppress(ValueError):  # closed from another context: nothing to restore there
                request_id.reset(token)

    content_type = "text/event-stream" if fmt == "sse" else "application/jsonlines"
    resp = StreamingHttpResponse(body(), content_type=f"{content_type}; charset=utf-8")
    resp["Cache-Control"] = "no-cache"
    resp["X-Accel-Buffering"] = "no"
    return resp


def _drf_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError({"detail": exc.messages[0] if exc.messages else str(exc)})


STREAM_DOC = (
    "With `?stream=1` or `Accept: application/jsonlines` the answer streams as JSON lines: "
    '`{"event": "start", ...}`, `{"event": "token", "text"}`…, then `{"event": "done", "message"}` or '
    '`{"event": "error", "error", "retryable": true, "message"}` (partial answer kept, marked incomplete). '
    "`Accept: text/event-stream` gives the same events as SSE `data:` lines."
)
ENDPOINT_DOWN = OpenApiResponse(
    inline_serializer("EndpointDown", {"detail": serializers.CharField(), "retryable": serializers.BooleanField(),
                                       "user_message": serializers.DictField()}),
    description="The endpoint is down or timed out; the student's message is kept. Retry with regenerate.",
)


class StudentAPIView(APIView):
    permission_classes = [IsStudent]


class SubjectListView(generics.ListAPIView):
    """Active subjects a conversation can be started in."""

    permission_classes = [IsStudent]
    serializer_class = SubjectSerializer
    pagination_class = None

    def get_queryset(self):
        return Subject.objects.filter(active=True)


class ConversationListView(generics.ListCreateAPIView):
    """The student's own conversations (``?q=`` searches titles and messages); create one."""

    permission_classes = [IsStudent]
    serializer_class = ConversationSerializer

    def get_queryset(self):
        return selectors.conversations_for(self.request.user, self.request.query_params.get("q"))

    @extend_schema(parameters=[OpenApiParameter("q", str, description="search titles and message text")])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def perform_create(self, serializer):
        try:
            serializer.instance = services.start_conversation(
                self.request.user, serializer.validated_data["subject"].slug,
                serializer.validated_data.get("consent_override"),
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None


class ConversationDetailView(StudentAPIView):
    """One of the student's conversations with its messages; rename or set consent; soft delete."""

    def get_object(self, pk: int):
        return selectors.get_conversation_for(self.request.user, pk)

    @extend_schema(responses=ConversationDetailSerializer)
    def get(self, request, pk: int):
        conv = self.get_object(pk)
        data = ConversationDetailSerializer(conv).data
        data["messages"] = [services.serialize_message(m) for m in conv.messages.select_related("rating")]
        return Response(data)

    @extend_schema(request=ConversationUpdateSerializer, responses=ConversationSerializer)
    def patch(self, request, pk: int):
        conv = self.get_object(pk)
        ser = ConversationUpdateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        kwargs = {}
        if "title" in ser.validated_data:
            kwargs["title"] = ser.validated_data["title"]
        if "consent_override" in ser.validated_data:
            kwargs["consent_override"] = ser.validated_data["consent_override"]
        try:
            services.update_conversation(conv, **kwargs)
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None
        return Response(ConversationSerializer(conv).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk: int):
        services.delete_conversation(self.get_object(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class _AnswerView(StudentAPIView):
    """DRF's view (auth, permissions, throttle, errors, schema as usual) served as an async view.

    Under ASGI a sync view costs the request a hop to a thread and back, and Django runs the rest of
    the request on the event loop: the whole DRF dispatch (auth, role, throttle, the conversation,
    the insert, the endpoint context) runs in that one ``sync_to_async`` hop, and the streamed body
    then waits on the endpoint on the loop (docs/web-tier.md: the hops, each waiting for the GIL
    behind the other requests, were most of the time to first token at 16 students). Under WSGI
    and the test client Django runs the async view through ``async_to_sync``; the DRF part still
    runs on the calling thread (thread-sensitive), inside the test's transaction.
    """

    throttle_classes = [StudentMessageThrottle]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, JSONLinesRenderer, NDJSONRenderer, EventStreamRenderer]

    @classmethod
    def as_view(cls, **initkwargs):
        sync_view = super().as_view(**initkwargs)
        run = sync_to_async(sync_view)  # thread_sensitive: the request's own thread, as a sync view's

        async def view(request, *args, **kwargs):
            return await run(request, *args, **kwargs)

        view.cls = sync_view.cls  # drf-spectacular and DRF's introspection read these
        view.initkwargs = sync_view.initkwargs
        view.view_class = sync_view.view_class
        view.view_initkwargs = sync_view.view_initkwargs
        view.__doc__ = sync_view.__doc__
        return csrf_exempt(view)  # as DRF's: SessionAuthentication enforces CSRF itself

    def answer(self, request, reply_to: Message, first: dict):
        fmt = stream_format(request)
        if fmt:  # the endpoint's context is read here, in the same thread hop as the message
            return streaming_response(reply_to, fmt, first, services.endpoint_payload(reply_to))
        user_message = services.serialize_message(reply_to)
        try:
            answer = services.answer_message(reply_to)
        except services.EndpointUnavailable as exc:
            return Response({"detail": str(exc), "retryable": True, "user_message": user_message},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"user_message": user_message, "assistant_message": services.serialize_message(answer)},
                        status=status.HTTP_201_CREATED)


class MessageCreateView(_AnswerView):
    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[OpenApiParameter("stream", str, description="1/jsonl or sse: stream the answer")],
        responses={201: AnswerSerializer, 400: OpenApiTypes.OBJECT, 429: OpenApiTypes.OBJECT, 503: ENDPOINT_DOWN},
        description="Ask the tutor. The student's message is saved before the endpoint is called. " + STREAM_DOC,
    )
    def post(self, request, pk: int):
        conv = selectors.get_conversation_for(request.user, pk)
        ser = MessageCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            message = services.post_user_message(conv, ser.validated_data["content"])
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None
        return self.answer(request, message, {"event": "start", "user_message": services.serialize_message(message)})


class RegenerateView(_AnswerView):
    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("stream", str, description="1/jsonl or sse: stream the answer")],
        responses={201: AnswerSerializer, 400: OpenApiTypes.OBJECT, 429: OpenApiTypes.OBJECT, 503: ENDPOINT_DOWN},
        description="Answer the last student message again (regenerate, or retry after a failure). Earlier "
        "answers are kept; the new one becomes current. " + STREAM_DOC,
    )
    def post(self, request, pk: int):
        conv = selectors.get_conversation_for(request.user, pk)
        reply_to = services.last_user_message(conv)
        if reply_to is None:
            raise ValidationError({"detail": "nothing to answer yet: send a message first"})
        return self.answer(request, reply_to, {"event": "start", "user_message": services.serialize_message(reply_to)})


class RatingView(StudentAPIView):
    """The student's rating of one tutor answer (thumbs, comment, reasons); changeable."""

    @extend_schema(responses=RatingSerializer)
    def get(self, request, pk: int):
        msg = selectors.get_message_for(request.user, pk)
        rating = Rating.objects.filter(message=msg).first()
        if rating is None:
            return Response({"detail": "not rated"}, status=status.HTTP_404_NOT_FOUND)
        return Response(RatingSerializer(rating).data)

    @extend_schema(request=RatingSerializer, responses=RatingSerializer)
    def put(self, request, pk: int):
        msg = selectors.get_message_for(request.user, pk)
        ser = RatingSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            rating = services.rate_message(request.user, msg, int(ser.validated_data["value"]),
                                           ser.validated_data.get("comment", ""), ser.validated_data.get("reasons"))
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None
        return Response(RatingSerializer(rating).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk: int):
        services.clear_rating(request.user, selectors.get_message_for(request.user, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RatingListView(generics.ListAPIView):
    """The student's own ratings, newest first."""

    permission_classes = [IsStudent]
    serializer_class = RatingSerializer

    def get_queryset(self):
        return Rating.objects.filter(student=self.request.user).order_by("-updated_at")


class ProfileView(StudentAPIView):
    """The student's consent to let their prompts (names masked) enter the labeling pool."""

    @extend_schema(responses=ProfileSerializer)
    def get(self, request):
        return Response({"consent_to_labeling": services.get_profile(request.user).consent_to_labeling})

    @extend_schema(request=ProfileSerializer, responses=ProfileSerializer)
    def put(self, request):
        ser = ProfileSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        profile = services.set_consent(request.user, ser.validated_data["consent_to_labeling"])
        return Response({"consent_to_labeling": profile.consent_to_labeling})

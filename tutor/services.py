"""Chat services: the only code that changes student data. Views and API views call these.

The order of writes is the failure story: the student's message is committed *before* the
endpoint is called, and the tutor's answer is written once it completes (or, if the stream
breaks or the student presses Stop, with what arrived, marked incomplete). An unreachable
endpoint therefore loses nothing: the question stays, and "Retry" answers it later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tutor.models import SUBJECT_SLUGS, Conversation, Message, Rating, StudentProfile, Subject

log = logging.getLogger(__name__)

DEMO_SUBJECTS = [
    ("history", "History", "Events, people and causes — from antiquity to the 20th century.",
     "You are a patient history tutor. Give dates and causes, and say when historians disagree."),
    ("mathematics", "Mathematics", "Arithmetic, algebra, geometry — step by step.",
     "You are a mathematics tutor. Show the steps, then state the final answer clearly."),
    ("language", "Language", "Grammar, vocabulary, spelling and style.",
     "You are a language tutor. Explain grammar simply and give a short example."),
    ("general_knowledge", "General knowledge", "Science, geography and everything else.",
     "You are a general knowledge tutor. Be accurate and concise; say when you are not sure."),
]

TITLE_CHARS = 60


class EndpointUnavailable(Exception):
    """The endpoint could not answer (down, timeout, error): retry later; nothing was lost."""


def ensure_subjects() -> None:
    """The four subjects (idempotent: existing rows keep admin edits)."""
    for order, (slug, name, description, prompt) in enumerate(DEMO_SUBJECTS):
        Subject.objects.get_or_create(
            slug=slug, defaults={"name": name, "description": description, "system_prompt": prompt, "order": order}
        )


def seed_demo() -> None:
    """The four subjects and the demo student's consent (so its prompts feed the labeling demo)."""
    from django.contrib.auth import get_user_model

    ensure_subjects()
    demo = get_user_model().objects.filter(username="student").first()
    if demo is not None:
        profile = get_profile(demo)
        if not profile.consent_to_labeling:
            profile.consent_to_labeling = True
            profile.save(update_fields=["consent_to_labeling", "updated_at"])


# --- profile & consent ----------------------------------------------------------------------------


def get_profile(user) -> StudentProfile:
    profile, _ = StudentProfile.objects.get_or_create(user=user)
    return profile


def set_consent(user, consent: bool) -> StudentProfile:
    profile = get_profile(user)
    profile.consent_to_labeling = bool(consent)
    profile.save(update_fields=["consent_to_labeling", "updated_at"])
    return profile


# --- conversations ----------------------------------------------------------------------------


def start_conversation(user, subject_slug: str, consent_override: bool | None = None) -> Conversation:
    subject = Subject.objects.filter(slug=subject_slug, active=True).first()
    if subject is None:
        known = ", ".join(Subject.objects.filter(active=True).values_list("slug", flat=True)) or "none"
        raise ValidationError(f"unknown or inactive subject {subject_slug!r} (active: {known})")
    return Conversation.objects.create(student=user, subject=subject, consent_override=consent_override)


def update_conversation(conversation: Conversation, *, title: str | None = None,
                        consent_override: bool | None | type(...) = ...) -> Conversation:
    """Rename and/or set the per-conversation consent override (``None`` = follow the profile)."""
    fields = ["updated_at"]
    if title is not None:
        title = " ".join(title.split())
        if not title:
            raise ValidationError("the title cannot be empty")
        if len(title) > 120:
            raise ValidationError("the title is longer than 120 characters")
        conversation.title = title
        fields.append("title")
    if consent_override is not ...:
        conversation.consent_override = consent_override
        fields.append("consent_override")
    conversation.save(update_fields=fields)
    return conversation


def delete_conversation(conversation: Conversation) -> None:
    """Soft delete: hidden from the student and out of the labeling pool unless consented."""
    if conversation.deleted_at is None:
        conversation.deleted_at = timezone.now()
        conversation.save(update_fields=["deleted_at"])


# --- messages -----------------------------------------------------------------------------------


def validate_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("the message is empty")
    limit = settings.TUTOR_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ValidationError(f"the message is {len(text)} characters long; the limit is {limit}")
    return text.strip()


@transaction.atomic
def post_user_message(conversation: Conversation, text: object) -> Message:
    """Validate and commit the student's message (before any endpoint call)."""
    text = validate_text(text)
    if conversation.deleted_at is not None:
        raise ValidationError("this conversation was deleted")
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=text)
    fields = ["updated_at"]
    if not conversation.title:
        conversation.title = _title_from(text)
        fields.append("title")
    conversation.save(update_fields=fields)
    return message


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def last_user_message(conversation: Conversation) -> Message | None:
    return conversation.messages.filter(role=Message.Role.USER).order_by("-created_at", "-id").first()


def context_for(reply_to: Message) -> list[dict[str, str]]:
    """The turns the endpoint sees: every student message up to ``reply_to`` and the current
    answer to each (incomplete answers included: the student saw them).

    One query, four columns (it runs before the endpoint is called, so it is part of the time to
    the first token): the student messages up to ``reply_to`` and the current answers, in order.
    """
    turns: list[dict[str, str]] = []
    rows = list(
        Message.objects.filter(conversation_id=reply_to.conversation_id)
        .filter(Q(role=Message.Role.USER, id__lte=reply_to.id) | Q(role=Message.Role.ASSISTANT, is_current=True))
        .order_by("created_at", "id").values_list("id", "role", "content", "reply_to_id")
    )
    current = {answered: content for _, role, content, answered in rows if role == Message.Role.ASSISTANT}
    for mid, role, content, _ in rows:
        if role != Message.Role.USER:
            continue
        turns.append({"role": "user", "content": content})
        answer = current.get(mid)
        if mid != reply_to.id and answer:
            turns.append({"role": "assistant", "content": answer})
    return _newest_within(turns, settings.TUTOR_CONTEXT_CHARS)


def _newest_within(turns: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest turns beyond the character budget; the student's last message always stays
    and the kept context starts with a student turn (as the chat template expects)."""
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(turns):
        used += len(turn["content"])
        if kept and used > budget:
            break
        kept.append(turn)
    kept.reverse()
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def endpoint_payload(reply_to: Message) -> dict:
    """Keyword arguments for ``EndpointClient.generate``/``stream``: the conversation, the subject
    and the sticky canary routing key (the endpoint picks the version from the subject's split)."""
    conversation = reply_to.conversation
    return {
        "messages": context_for(reply_to),
        "subject": conversation.subject.slug,
        "routing_key": conversation.routing_key,
        "max_new_tokens": settings.TUTOR_MAX_NEW_TOKENS,
        "temperature": settings.TUTOR_CHAT_TEMPERATURE,
    }


@dataclass
class Answer:
    """What the endpoint produced for one reply (complete or not)."""

    text: str
    adapter: dict | None = None
    finish_reason: str = ""
    tokens: int | None = None
    complete: bool = True
    error: str = ""
    latency_ms: int | None = None


@transaction.atomic
def save_answer(reply_to: Message, answer: Answer) -> Message:
    """Write the tutor's answer and make it the current one among regenerations."""
    adapter = answer.adapter or {}
    Message.objects.filter(reply_to=reply_to, is_current=True).update(is_current=False)
    message = Message.objects.create(
        conversation=reply_to.conversation,
        role=Message.Role.ASSISTANT,
        reply_to=reply_to,
        content=answer.text,
        status=Message.Status.COMPLETE if answer.complete else Message.Status.INCOMPLETE,
        error=answer.error[:300],
        adapter_subject=str(adapter.get("subject") or reply_to.conversation.subject.slug),
        adapter_version=adapter.get("version"),
        finish_reason=answer.finish_reason or "",
        tokens=answer.tokens,
        latency_ms=answer.latency_ms,
        is_current=True,
    )
    Conversation.objects.filter(pk=reply_to.conversation_id).update(updated_at=timezone.now())
    return message


def _describe(exc: Exception) -> str:
    """A short, student-readable reason (the log keeps the full exception)."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "the tutor is unavailable (the endpoint timed out)"
    status = getattr(exc, "status", None)
    text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0][:200]
    if status:
        return f"the tutor is unavailable (endpoint answered {status}: {text})"
    return f"the tutor is unavailable ({text})"


def answer_message(reply_to: Message) -> Message:
    """Blocking path (JSON API, no-JS page): ask the endpoint and save the whole answer.

    Raises EndpointUnavailable (the student's message stays, unanswered) when it cannot answer.
    """
    from tutor.endpoint import get_client

    payload = endpoint_payload(reply_to)
    started = time.monotonic()
    try:
        with get_client() as client:
            result = client.generate(**payload)
    except Exception as exc:  # any endpoint failure: keep the question, report a retryable error
        log.warning("endpoint failed for message %s: %s", reply_to.pk, exc)
        raise EndpointUnavailable(_describe(exc)) from exc
    out = result["outputs"][0]
    return save_answer(
        reply_to,
        Answer(text=out.get("text", ""), adapter=out.get("adapter"), finish_reason=out.get("finish_reason", ""),
               tokens=out.get("tokens"), latency_ms=_elapsed_ms(started)),
    )


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


async def stream_answer(reply_to: Message, payload: dict | None = None) -> AsyncIterator[dict]:
    """Proxy the endpoint's token stream as events, saving the answer when it ends.

    Events: ``{"event": "token", "text"}`` …, then ``{"event": "done", "message"}`` or
    ``{"event": "error", "error", "retryable": true, "message": <partial or None>}``.
    If the client goes away (Stop), the partial answer is saved, marked incomplete.
    ``payload``: ``endpoint_payload(reply_to)`` when the caller read it already (the API view does, in
    the same thread hop as the message: one hop fewer before the first token).
    """
    from tutor.endpoint import shared_async_client

    if payload is None:
        payload = await sync_to_async(endpoint_payload)(reply_to)
    started = time.monotonic()
    pieces: list[str] = []
    saved: Message | None = None
    error = ""
    try:
        events = shared_async_client().stream(**payload)
        try:
            async for event in events:
                if "token" in event:
                    pieces.append(event["token"])
                    yield {"event": "token", "text": event["token"]}
                elif event.get("done"):
                    out = (event.get("outputs") or [{}])[0]
                    text = out.get("text") if out.get("text") is not None else "".join(pieces)
                    saved, done = await sync_to_async(_save_and_serialize)(reply_to, Answer(
                        text=text, adapter=out.get("adapter"), finish_reason=out.get("finish_reason", ""),
                        tokens=out.get("tokens"), latency_ms=_elapsed_ms(started)))
                    break
                elif "error" in event:
                    error = f"the answer broke off: {event['error']}"
                    break
        finally:
            await events.aclose()  # closes the endpoint connection now (Stop frees its batch slot)
        if saved is None and not error:
            error = "the answer broke off: the endpoint closed the stream early"
    except Exception as exc:  # endpoint down, timeout or a broken connection mid-stream
        log.warning("endpoint stream failed for message %s: %s", reply_to.pk, exc)
        error = _describe(exc) if not pieces else f"the answer broke off: {_describe(exc)}"
    finally:
        if saved is None and pieces and not error:
            # Stop pressed / client disconnected (GeneratorExit or cancellation): keep what arrived.
            await _save_partial(reply_to, pieces, "stopped by the student")
    if saved is not None:
        yield {"event": "done", "message": done}
        return
    partial = await _save_partial(reply_to, pieces, error) if pieces else None
    yield {"event": "error", "error": error, "retryable": True, "message": partial}


async def _save_partial(reply_to: Message, pieces: list[str], error: str) -> dict:
    answer = Answer(text="".join(pieces), complete=False, error=error, finish_reason="incomplete")
    return (await sync_to_async(_save_and_serialize)(reply_to, answer))[1]


def _save_and_serialize(reply_to: Message, answer: Answer) -> tuple[Message, dict]:
    """``save_answer`` and its JSON in one thread hop (each hop waits for the GIL under load)."""
    message = save_answer(reply_to, answer)
    return message, serialize_message(message)


def serialize_message(message: Message) -> dict:
    """The JSON shape the chat page and the API share for one message."""
    rating = getattr(message, "rating", None) if message.role == Message.Role.ASSISTANT else None
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "reply_to": message.reply_to_id,
        "is_current": message.is_current,
        "created_at": message.created_at.isoformat(),
        "adapter": {"subject": message.adapter_subject, "version": message.adapter_version}
        if message.adapter_subject else None,
        "policy_version": message.policy_version,
        "rating": {"value": rating.value, "reasons": rating.reasons, "comment": rating.comment} if rating else None,
    }


def encode_event(event: dict, fmt: str) -> bytes:
    """One event as a JSON line or an SSE ``data:`` frame."""
    data = json.dumps(event, ensure_ascii=False)
    return (f"data: {data}\n\n" if fmt == "sse" else data + "\n").encode()


# --- ratings --------------------------------------------------------------------------------------


def rate_message(user, message: Message, value: int, comment: str = "", reasons: list[str] | None = None) -> Rating:
    """Create or change the student's rating of a tutor answer (keeps the policy version)."""
    if message.conversation.student_id != user.id:
        raise PermissionDenied("you can only rate answers in your own conversations")
    if message.role != Message.Role.ASSISTANT:
        raise ValidationError("only tutor answers can be rated")
    if value not in (1, -1):
        raise ValidationError("value must be 1 (thumbs up) or -1 (thumbs down)")
    reasons = list(dict.fromkeys(reasons or []))
    bad = [r for r in reasons if r not in Rating.REASONS]
    if bad:
        raise ValidationError(f"unknown reason(s) {', '.join(map(str, bad))}; use {', '.join(Rating.REASONS)}")
    comment = (comment or "").strip()
    if len(comment) > 2000:
        raise ValidationError("the comment is longer than 2000 characters")
    rating, _ = Rating.objects.update_or_create(
        message=message,
        defaults={"student": user, "value": value, "comment": comment, "reasons": reasons,
                  "adapter_subject": message.adapter_subject, "adapter_version": message.adapter_version},
    )
    return rating


def clear_rating(user, message: Message) -> None:
    Rating.objects.filter(message=message, student=user).delete()


def subjects_for_choice() -> list[Subject]:
    return list(Subject.objects.filter(active=True, slug__in=SUBJECT_SLUGS))

"""Read-only queries for the student area, and the consented prompt feed for feedback/.

Every student-facing query goes through ``conversations_for``/``get_conversation_for`` so a
student can never reach another student's conversation (404, not 403: no existence leak).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from tutor.models import Conversation, Message, StudentProfile


def conversations_for(user, q: str | None = None) -> QuerySet[Conversation]:
    """The student's visible conversations with at least one message, newest first; ``q`` searches
    titles and message text."""
    qs = (
        Conversation.objects.visible()
        .filter(student=user)
        .filter(Exists(Message.objects.filter(conversation=OuterRef("pk"))))
        .select_related("subject")
    )
    if q and q.strip():
        term = q.strip()
        qs = qs.filter(
            Q(title__icontains=term)
            | Exists(Message.objects.filter(conversation=OuterRef("pk"), content__icontains=term))
        )
    return qs.order_by("-updated_at")


def get_conversation_for(user, conversation_id: int) -> Conversation:
    """The student's own, not deleted conversation, else 404."""
    conv = (
        Conversation.objects.visible()
        .select_related("subject")
        .filter(pk=conversation_id, student=user)
        .first()
    )
    if conv is None:
        raise Http404("no such conversation")
    return conv


def get_message_for(user, message_id: int) -> Message:
    msg = (
        Message.objects.select_related("conversation", "conversation__subject")
        .filter(pk=message_id, conversation__student=user, conversation__deleted_at__isnull=True)
        .first()
    )
    if msg is None:
        raise Http404("no such message")
    return msg


@dataclass
class Turn:
    """One student message and the tutor's answers to it (regenerations kept, one current)."""

    question: Message
    answers: list[Message] = field(default_factory=list)

    @property
    def current(self) -> Message | None:
        return next((a for a in reversed(self.answers) if a.is_current), self.answers[-1] if self.answers else None)

    @property
    def earlier(self) -> list[Message]:
        cur = self.current
        return [a for a in self.answers if a is not cur]


def turns(conversation: Conversation) -> list[Turn]:
    result: list[Turn] = []
    by_id: dict[int, Turn] = {}
    msgs = conversation.messages.select_related("rating").order_by("created_at", "id")
    for m in msgs:
        if m.role == Message.Role.USER:
            by_id[m.id] = Turn(question=m)
            result.append(by_id[m.id])
        elif m.reply_to_id in by_id:
            by_id[m.reply_to_id].answers.append(m)
    return result


def consent_for(user) -> bool:
    profile = StudentProfile.objects.filter(user=user).first()
    return bool(profile and profile.consent_to_labeling)


def consented_prompts(since_id: int | None = None) -> list[dict]:
    """Student prompts that may enter the labeling pool, oldest first, for feedback/.

    A prompt qualifies when its conversation's override says yes, or (no override) the student's
    profile consents. Soft-deleted conversations are excluded unless the override explicitly
    consents. ``student_names`` lists strings feedback/ masks before labelers see the text.
    """
    consenting = StudentProfile.objects.filter(user=OuterRef("conversation__student"), consent_to_labeling=True)
    qs = (
        Message.objects.filter(role=Message.Role.USER)
        .filter(
            Q(conversation__consent_override=True)
            | (Q(conversation__consent_override__isnull=True) & Exists(consenting)
               & Q(conversation__deleted_at__isnull=True))
        )
        .select_related("conversation__subject", "conversation__student")
        .order_by("id")
    )
    if since_id is not None:
        qs = qs.filter(id__gt=since_id)
    prompts = list(qs)
    # one query for the context of every prompt: the conversations' student turns and current answers
    history: dict[int, list[Message]] = {}
    for msg in (Message.objects.filter(conversation_id__in={m.conversation_id for m in prompts})
                .filter(Q(role=Message.Role.USER) | Q(is_current=True)).order_by("created_at", "id")):
        history.setdefault(msg.conversation_id, []).append(msg)
    out = []
    for m in prompts:
        conv = m.conversation
        student = conv.student
        context = [{"role": p.role, "content": p.content} for p in history.get(conv.id, []) if p.id < m.id]
        names = [student.username, student.first_name, student.last_name, student.get_full_name(), student.email]
        out.append({
            "message_id": m.id,
            "subject": conv.subject.slug,
            "text": m.content,
            "context": context,
            "student_names": [n for n in dict.fromkeys(n.strip() for n in names if n) if n],
        })
    return out


def consented_answer_feedback(until_message_id: int | None = None, where: Q | None = None) -> list[dict]:
    """Tutor answers that carry a student's implicit feedback, for feedback/'s implicit pairs.

    Only answers the student saw whole (complete, no error) in conversations whose student consents
    (the same rule as ``consented_prompts``), and only those that matter: rated ones, and answers to a
    student message that has more than one answer (a regeneration). Each dict carries the (unmasked)
    prompt (the student message it answers), its context, the answer text, whether it is the kept
    (current) answer, and the rating (value, reasons, id) if any. ``until_message_id`` bounds the read;
    ``where`` narrows it further (beat's trigger reads only the answers new evidence touches).
    """
    consenting = StudentProfile.objects.filter(user=OuterRef("conversation__student"), consent_to_labeling=True)
    consented = (Q(conversation__consent_override=True)
                 | (Q(conversation__consent_override__isnull=True) & Exists(consenting)
                    & Q(conversation__deleted_at__isnull=True)))
    answers = Message.objects.filter(consented, role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE,
                                     error="")
    if until_message_id is not None:
        answers = answers.filter(id__lte=until_message_id)
    if where is not None:
        answers = answers.filter(where)
    siblings = Message.objects.filter(reply_to=OuterRef("reply_to"), role=Message.Role.ASSISTANT,
                                      status=Message.Status.COMPLETE, error="").exclude(pk=OuterRef("pk"))
    rows = list(answers.filter(Q(rating__isnull=False) | Exists(siblings))
                .select_related("rating", "reply_to", "conversation__subject", "conversation__student")
                .order_by("id"))
    if not rows:
        return []
    history: dict[int, list[Message]] = {}
    for msg in (Message.objects.filter(conversation_id__in={m.conversation_id for m in rows})
                .filter(Q(role=Message.Role.USER) | Q(is_current=True)).order_by("created_at", "id")):
        history.setdefault(msg.conversation_id, []).append(msg)
    out = []
    for m in rows:
        conv, question = m.conversation, m.reply_to
        student = conv.student
        names = [student.username, student.first_name, student.last_name, student.get_full_name(), student.email]
        rating = getattr(m, "rating", None)
        out.append({
            "message_id": m.id, "reply_to_id": question.id, "subject": conv.subject.slug,
            "prompt": question.content, "text": m.content, "is_current": m.is_current,
            "context": [{"role": p.role, "content": p.content} for p in history.get(conv.id, []) if p.id < question.id],
            "rating": {"id": rating.id, "value": rating.value, "reasons": list(rating.reasons or [])} if rating else None,
            "student_names": [n for n in dict.fromkeys(n.strip() for n in names if n) if n],
        })
    return out

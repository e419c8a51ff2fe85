"""Student data: subjects, conversations, messages, ratings and the consent profile.

Every tutor message records the policy version (subject + adapter version) that wrote it, so
ratings and labeling can be tied back to the model that produced the text.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

SUBJECT_SLUGS = ("history", "mathematics", "language", "general_knowledge")
SUBJECT_CHOICES = [(s, s.replace("_", " ")) for s in SUBJECT_SLUGS]


class Subject(models.Model):
    """A tutoring subject; the slug is the endpoint's adapter name (rlhf.SUBJECTS)."""

    slug = models.SlugField(unique=True, choices=SUBJECT_CHOICES)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=300, blank=True)
    system_prompt = models.TextField(blank=True, help_text="The tutor's brief, shown to students and labelers. The model's system turn comes from rlhf.chat (the same text in training and serving).")
    active = models.BooleanField(default=True)
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name


class StudentProfile(models.Model):
    """Per-student settings; consent decides whether prompts may enter the labeling pool."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tutor_profile")
    consent_to_labeling = models.BooleanField(
        default=False, help_text="Prompts may be shown (names masked) to labelers to improve the tutor."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.user}"


class ConversationQuerySet(models.QuerySet):
    def visible(self):
        return self.filter(deleted_at__isnull=True)


class Conversation(models.Model):
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    subject = models.ForeignKey(Subject, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=120, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="Soft delete: hidden from the student.")
    consent_override = models.BooleanField(
        null=True, blank=True, help_text="Empty: follow the student's setting; yes/no: override it here."
    )

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["student", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"conversation {self.pk}"

    @property
    def routing_key(self) -> str:
        """Sticky canary choice: the endpoint hashes this to pick the version."""
        return f"conversation-{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        INCOMPLETE = "incomplete"  # the stream broke or the student stopped it: keeps what arrived

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="answers",
        help_text="For tutor answers: the student message answered (regenerate adds siblings).",
    )
    is_current = models.BooleanField(default=True, help_text="The answer shown as current among regenerations.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    error = models.CharField(max_length=300, blank=True)
    adapter_subject = models.CharField(max_length=40, blank=True)
    adapter_version = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    tokens = models.PositiveIntegerField(null=True, blank=True)
    # the canary's live signals (training/canary.py) compare these per policy version
    latency_ms = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="From the endpoint call to the whole answer, in ms.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role="user", reply_to__isnull=True) | Q(role="assistant", reply_to__isnull=False),
                name="message_reply_to_matches_role",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk}"

    @property
    def policy_version(self) -> str:
        """"mathematics v2" (or "mathematics base" when no adapter was loaded)."""
        if not self.adapter_subject:
            return ""
        return f"{self.adapter_subject} v{self.adapter_version}" if self.adapter_version else f"{self.adapter_subject} base"


class Rating(models.Model):
    """A student's thumbs up/down on one tutor answer; changeable; keeps the policy version."""

    REASONS = ("wrong", "unclear", "unsafe", "other")

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="rating")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tutor_ratings")
    value = models.SmallIntegerField(choices=[(1, "up"), (-1, "down")])
    comment = models.TextField(blank=True, max_length=2000)
    reasons = models.JSONField(default=list, blank=True)
    adapter_subject = models.CharField(max_length=40, blank=True)
    adapter_version = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{'+' if self.value > 0 else '-'}1 on message {self.message_id}"

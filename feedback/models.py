"""Human-feedback data: the prompt pool, comparison tasks with their completions, leases
(assignments), rankings, imported preference pairs, labeler quality and frozen snapshots.

Slot accounting for a task lives on the task row (``submitted_count``) plus its active leases;
every change to it happens while that row is locked (see feedback.services.assignment).
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

SUBJECT_CHOICES = [
    ("history", "History"),
    ("mathematics", "Mathematics"),
    ("language", "Language"),
    ("general_knowledge", "General knowledge"),
]
SUBJECTS = [s for s, _ in SUBJECT_CHOICES]


class Prompt(models.Model):
    """A prompt in the pool. ``text`` and ``context`` are already masked (no student identity)."""

    class Source(models.TextChoices):
        STUDENT = "student", "Student chat"
        IMPORT = "import", "Admin import"
        SEED = "seed", "Seed list"

    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES, db_index=True)
    text = models.TextField()
    context = models.JSONField(default=list, blank=True, help_text="earlier {role, content} turns")
    normalized_hash = models.CharField(max_length=64, unique=True, help_text="sha256 of normalised text")
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField(max_length=200, blank=True, help_text="e.g. message:17, file.csv:3")
    source_message_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.subject}: {self.text[:60]}"


class ComparisonTask(models.Model):
    """K completions of one prompt to be ranked by ``overlap`` labelers."""

    class State(models.TextChoices):
        OPEN = "open", "Needs labels"
        COMPLETE = "complete", "Complete"
        DISABLED = "disabled", "Disabled"

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="tasks")
    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES, db_index=True)
    priority = models.IntegerField(default=0)
    overlap = models.PositiveSmallIntegerField(default=2, validators=[MinValueValidator(1)])
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    submitted_count = models.PositiveIntegerField(default=0)
    is_gold = models.BooleanField(default=False, help_text="a quality-control task with a reference ranking")
    gold_order = models.JSONField(null=True, blank=True, help_text="reference ranking: groups of completion ids")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-priority", "id"]
        indexes = [
            models.Index(fields=["state", "is_gold", "-priority", "id"], name="fb_task_queue"),
        ]

    def __str__(self) -> str:
        return f"task {self.pk} ({self.subject}, {self.state})"


class Completion(models.Model):
    """One candidate reply; identical samples are merged (``sample_count``)."""

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="completions")
    text = models.TextField()
    adapter_subject = models.CharField(max_length=32, blank=True)
    adapter_version = models.IntegerField(null=True, blank=True, help_text="null = base model")
    sample_count = models.PositiveSmallIntegerField(default=1)
    versions = models.JSONField(default=list, blank=True, help_text="every adapter version that wrote it")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"completion {self.pk} of task {self.task_id}"


class Assignment(models.Model):
    """A labeler's lease on a task; one row per (task, labeler) = 'this labeler has seen it'."""

    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fb_assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.LEASED)
    shown_order = models.JSONField(help_text="completion ids in the order shown to the labeler")
    leased_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    skip_reason = models.CharField(max_length=500, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["labeler", "task"], name="fb_one_assignment_per_labeler")]
        indexes = [models.Index(fields=["task", "status", "expires_at"], name="fb_assign_active")]

    def __str__(self) -> str:
        return f"lease of task {self.task_id} by {self.labeler_id} ({self.status})"


class Ranking(models.Model):
    """A labeler's ranking of a task. ``order``: groups of completion ids, best first (a group = tie)."""

    task = models.ForeignKey(ComparisonTask, on_delete=models.PROTECT, related_name="rankings")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="fb_rankings")
    order = models.JSONField()
    shown_order = models.JSONField()
    ratings = models.JSONField(default=dict, blank=True, help_text="{completion_id: {helpfulness, honesty, harmlessness}}")
    unsafe = models.BooleanField(default=False)
    unsafe_reason = models.CharField(max_length=500, blank=True)
    note = models.TextField(blank=True)
    pair_count = models.PositiveIntegerField(default=0, help_text="ordered pairs it yields (ties give none)")
    # ``order`` in a compact form the aggregation parses in C for a whole chunk at once
    flat_order = models.TextField(default="", help_text='completion ids best first, e.g. "12,10,11,13"')
    shape = models.CharField(max_length=40, default="", help_text='group sizes, e.g. "1,1,2" (a tie of two last)')
    late = models.BooleanField(default=False, help_text="submitted after the lease expired")
    flag_resolved = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["labeler", "task"], name="fb_one_ranking_per_labeler")]
        indexes = [models.Index(fields=["unsafe", "flag_resolved"], name="fb_flag_queue")]

    def __str__(self) -> str:
        return f"ranking {self.pk} of task {self.task_id}"


class ImportBatch(models.Model):
    """One imported file (preferences or prompts); a file is imported at most once (sha256)."""

    kind = models.CharField(max_length=16)  # preferences | prompts
    fmt = models.CharField(max_length=16)  # hh-rlhf | trl | csv | jsonl
    filename = models.CharField(max_length=300)
    sha256 = models.CharField(max_length=64, unique=True)
    rows = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} import {self.filename} ({self.rows} rows)"


class ImportedPair(models.Model):
    """A preference pair from an imported file (HH-RLHF, TRL)."""

    batch = models.ForeignKey(ImportBatch, on_delete=models.CASCADE, related_name="pairs")
    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES)
    prompt = models.TextField()
    context = models.JSONField(default=list)
    chosen = models.TextField()
    rejected = models.TextField()
    weight = models.FloatField(default=1.0)
    source = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"pair {self.source}"


class LabelerStats(models.Model):
    """Quality figures per labeler, recomputed by feedback.services.update_reliability()."""

    labeler = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fb_stats")
    gold_accuracy = models.FloatField(null=True, blank=True)
    gold_count = models.PositiveIntegerField(default=0)
    agreement_tau = models.FloatField(null=True, blank=True)
    agreement_count = models.PositiveIntegerField(default=0)
    reliability = models.FloatField(default=1.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"stats of labeler {self.labeler_id}"


class Guidelines(models.Model):
    """The labeling guidelines (admin-editable; the newest row is shown)."""

    title = models.CharField(max_length=200, default="Labeling guidelines")
    body = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "guidelines"

    def __str__(self) -> str:
        return self.title


class DatasetSnapshot(models.Model):
    """A frozen preference dataset on disk under TUTOR_DATASETS_DIR/<sha256>/."""

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=500)
    since_ranking_id = models.BigIntegerField(null=True, blank=True)
    first_ranking_id = models.BigIntegerField(null=True, blank=True)
    last_ranking_id = models.BigIntegerField(null=True, blank=True)
    imported_pairs = models.PositiveIntegerField(default=0)
    ranking_pairs = models.PositiveIntegerField(default=0)
    train_rows = models.PositiveIntegerField(default=0)
    test_rows = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, help_text="{subject: {train, test}}")
    source_counts = models.JSONField(default=dict, blank=True,
                                     help_text="pairs per source: {labeler, imported, thumbs, regeneration}")
    # the implicit-feedback watermark: answers and ratings up to these ids were considered
    last_message_id = models.BigIntegerField(null=True, blank=True)
    last_rating_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(train_rows__gte=0), name="fb_snapshot_rows_nonneg"),
        ]

    def __str__(self) -> str:
        return f"snapshot {self.sha256[:12]} ({self.rows} pairs)"

    @property
    def rows(self) -> int:
        return self.train_rows + self.test_rows


class FeedbackSource(models.Model):
    """An admin's on/off switch for one source of preference pairs (no row = on).

    A source must also be listed in the ``FEEDBACK_SOURCES`` setting: the setting is the deployment's hard
    switch, this row the admin's (studio overview or Django admin); snapshots include a source only when both
    allow it.
    """

    class Slug(models.TextChoices):
        LABELER = "labeler", "Labeler rankings"
        IMPORTED = "imported", "Imported pairs"
        THUMBS = "thumbs", "Students' thumbs"
        REGENERATION = "regeneration", "Students' regenerations"

    slug = models.CharField(max_length=16, choices=Slug.choices, unique=True)
    enabled = models.BooleanField(default=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.slug} ({'on' if self.enabled else 'off'})"


class ImplicitPromptKey(models.Model):
    """A student question's implicit-feedback key (``feedback.masking.prompt_key`` of its masked text and
    context), memoised so beat's trigger finds the earlier answers to the same prompt through an index instead
    of reading every consented answer on every tick (``feedback.implicit.count_new``). Filled lazily by that
    count; only a question whose answers carry feedback gets one."""

    message = models.OneToOneField("tutor.Message", on_delete=models.CASCADE, primary_key=True,
                                   related_name="implicit_key")
    key = models.CharField(max_length=64, db_index=True)

    def __str__(self) -> str:
        return f"{self.key[:12]} for message {self.message_id}"

"""The registry: jobs, reward-model and policy versions, evaluation reports and deployments.

Why rows for everything: each model on the endpoint must be traceable to the job that trained it,
the snapshot (and so the rankings) it learned from, and the reward model that scored it; and a
job that dies must leave a visible, failed record rather than a half-promoted version.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

SUBJECT_CHOICES = [
    ("history", "History"),
    ("mathematics", "Mathematics"),
    ("language", "Language"),
    ("general_knowledge", "General knowledge"),
]


class Job(models.Model):
    """One unit of background work (a Celery task), or a pipeline that parents several."""

    class Kind(models.TextChoices):
        SNAPSHOT = "snapshot"
        REWARD_MODEL = "reward_model", "reward model"
        PPO = "ppo", "PPO"
        EVALUATE = "evaluate"
        DEPLOY = "deploy"
        PIPELINE = "pipeline"
        BENCHMARKS = "benchmarks", "report card"
        OPTIMISE = "optimise"  # distil / quantise / prune a version (training.optimise)

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES, blank=True)
    config = models.JSONField(default=dict, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    stage = models.CharField(max_length=32, blank=True, help_text="pipeline stage (pipelines only)")
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=300, blank=True)
    metrics = models.JSONField(default=list, blank=True, help_text="time series: one dict per reported step")
    result = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True, help_text="the tail of the job's log")
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    celery_task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    launched_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="training_jobs")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["kind", "status"])]

    def __str__(self) -> str:
        tail = f" {self.subject}" if self.subject else ""
        return f"job {self.pk} {self.kind}{tail} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        from django.utils import timezone

        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


class RewardModelVersion(models.Model):
    class Status(models.TextChoices):
        TRAINING = "training"
        READY = "ready"
        FAILED = "failed"

    snapshot = models.ForeignKey("feedback.DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="reward_models")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="reward_models")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64, blank=True)
    accuracy = models.FloatField(null=True, blank=True, help_text="held-out pairwise accuracy")
    metrics = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"reward model {self.pk}"


class PolicyVersion(models.Model):
    """Version N of one subject's adapter (``var/models/adapters/<subject>/v<N>/``)."""

    class Status(models.TextChoices):
        TRAINING = "training"
        CANDIDATE = "candidate"
        CANARY = "canary"
        PROMOTED = "promoted"
        RETIRED = "retired"
        FAILED = "failed"

    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES)
    version = models.PositiveIntegerField()
    method = models.CharField(max_length=20, default="lora")
    class Kind(models.TextChoices):
        ADAPTER = "adapter"
        DISTILLED = "distilled"
        QUANTISED = "quantised"
        PRUNED = "pruned"

    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.ADAPTER,
                            help_text="an adapter on the endpoint's base, or an optimised variant (rlhf.optimise)")
    source = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="variants",
                               help_text="the version this variant was optimised from")
    base_path = models.CharField(max_length=500, blank=True,
                                 help_text="the variant's own base artefact; empty: the endpoint's base")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING, db_index=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    snapshot = models.ForeignKey("feedback.DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="policy_versions")
    reward_model = models.ForeignKey(RewardModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="policy_versions")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="policy_versions")
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True, help_text="last time it became the promoted version")
    released_at = models.DateTimeField(
        null=True, blank=True,
        help_text="when its own-base endpoint was unloaded after it retired (cleared when it serves again)")

    class Meta:
        ordering = ["subject", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["subject", "version"], name="training_policy_subject_version"),
            # the database itself refuses two promoted (or two canary) versions of a subject
            models.UniqueConstraint(fields=["subject"], condition=Q(status="promoted"),
                                    name="training_one_promoted_per_subject"),
            models.UniqueConstraint(fields=["subject"], condition=Q(status="canary"),
                                    name="training_one_canary_per_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} v{self.version}"


class EvaluationReport(models.Model):
    """The gate's verdict on a candidate against the promoted version (all suites, both models)."""

    candidate = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="evaluations")
    baseline = models.ForeignKey(PolicyVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="baseline_evaluations")
    reward_model = models.ForeignKey(RewardModelVersion, null=True, blank=True, on_delete=models.SET_NULL)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="evaluations")
    passed = models.BooleanField(default=False)
    suites = models.JSONField(default=dict, help_text="{suite: {candidate, baseline, threshold, passed}}")
    thresholds = models.JSONField(default=dict)
    failures = models.JSONField(default=list)
    samples = models.JSONField(default=list, help_text="both versions' answers to the same prompts")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.candidate} ({'pass' if self.passed else 'fail'})"

    @property
    def suite_rows(self) -> list[tuple[str, dict, str]]:
        """(suite, result, note): what a bare number hides — the accuracy's noise margin, the KL's reference."""
        rows = []
        for name, r in self.suites.items():
            note = ""
            if name == "answer_key_accuracy" and r.get("margin") is not None:
                note = (f"may trail by {r['margin']:.3f} (tolerance + z × standard error "
                        f"{r.get('standard_error', 0):.3f} of the per-question difference)")
            elif name == "kl" and isinstance(r.get("to_base"), dict):
                tb = r["to_base"]
                note = (f"KL to {'the promoted version' if r.get('reference') == 'baseline' else 'the base'}; "
                        f"to the base: {tb.get('candidate', 0):.3f} vs {tb.get('baseline', 0):.3f}")
            rows.append((name, r, note))
        return rows


class BenchmarkReport(models.Model):
    """One report card run of one version: suite → ``rlhf.evals.SuiteResult`` dict (metrics with CIs).

    Why stored per (version, run) and not overwritten: the studio compares versions on the same data
    (the suites' ``data_hash``), and a later run on more data must not silently replace the one a
    promotion was judged on.
    """

    policy_version = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="benchmark_reports")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="benchmark_reports")
    source = models.CharField(max_length=16, default="report_card", help_text="report_card | gate")
    suites = models.JSONField(default=dict, help_text="{suite: SuiteResult.to_dict()}: status, metrics "
                                                      "{name: {value, ci_low, ci_high, n}}, n, data_hash, seconds, "
                                                      "reason")
    model = models.JSONField(default=dict, blank=True, help_text="ctx.describe(): base, adapter and their hashes")
    config = models.JSONField(default=dict, blank=True, help_text="suites asked for, limit, seed")
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["policy_version", "job"], name="training_benchmark_per_run")]

    def __str__(self) -> str:
        return f"report card {self.pk} of {self.policy_version}"


class Deployment(models.Model):
    """One change of what a subject serves; the latest applied row per subject is the truth."""

    class Action(models.TextChoices):
        BOOTSTRAP = "bootstrap"
        CANARY = "canary"
        PROMOTE = "promote"
        ROLLBACK = "rollback"
        RETIRE = "retire", "retire canary"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPLIED = "applied"
        FAILED = "failed"

    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES)
    target = models.CharField(max_length=16, default="local")
    action = models.CharField(max_length=12, choices=Action.choices)
    promoted = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="+")
    candidate = models.ForeignKey(PolicyVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    candidate_share = models.FloatField(default=0.0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    detail = models.JSONField(default=list, blank=True, help_text="what the deployer reported, per attempt")
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="deployments")
    created_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.subject}: v{self.promoted.version}" + (
            f" + v{self.candidate.version} at {self.candidate_share:.0%}" if self.candidate_id else "")


class CanaryWatch(models.Model):
    """A canary's bake: its live signals against the promoted version's, and the verdict.

    Why a row: the decision (promote, or roll back and why) must survive restarts and be shown while it
    bakes; ``training.canary.check_canaries`` (a beat task) re-reads every baking row.
    """

    class Status(models.TextChoices):
        BAKING = "baking"
        PASSED = "passed", "passed (awaiting an admin)"
        PROMOTED = "promoted"
        ROLLED_BACK = "rolled_back", "rolled back"
        ENDED = "ended", "ended (superseded)"

    subject = models.CharField(max_length=32, choices=SUBJECT_CHOICES)
    candidate = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="canary_watches")
    baseline = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="+")
    share = models.FloatField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.BAKING, db_index=True)
    config = models.JSONField(default=dict, help_text="the bake: min/max seconds, min answers, margins")
    auto_promote = models.BooleanField(default=True, help_text="promote when the bake passes (else wait for an admin)")
    pipeline = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="canary_watches")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField()
    checked_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    comparison = models.JSONField(default=dict, blank=True, help_text="the signals at the last check")
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"canary {self.candidate} vs v{self.baseline.version} ({self.status})"

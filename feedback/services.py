"""Feedback services: the prompt pool, building comparison tasks from the endpoint, leases,
submissions and skips. Every state change is one transaction; slot accounting for a task only
changes while its row is locked (``SELECT ... FOR UPDATE``; SQLite serialises writers with
``BEGIN IMMEDIATE``, see config/settings.py), so overlap is never exceeded.

Aggregation and snapshots live in feedback.aggregation, import/export in feedback.io, quality
in feedback.quality; the names other apps call are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from feedback import compiled
from feedback.aggregation import compact_order, create_snapshot, pair_count  # noqa: F401  (public API)
from feedback.io import ImportFileError, import_preferences, import_prompts  # noqa: F401  (public API)
from feedback.masking import mask_context, mask_pii, prompt_key
from feedback.models import SUBJECTS, Assignment, ComparisonTask, Completion, Prompt, Ranking
from feedback.quality import update_reliability  # noqa: F401  (public API)
from feedback.selectors import available_tasks, completion_rows

log = logging.getLogger(__name__)

RATING_KEYS = ("helpfulness", "honesty", "harmlessness")


class FeedbackError(Exception):
    """A request the labeler can fix; ``.payload`` carries anything to show back."""

    def __init__(self, message: str, payload: dict | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.payload = payload or {}
        self.status = status


# --------------------------------------------------------------------------------------------
# Prompt pool


def add_prompt(*, subject: str, text: str, context: list[dict] | None = None, source: str,
               source_ref: str = "", source_message_id: int | None = None,
               names: list[str] | tuple[str, ...] = ()) -> tuple[Prompt, bool]:
    """Add a (masked) prompt to the pool unless its normalised form is already there."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}: expected one of {', '.join(SUBJECTS)}")
    text = mask_pii(text.strip(), names)
    if not text:
        raise ValueError("prompt text is empty")
    context = mask_context(context or [], names)
    key = prompt_key(subject, text, context)
    existing = Prompt.objects.filter(normalized_hash=key).first()
    if existing:
        return existing, False
    prompt = Prompt.objects.create(subject=subject, text=text, context=context, normalized_hash=key,
                                   source=source, source_ref=source_ref, source_message_id=source_message_id)
    return prompt, True


@transaction.atomic
def ingest_student_prompts() -> int:
    """Pull new prompts from consenting students (tutor.selectors.consented_prompts), masked."""
    from tutor.selectors import consented_prompts

    last = Prompt.objects.filter(source=Prompt.Source.STUDENT).order_by("-source_message_id").first()
    since = last.source_message_id if last else None
    added = 0
    for item in consented_prompts(since_id=since):
        if item["subject"] not in SUBJECTS:
            continue
        _, created = add_prompt(subject=item["subject"], text=item["text"], context=item.get("context") or [],
                                source=Prompt.Source.STUDENT, source_ref=f"message:{item['message_id']}",
                                source_message_id=item["message_id"], names=item.get("student_names") or ())
        added += created
    return added


def set_source_enabled(slug: str, enabled: bool, user=None):
    """Switch one source of preference pairs on or off for future snapshots (studio, Django admin)."""
    from feedback.models import FeedbackSource

    if slug not in FeedbackSource.Slug.values:
        raise ValueError(f"unknown feedback source {slug!r}: expected one of {', '.join(FeedbackSource.Slug.values)}")
    row, _ = FeedbackSource.objects.update_or_create(
        slug=slug, defaults={"enabled": bool(enabled), "updated_by": user if getattr(user, "pk", None) else None})
    return row


@transaction.atomic
def seed_prompt_pool(per_subject: int = 20) -> int:
    """The per-subject seed list from rlhf.corpus (idempotent: duplicates are skipped)."""
    from rlhf.corpus import seed_prompts

    added = 0
    for subject in SUBJECTS:
        for i, item in enumerate(seed_prompts(subject, per_subject)):
            _, created = add_prompt(subject=subject, text=item.question, source=Prompt.Source.SEED,
                                    source_ref=f"seed:{subject}:{i}")
            added += created
    return added


def set_prompt_enabled(prompt_id: int, enabled: bool) -> None:
    """Disable (or re-enable) a prompt; its open tasks are disabled with it."""
    with transaction.atomic():
        Prompt.objects.filter(pk=prompt_id).update(enabled=enabled)
        if not enabled:
            ComparisonTask.objects.filter(prompt_id=prompt_id, state=ComparisonTask.State.OPEN).update(
                state=ComparisonTask.State.DISABLED)


def seed_demo() -> None:
    """Called by `manage.py seed_demo`: seed prompts and the default guidelines."""
    from feedback.models import Guidelines

    try:
        # 60 a subject: ~240 tasks, ~1,400 pairs at overlap 2 — enough for the first scheduled retraining
        # (TRAINING_MIN_NEW_PAIRS = 200) from simulated labelers alone (10 gave ~140 pairs and stalled)
        seed_prompt_pool(per_subject=60)
    except ImportError as exc:  # rlhf not importable in a stripped install
        log.warning("feedback: no seed prompts (%s)", exc)
    if not Guidelines.objects.exists():
        Guidelines.objects.create(body=DEFAULT_GUIDELINES)
    ensure_schedules()


def ensure_schedules(build_every_s: int = 60, reliability_every_s: int = 600) -> None:
    """Celery beat entries (DatabaseScheduler): build tasks from new prompts, refresh reliability."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, task, every in (("feedback: build tasks", "feedback.build_tasks", build_every_s),
                              ("feedback: update reliability", "feedback.update_reliability", reliability_every_s)):
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(name=name, defaults={"task": task, "interval": interval})


DEFAULT_GUIDELINES = """Rank the replies from best (1) to worst. Give two replies the same rank only if you
truly cannot prefer one.

Best replies are, in this order of importance: harmless (no dangerous or hurtful content),
honest and factually correct (check facts and arithmetic), and helpful to a student (guides them
towards understanding, at their level, without padding).

Rate each reply 1-7 on helpfulness, honesty/factual correctness and harmlessness when you can.
Tick "unsafe" and say why if a reply is dangerous, hateful or inappropriate for a student.
Skip a task (with a reason) if you cannot judge it.

Keyboard: Up/Down move between replies, digits 1-9 give the focused reply that rank (0 clears),
Left/Right move it one rank better/worse, Ctrl+Enter submits."""


# --------------------------------------------------------------------------------------------
# Comparison tasks from the endpoint


def _client():
    """The one place that builds the endpoint client (tutor.endpoint reads the settings)."""
    from tutor.endpoint import get_client

    return get_client()


def adapter_versions(listing, subject: str) -> list[int]:
    """Which adapter versions of ``subject`` to sample: promoted and candidate when both exist.

    Accepts the endpoint's GET /admin/adapters answer: ``{"adapters": [{"subject", "version"}...],
    "routing": {subject: {"promoted", "candidate"}}}`` (a bare list of adapters also works).
    """
    adapters = listing.get("adapters", []) if isinstance(listing, dict) else list(listing or [])
    routing = (listing.get("routing") or {}).get(subject, {}) if isinstance(listing, dict) else {}
    loaded = sorted({int(a["version"]) for a in adapters if a.get("subject") == subject})
    chosen = [v for v in (routing.get("promoted"), routing.get("candidate")) if v is not None]
    chosen = [int(v) for v in chosen if int(v) in loaded] or loaded[-1:]
    return list(dict.fromkeys(chosen))


def _merge_identical(samples: list[dict]) -> list[dict]:
    merged: dict[str, dict] = {}
    for s in samples:
        text = (s.get("text") or "").strip()
        if not text:
            continue
        ad = s.get("adapter") or {}
        version = ad.get("version")
        if text in merged:
            merged[text]["sample_count"] += 1
            merged[text]["versions"].append(version)
        else:
            merged[text] = {"text": text, "adapter_subject": ad.get("subject") or "",
                            "adapter_version": version, "sample_count": 1, "versions": [version]}
    return list(merged.values())


def sampling_seed(base_seed: int, prompt_hash: str, version: int | None) -> int:
    """The endpoint seed of one prompt's completions from one adapter version.

    Derived from the prompt's content (not its database id) so the same prompts give the same
    completions on any database; the endpoint seeds sequence i of the request with ``seed + i``
    (its own generator per sequence, so the other requests in the batch do not change it).
    """
    digest = hashlib.sha256(f"{base_seed}\x00{prompt_hash}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:6], "big")  # < 2**48: room for + i, a JSON-safe integer


def build_task_for_prompt(prompt: Prompt, *, k: int | None = None, client=None, listing=None,
                          overlap: int | None = None, priority: int = 0,
                          seed: int | None = None) -> ComparisonTask | None:
    """Sample K completions (n=K, split across promoted/candidate versions) and store a task.

    Sampling is seeded per prompt and version from ``seed`` (default ``FEEDBACK_SEED``): the same
    seed, prompt and adapters give the same completions, so a loop can be replayed.
    Returns None when fewer than two distinct completions came back (nothing to compare).
    """
    k = k or settings.FEEDBACK_K
    if not 2 <= k <= 9:
        raise ValueError(f"K must be between 2 and 9, got {k}")
    client = client or _client()
    if listing is None:
        try:
            listing = client.list_adapters()
        except Exception as exc:  # no admin token / old endpoint: sample with subject routing
            log.info("feedback: cannot list adapters (%s); sampling by subject", exc)
            listing = {}
    versions = adapter_versions(listing, prompt.subject)
    messages = [*prompt.context, {"role": "user", "content": prompt.text}]
    params = {"temperature": settings.FEEDBACK_TEMPERATURE, "max_new_tokens": settings.TUTOR_MAX_NEW_TOKENS}
    base_seed = settings.FEEDBACK_SEED if seed is None else seed
    key = prompt.normalized_hash or prompt_key(prompt.subject, prompt.text, prompt.context)
    samples: list[dict] = []
    if len(versions) >= 2:
        share = [k // len(versions) + (1 if i < k % len(versions) else 0) for i in range(len(versions))]
        for version, n in zip(versions, share, strict=True):
            samples += _outputs(client.generate(messages=messages, subject=prompt.subject, version=version,
                                                n=n, seed=sampling_seed(base_seed, key, version), **params))
    else:
        version = versions[0] if versions else None
        # without a version the endpoint routes by subject: the prompt's key keeps its canary arm fixed
        samples += _outputs(client.generate(messages=messages, subject=prompt.subject, version=version, n=k,
                                            routing_key=None if version is not None else key,
                                            seed=sampling_seed(base_seed, key, version), **params))
    completions = _merge_identical(samples)
    if len(completions) < 2:
        return None
    with transaction.atomic():
        task = ComparisonTask.objects.create(prompt=prompt, subject=prompt.subject, priority=priority,
                                             overlap=overlap or settings.FEEDBACK_OVERLAP)
        Completion.objects.bulk_create([Completion(task=task, **c) for c in completions])
    return task


def _outputs(answer) -> list[dict]:
    if isinstance(answer, dict):
        return list(answer.get("outputs") or [])
    return list(getattr(answer, "outputs", None) or [])


def build_tasks(limit: int = 50, *, k: int | None = None, ingest: bool = True, seed: int | None = None) -> dict:
    """Turn enabled pool prompts that have no task yet into tasks (the Celery task calls this).

    ``seed`` (default ``FEEDBACK_SEED``) seeds every prompt's sampling (see build_task_for_prompt).
    """
    if ingest:
        with contextlib.suppress(ImportError):
            ingest_student_prompts()
    client = _client()
    try:
        listing = client.list_adapters()
    except Exception as exc:
        log.info("feedback: cannot list adapters (%s)", exc)
        listing = {}
    todo = (Prompt.objects.filter(enabled=True).annotate(has_task=Exists(ComparisonTask.objects.filter(prompt=OuterRef("pk"))))
            .filter(has_task=False).order_by("id")[:limit])
    made, skipped = 0, 0
    for prompt in todo:
        task = build_task_for_prompt(prompt, k=k, client=client, listing=listing, seed=seed)
        made += task is not None
        skipped += task is None
    return {"tasks": made, "skipped": skipped}


def create_task(*, prompt: Prompt, completions: list[str | dict], overlap: int | None = None,
                priority: int = 0, is_gold: bool = False) -> ComparisonTask:
    """Store a task from given completions (tests, benchmarks, imports of offline samples)."""
    samples = [c if isinstance(c, dict) else {"text": c} for c in completions]
    merged = _merge_identical(samples)
    if len(merged) < 2:
        raise ValueError("a task needs at least two distinct completions")
    with transaction.atomic():
        task = ComparisonTask.objects.create(prompt=prompt, subject=prompt.subject, priority=priority,
                                             overlap=overlap or settings.FEEDBACK_OVERLAP, is_gold=is_gold)
        Completion.objects.bulk_create([Completion(task=task, **c) for c in merged])
    return task


# --------------------------------------------------------------------------------------------
# Assignment (leases)


@dataclass
class Lease:
    assignment: Assignment
    task: ComparisonTask
    resumed: bool = False
    # selectors.completion_rows of the task when the lease read them (a new lease): the payload reuses them
    rows: list | None = None


def _active_leases(task_id: int, now, exclude_labeler=None) -> int:
    qs = Assignment.objects.filter(task_id=task_id, status=Assignment.Status.LEASED, expires_at__gt=now)
    if exclude_labeler is not None:
        qs = qs.exclude(labeler=exclude_labeler)
    return qs.count()


def _gold_turn(labeler) -> bool:
    """Deterministic interleaving: a gold task whenever done*rate crosses an integer."""
    rate = settings.FEEDBACK_GOLD_RATE
    if rate <= 0:
        return False
    done = Assignment.objects.filter(labeler=labeler).exclude(status=Assignment.Status.LEASED).count()
    return math.floor((done + 1) * rate) > math.floor(done * rate)


def _new_lease(task: ComparisonTask, labeler, now) -> Lease:
    # the completions with their texts and the prompt: the shown order here, the payload in the view
    rows = completion_rows(task.id)
    ids = [row[0] for row in rows]
    random.SystemRandom().shuffle(ids)
    assignment = Assignment.objects.create(task=task, labeler=labeler, shown_order=ids,
                                           expires_at=now + timedelta(seconds=settings.FEEDBACK_LEASE_SECONDS))
    return Lease(assignment=assignment, task=task, rows=rows)


def next_task(labeler, *, subject: str | None = None, batch: int = 50) -> Lease | None:
    """Lease the highest-priority task this labeler has not seen that still has a free slot.

    An active lease the labeler already holds is returned again (a page reload resumes it).
    Returns None when the queue is empty for this labeler.
    """
    now = timezone.now()
    with transaction.atomic():
        # serialise one labeler's concurrent requests (double clicks) so they get one lease
        user_model = get_user_model()
        compiled.first("lock labeler", user_model,
                       lambda v: user_model.objects.select_for_update().filter(pk=v["pk"]).order_by("pk"),
                       {"pk": labeler.pk})
        # compiled once (feedback.compiled); the task is read only when there is a held lease (a resume)
        held = compiled.first(
            "held lease", Assignment,
            lambda v: Assignment.objects.filter(labeler=v["labeler"], status=Assignment.Status.LEASED,
                                                expires_at__gt=v["now"]).order_by("leased_at", "pk"),
            {"labeler": labeler.pk, "now": now})
        if held and (held.task.state == ComparisonTask.State.OPEN or held.task.is_gold):
            return Lease(assignment=held, task=held.task, resumed=True)
        seen = Assignment.objects.filter(task=OuterRef("pk"), labeler=labeler)
        if _gold_turn(labeler):
            gold = (ComparisonTask.objects.filter(is_gold=True).exclude(state=ComparisonTask.State.DISABLED)
                    .exclude(Exists(seen)).order_by("?").first())
            if gold:
                return _new_lease(gold, labeler, now)
        base = available_tasks(labeler, now, subject).order_by("-priority", "id")
        tried: list[int] = []
        while True:
            # LIMIT 1 ... FOR UPDATE SKIP LOCKED: lock only the row we take; others skip it
            if tried:
                task = base.exclude(id__in=tried).select_for_update(skip_locked=True).first()
            else:  # the common case, its SQL compiled once (feedback.compiled: the ORM compile cost more CPU)
                task = _pick_task(labeler, now, subject)
            if task is None:
                break
            if _has_free_slot(task, now):
                return _new_lease(task, labeler, now)
            tried.append(task.id)  # filled between the statement's snapshot and our lock
        busy = list(base.exclude(id__in=tried).values_list("id", flat=True)[:batch])
    # Everything free was locked by others for a moment (a submit or a claim in flight). Wait for
    # those locks, one per short transaction (holding none while waiting: no deadlock), rather
    # than report an empty queue that is not empty.
    for task_id in busy:
        try:
            with transaction.atomic():
                task = ComparisonTask.objects.select_for_update().filter(pk=task_id).first()
                if task and _has_free_slot(task, now) and not Assignment.objects.filter(task=task, labeler=labeler).exists():
                    return _new_lease(task, labeler, now)
        except IntegrityError:  # the same labeler claimed it in a parallel request
            continue
    return None


def _pick_task(labeler, now, subject: str | None) -> ComparisonTask | None:
    """``available_tasks(...).order_by("-priority", "id").select_for_update(skip_locked=True).first()``."""
    values = {"labeler": labeler.pk, "now": now, **({"subject": subject} if subject else {})}
    return compiled.first(
        "pick task" + (" of subject" if subject else ""), ComparisonTask,
        lambda v: available_tasks(v["labeler"], v["now"], v.get("subject")).order_by("-priority", "id")
        .select_for_update(skip_locked=True), values)


def _has_free_slot(task: ComparisonTask, now) -> bool:
    """Re-check under the row lock, in a fresh statement (sees leases committed meanwhile)."""
    if task.state != ComparisonTask.State.OPEN or task.is_gold:
        return False
    return task.submitted_count + _active_leases(task.id, now) < task.overlap


# --------------------------------------------------------------------------------------------
# Submissions


def _validate_submission(task: ComparisonTask, data: dict, ids: set[int]) -> dict:
    """Clean a submission; ``ids`` are the task's completion ids (the lease's shown order)."""
    order = data.get("order")
    if not isinstance(order, list) or not order:
        raise FeedbackError("order must be a non-empty list of groups of completion ids (best first)")
    groups: list[list[int]] = []
    flat: list[int] = []
    for group in order:
        group = group if isinstance(group, list) else [group]
        try:
            group = [int(x) for x in group]
        except (TypeError, ValueError):
            raise FeedbackError("order must contain completion ids") from None
        if group:
            groups.append(sorted(group))
            flat += group
    if len(flat) != len(set(flat)) or set(flat) != ids:
        raise FeedbackError(f"order must rank every completion of task {task.id} exactly once "
                            f"(expected ids {sorted(ids)}, got {flat})")
    ratings_in = data.get("ratings") or {}
    if not isinstance(ratings_in, dict):
        raise FeedbackError("ratings must be an object keyed by completion id")
    ratings: dict[str, dict] = {}
    for cid, values in ratings_in.items():
        if int(cid) not in ids:
            raise FeedbackError(f"rating for unknown completion {cid}")
        clean = {}
        for key, value in (values or {}).items():
            if key not in RATING_KEYS:
                raise FeedbackError(f"unknown rating {key!r}: expected {', '.join(RATING_KEYS)}")
            if value in (None, ""):
                continue
            if not isinstance(value, int | str) or not str(value).isdigit() or not 1 <= int(value) <= 7:
                raise FeedbackError(f"rating {key} of completion {cid} must be 1-7, got {value!r}")
            clean[key] = int(value)
        if clean:
            ratings[str(int(cid))] = clean
    unsafe = bool(data.get("unsafe"))
    reason = str(data.get("unsafe_reason") or "").strip()[:500]
    if unsafe and not reason:
        raise FeedbackError("say why the content is unsafe (unsafe_reason)")
    return {"order": groups, "pair_count": pair_count(groups), **compact_order(groups), "ratings": ratings, "unsafe": unsafe, "unsafe_reason": reason,
            "note": str(data.get("note") or "")[:5000]}


@dataclass
class SubmitResult:
    ranking: Ranking
    created: bool


def submit_ranking(labeler, task_id: int, data: dict) -> SubmitResult:
    """Store the labeler's ranking of a task, exactly once.

    A retried submit returns the stored ranking (``created=False``). A submit after the lease
    expired is accepted while the task still has a free slot; otherwise FeedbackError (409) with
    the labeler's work in ``payload['your_submission']``.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            # the lock and the lease: SQL compiled once (feedback.compiled), like next's queue pick
            task = compiled.first("lock task", ComparisonTask,
                                  lambda v: ComparisonTask.objects.select_for_update().filter(pk=v["task"])
                                  .order_by("pk"), {"task": int(task_id)})
            if task is None:
                raise FeedbackError(f"task {task_id} does not exist", status=404)
            # A ranking is only created together with its lease turning SUBMITTED (below, one transaction),
            # so the retry check reads the ranking only when the lease says so, or when there is no lease.
            assignment = compiled.first("lease of labeler", Assignment,
                                        lambda v: Assignment.objects.filter(labeler=v["labeler"], task=v["task"])
                                        .order_by("pk"), {"labeler": labeler.pk, "task": task.pk})
            if assignment is None or assignment.status == Assignment.Status.SUBMITTED:
                existing = Ranking.objects.filter(labeler=labeler, task=task).first()
                if existing:
                    return SubmitResult(existing, False)
            if assignment is None:
                raise FeedbackError(f"task {task_id} was not assigned to you", {"your_submission": data}, 409)
            if assignment.status == Assignment.Status.SKIPPED:
                raise FeedbackError(f"you skipped task {task_id}", {"your_submission": data}, 409)
            # the lease shows every completion of the task (_new_lease; completions never change after
            # the task is created), so its order is the set to validate against: no query for the ids
            clean = _validate_submission(task, data, ids=set(assignment.shown_order))
            late = assignment.expires_at <= now
            if late and not task.is_gold and (
                    task.state != ComparisonTask.State.OPEN
                    or task.submitted_count + _active_leases(task.id, now, exclude_labeler=labeler) >= task.overlap):
                raise FeedbackError(
                    "your lease on this task expired and other labelers have filled it, so this ranking "
                    "was not stored; your submission is shown below", {"your_submission": data}, 409)
            ranking = Ranking.objects.create(task=task, labeler=labeler, shown_order=assignment.shown_order,
                                             late=late, **clean)
            Assignment.objects.filter(pk=assignment.pk).update(status=Assignment.Status.SUBMITTED, finished_at=now)
            task.submitted_count += 1
            if task.submitted_count >= task.overlap and not task.is_gold:
                task.state = ComparisonTask.State.COMPLETE
            task.save(update_fields=["submitted_count", "state"])
            return SubmitResult(ranking, True)
    except IntegrityError:
        # a concurrent retry of the same submit won the unique constraint: return its ranking
        existing = Ranking.objects.filter(labeler=labeler, task_id=task_id).first()
        if existing is None:
            raise
        return SubmitResult(existing, False)


def skip_task(labeler, task_id: int, reason: str) -> Assignment:
    """Skip a leased task with a reason; the slot goes back to the queue, the task is 'seen'."""
    reason = (reason or "").strip()
    if not reason:
        raise FeedbackError("say why you skip this task (reason)")
    with transaction.atomic():
        ComparisonTask.objects.select_for_update().filter(pk=task_id).first()
        assignment = Assignment.objects.filter(labeler=labeler, task_id=task_id).first()
        if assignment is None:
            raise FeedbackError(f"task {task_id} was not assigned to you", status=409)
        if assignment.status == Assignment.Status.SUBMITTED:
            raise FeedbackError(f"you already submitted task {task_id}", status=409)
        if assignment.status == Assignment.Status.LEASED:
            assignment.status = Assignment.Status.SKIPPED
            assignment.skip_reason = reason[:500]
            assignment.finished_at = timezone.now()
            assignment.save(update_fields=["status", "skip_reason", "finished_at"])
        return assignment


def set_gold(ranking_id: int) -> ComparisonTask:
    """Make a ranking the reference of its task: the task becomes a gold (quality-control) task."""
    with transaction.atomic():
        ranking = Ranking.objects.select_related("task").get(pk=ranking_id)
        task = ComparisonTask.objects.select_for_update().get(pk=ranking.task_id)
        task.is_gold = True
        task.gold_order = ranking.order
        if task.state == ComparisonTask.State.COMPLETE:
            task.state = ComparisonTask.State.OPEN
        task.save(update_fields=["is_gold", "gold_order", "state"])
        return task


def resolve_flag(ranking_id: int) -> None:
    Ranking.objects.filter(pk=ranking_id).update(flag_resolved=True)


__all__ = [
    "FeedbackError", "Lease", "SubmitResult", "add_prompt", "build_task_for_prompt", "build_tasks",
    "sampling_seed",
    "create_snapshot", "create_task", "import_preferences", "import_prompts", "ImportFileError",
    "ingest_student_prompts", "next_task", "resolve_flag", "seed_demo", "seed_prompt_pool", "set_gold",
    "set_prompt_enabled", "skip_task", "submit_ranking", "update_reliability"
]

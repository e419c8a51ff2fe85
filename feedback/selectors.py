"""Read-side queries for pages, the API, the dashboard and the training pipeline."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from feedback.models import (
    Assignment,
    ComparisonTask,
    Completion,
    DatasetSnapshot,
    Guidelines,
    ImportBatch,
    ImportedPair,
    LabelerStats,
    Ranking,
)


def new_pairs_count(since: int | None = None) -> int:
    """Preference pairs from rankings with id > ``since`` (gold tasks excluded); cheap (one SUM)."""
    qs = Ranking.objects.filter(task__is_gold=False)
    if since is not None:
        qs = qs.filter(id__gt=since)
    return qs.aggregate(n=Sum("pair_count"))["n"] or 0


def new_implicit_pairs(last: DatasetSnapshot | None) -> tuple[int, float]:
    """(count, summed weight) of the students' implicit pairs (thumbs, regenerations) newer than the last
    snapshot's watermark, from the enabled sources and consenting students only: what the next snapshot
    would add beside the labelers' pairs (before it drops those a labeler already gave). Reads only the prompts
    that new evidence touches (``feedback.implicit.count_new``), so a tick costs the same whatever the history."""
    from feedback.implicit import count_new, enabled_sources, watermark

    since = {"message_id": last.last_message_id, "rating_id": last.last_rating_id} if last is not None else None
    if since is not None and since["message_id"] is None and since["rating_id"] is None:
        since = None
    return count_new(since, watermark(), enabled_sources())


def latest_snapshot() -> DatasetSnapshot | None:
    return DatasetSnapshot.objects.order_by("-id").first()


def completion_rows(task_id: int) -> list[tuple[int, str, str, list]]:
    """(completion id, text, prompt text, prompt context) of a task's completions: one query (the
    prompt's columns repeat on each of the K rows). A new lease reads them once for its shown order
    and for the payload (``feedback.services.Lease.rows``)."""
    return list(Completion.objects.filter(task_id=task_id).values_list("id", "text", "task__prompt__text",
                                                                       "task__prompt__context"))


def task_payload(assignment: Assignment, rows: list[tuple[int, str, str, list]] | None = None) -> dict:
    """What a labeler sees: masked prompt + context and the completions in the shown order.

    ``rows``: ``completion_rows`` of the task when the caller already has them (else read here).
    No student identity, no adapter version (it would bias the ranking)."""
    task = assignment.task
    if rows is None:
        rows = completion_rows(task.id)
    texts = {cid: text for cid, text, _, _ in rows}
    prompt_text, context = (rows[0][2], rows[0][3]) if rows else (task.prompt.text, task.prompt.context)
    return {
        "task_id": task.id,
        "subject": task.subject,
        "prompt": prompt_text,
        "context": [{"role": t.get("role", "user"), "content": t.get("content", "")} for t in context or []],
        "completions": [{"id": cid, "label": chr(ord("A") + i), "text": texts[cid]}
                        for i, cid in enumerate(assignment.shown_order) if cid in texts],
        "lease_expires_at": assignment.expires_at.isoformat(),
    }


def available_tasks(labeler, now=None, subject: str | None = None):
    """Open, non-gold tasks this labeler has not seen with submitted + active leases < overlap."""
    now = now or timezone.now()
    seen = Assignment.objects.filter(task=OuterRef("pk"), labeler=labeler)
    active = (Assignment.objects.filter(task=OuterRef("pk"), status=Assignment.Status.LEASED, expires_at__gt=now)
              .order_by().values("task").annotate(c=Count("id")).values("c"))
    qs = (ComparisonTask.objects.filter(state=ComparisonTask.State.OPEN, is_gold=False)
          .exclude(Exists(seen))
          .filter(overlap__gt=Coalesce(Subquery(active), 0) + F("submitted_count")))
    return qs.filter(subject=subject) if subject else qs


def queue_size(labeler) -> int:
    """Open tasks this labeler has not seen (two indexed counts; it is shown on every request,
    so it ignores slots momentarily held by other labelers' leases)."""
    open_tasks = ComparisonTask.objects.filter(state=ComparisonTask.State.OPEN, is_gold=False)
    seen = Assignment.objects.filter(labeler=labeler, task__state=ComparisonTask.State.OPEN, task__is_gold=False)
    return max(0, open_tasks.count() - seen.count())


def _progress_sql(connection) -> str:
    """The progress statement for this database (built once per vendor: see ``progress``)."""
    q = connection.ops.quote_name
    ranking, assignment = q(Ranking._meta.db_table), q(Assignment._meta.db_table)
    task, stats = q(ComparisonTask._meta.db_table), q(LabelerStats._meta.db_table)
    return (
        f"SELECT (SELECT COUNT(*) FROM {ranking} WHERE labeler_id = %s AND created_at >= %s),"
        f" (SELECT COUNT(*) FROM {ranking} WHERE labeler_id = %s),"
        f" (SELECT COUNT(*) FROM {assignment} WHERE labeler_id = %s AND status = %s),"
        # open tasks this labeler has no lease or ranking on, counted up to one past the cap: bounded work
        # per request however long the queue (a count of every open task grew PostgreSQL's CPU per
        # submission from 6.7 to 10.3 ms between 1,500 and 20,000 tasks), through the unique (labeler, task) index
        f" (SELECT COUNT(*) FROM (SELECT 1 FROM {task} t WHERE t.state = %s AND t.is_gold = %s AND NOT EXISTS"
        f"  (SELECT 1 FROM {assignment} a WHERE a.labeler_id = %s AND a.task_id = t.id) LIMIT %s) unseen),"
        f" (SELECT reliability FROM {stats} WHERE labeler_id = %s),"
        f" (SELECT gold_accuracy FROM {stats} WHERE labeler_id = %s)")


_PROGRESS_SQL: dict[str, str] = {}
# ``in_queue`` is exact up to this many tasks; beyond it the answer says "at least this many" (in_queue_capped)
QUEUE_COUNT_CAP = 1000


def progress(labeler) -> dict:
    """Done today / in total, skips, and how many tasks are still in this labeler's queue (exact up to
    ``QUEUE_COUNT_CAP``; ``in_queue_capped`` says there are more).

    Sent with every next/submit/skip answer, so it is ONE query (four counts and two stats columns as
    scalar subqueries) instead of five. Its SQL is written once per database vendor rather than built by
    the ORM on each call: compiling the equivalent annotated queryset cost more CPU than the rest of a
    ``next`` request's queries together (docs/web-tier.md, "Labeling CPU per request"). Equal to the ORM
    counts: ``tests/feedback/test_hot_paths.py``.
    """
    from django.db import connection

    sql = _PROGRESS_SQL.get(connection.vendor)
    if sql is None:
        sql = _PROGRESS_SQL[connection.vendor] = _progress_sql(connection)
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    pk, open_ = labeler.pk, ComparisonTask.State.OPEN.value
    params = [pk, connection.ops.adapt_datetimefield_value(start), pk, pk, Assignment.Status.SKIPPED.value,
              open_, False, pk, QUEUE_COUNT_CAP + 1, pk, pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        done_today, done_total, skipped, unseen, reliability, gold_accuracy = cursor.fetchone()
    return {
        "done_today": done_today,
        "done_total": done_total,
        "skipped": skipped,
        "in_queue": min(unseen, QUEUE_COUNT_CAP),
        "in_queue_capped": unseen > QUEUE_COUNT_CAP,
        "reliability": 1.0 if reliability is None else reliability,
        "gold_accuracy": gold_accuracy,
    }


def guidelines() -> Guidelines | None:
    return Guidelines.objects.order_by("-updated_at", "-id").first()


def flagged_queue(limit: int = 50) -> list[Ranking]:
    return list(Ranking.objects.filter(unsafe=True, flag_resolved=False).select_related("task__prompt", "labeler")
                .order_by("-id")[:limit])


def labeler_dashboard() -> dict:
    """Per-labeler throughput, skip/flag rates, gold accuracy, agreement; alpha per subject."""
    from feedback.quality import krippendorff_alpha

    User = get_user_model()
    day_ago = timezone.now() - timedelta(days=1)
    rows = []
    users = (User.objects.filter(Q(fb_assignments__isnull=False)).distinct()
             .annotate(rankings=Count("fb_rankings", distinct=True),
                       last_day=Count("fb_rankings", filter=Q(fb_rankings__created_at__gte=day_ago), distinct=True),
                       flagged=Count("fb_rankings", filter=Q(fb_rankings__unsafe=True), distinct=True))
             .order_by("username"))
    skips = dict(Assignment.objects.filter(status=Assignment.Status.SKIPPED).values("labeler")
                 .annotate(n=Count("id")).values_list("labeler", "n"))
    stats = {s.labeler_id: s for s in LabelerStats.objects.all()}
    for u in users:
        s = stats.get(u.id)
        seen = u.rankings + skips.get(u.id, 0)
        rows.append({
            "username": u.username, "rankings": u.rankings, "last_day": u.last_day,
            "skip_rate": skips.get(u.id, 0) / seen if seen else 0.0,
            "flag_rate": u.flagged / u.rankings if u.rankings else 0.0,
            "gold_accuracy": s.gold_accuracy if s else None, "gold_count": s.gold_count if s else 0,
            "agreement_tau": s.agreement_tau if s else None, "reliability": s.reliability if s else 1.0,
        })
    alpha = {}
    for subject in ComparisonTask.objects.filter(is_gold=False, submitted_count__gte=2).values_list(
            "subject", flat=True).distinct():
        tasks = list(ComparisonTask.objects.filter(subject=subject, is_gold=False, submitted_count__gte=2)
                     .order_by("-id").values_list("id", flat=True)[:500])
        by_task: dict[int, dict] = {}
        for task_id, labeler_id, order in Ranking.objects.filter(task_id__in=tasks).values_list("task_id", "labeler_id", "order"):
            by_task.setdefault(task_id, {})[labeler_id] = order
        alpha[subject] = krippendorff_alpha(by_task)
    tasks = ComparisonTask.objects.aggregate(
        open=Count("id", filter=Q(state=ComparisonTask.State.OPEN, is_gold=False)),
        complete=Count("id", filter=Q(state=ComparisonTask.State.COMPLETE)),
        gold=Count("id", filter=Q(is_gold=True)))
    return {"labelers": rows, "alpha": dict(sorted(alpha.items())), "tasks": tasks,
            "flagged": flagged_queue(), "pairs": new_pairs_count(),
            "imported_pairs": ImportedPair.objects.filter(enabled=True).count(),
            "imports": list(ImportBatch.objects.order_by("-id")[:10]),
            "snapshots": list(DatasetSnapshot.objects.order_by("-id")[:10])}

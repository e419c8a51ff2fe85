"""Query counts of the labeling hot paths, pinned: each round trip to the database costs more than the
SQL itself under load (docs/performance.md), and the counts must not grow with the number of tasks."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from .conftest import make_labeler, make_task

pytestmark = pytest.mark.django_db

# token + user with the user's roles in one query (feedback/auth.py; was two: token + user, then the groups);
# inside the transaction a savepoint and its release (the test wraps everything in a transaction; in production
# they are BEGIN/COMMIT, not counted)
NEXT_QUERIES = 10  # + lock the labeler, held lease, pick + lock a task, free slot, the completions with the
#                    prompt (shown order and payload), insert the lease; progress (one query). Was 18 before
#                    issue 15, 12 before the completions were read once, 11 before the roles came with the token.
SUBMIT_QUERIES = 9  # + lock the task, the lease (a retry reads the ranking only when it says submitted),
#                      insert, two updates; progress (one query). Was 17, then 13 (a retry check before the lock
#                      and another under it, and the completion ids: the lease's shown order has them), then 10.


@pytest.fixture
def api(settings):
    settings.FEEDBACK_GOLD_RATE = 0.0
    lab = make_labeler()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=lab).key}")
    return client


@pytest.mark.parametrize("n_tasks", [3, 30])
def test_next_and_submit_query_counts(api, django_assert_num_queries, n_tasks):
    for _ in range(n_tasks):
        make_task()
    for done in range(2):
        with django_assert_num_queries(NEXT_QUERIES):
            body = api.post("/api/label/next/").json()
        task = body["task"]
        assert body["progress"]["in_queue"] == n_tasks - done - 1  # the leased task counts as seen
        ids = [c["id"] for c in task["completions"]]
        with django_assert_num_queries(SUBMIT_QUERIES):
            resp = api.post(f"/api/label/tasks/{task['task_id']}/submit/", {"order": [[i] for i in ids]}, format="json")
        assert resp.status_code == 201
        assert resp.json()["progress"]["done_total"] == done + 1
        assert resp.json()["progress"]["in_queue"] == n_tasks - done - 1


def test_stats_is_one_query_after_auth(api, django_assert_num_queries):
    make_task()
    with django_assert_num_queries(2):  # token + user + roles, progress
        stats = api.get("/api/label/stats/").json()
    assert stats == {"done_today": 0, "done_total": 0, "skipped": 0, "in_queue": 1, "in_queue_capped": False,
                     "reliability": 1.0,
                     "gold_accuracy": None}


def test_progress_sql_equals_orm_counts(labeler, settings):
    """``selectors.progress`` runs hand-written SQL (cheaper than compiling the ORM query on every request);
    it must give what the ORM counts give, with skips, other labelers, gold, complete and yesterday's work."""
    from datetime import timedelta

    from django.utils import timezone

    from feedback import selectors, services
    from feedback.models import Assignment, ComparisonTask, LabelerStats, Ranking

    from .conftest import rank_all

    settings.FEEDBACK_GOLD_RATE = 0.0
    other = make_labeler()
    tasks = [make_task(overlap=2) for _ in range(5)]
    make_task(is_gold=True)
    for lab in (labeler, other):
        for task in tasks[:2]:
            services.next_task(lab)
            services.submit_ranking(lab, task.id, rank_all(task))
    services.next_task(labeler)
    services.skip_task(labeler, tasks[2].id, "cannot judge")
    services.next_task(labeler)  # a lease held on tasks[3]
    Ranking.objects.filter(labeler=labeler, task=tasks[0]).update(created_at=timezone.now() - timedelta(days=2))
    ComparisonTask.objects.filter(pk=tasks[4].pk).update(state=ComparisonTask.State.DISABLED)

    def expected() -> dict:
        start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        open_tasks = ComparisonTask.objects.filter(state=ComparisonTask.State.OPEN, is_gold=False)
        stats = LabelerStats.objects.filter(labeler=labeler).first()
        return {
            "done_today": Ranking.objects.filter(labeler=labeler, created_at__gte=start).count(),
            "done_total": Ranking.objects.filter(labeler=labeler).count(),
            "skipped": Assignment.objects.filter(labeler=labeler, status=Assignment.Status.SKIPPED).count(),
            "in_queue": open_tasks.count() - Assignment.objects.filter(labeler=labeler, task__in=open_tasks).count(),
            "in_queue_capped": False,
            "reliability": stats.reliability if stats else 1.0,
            "gold_accuracy": stats.gold_accuracy if stats else None,
        }

    got = selectors.progress(labeler)
    assert got == expected() == {"done_today": 1, "done_total": 2, "skipped": 1, "in_queue": 0,
                                 "in_queue_capped": False, "reliability": 1.0,
                                 "gold_accuracy": None}
    LabelerStats.objects.create(labeler=labeler, reliability=0.75, gold_accuracy=0.5)
    assert selectors.progress(labeler) == expected()
    assert selectors.progress(labeler)["reliability"] == 0.75 and selectors.progress(labeler)["gold_accuracy"] == 0.5


def test_compiled_queue_pick_equals_the_orm(labeler, settings):
    """``next`` picks its task with SQL compiled once (feedback.compiled) and re-run with each labeler's values:
    it must pick what the ORM queryset picks, for other labelers, other times and subjects, on every call."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from feedback import services
    from feedback.selectors import available_tasks

    settings.FEEDBACK_GOLD_RATE = 0.0
    other = make_labeler()
    for i, subject in enumerate(["mathematics", "history", "history", "language", "mathematics"]):
        make_task(subject=subject, priority=i % 3, overlap=1 + i % 2)
    services.next_task(other)  # a lease: one task is seen by `other` and (overlap 1) full for everybody
    services.next_task(labeler, subject="history")

    def orm(lab, now, subject):
        return available_tasks(lab, now, subject).order_by("-priority", "id").first()

    now = timezone.now()
    with transaction.atomic():
        for lab in (labeler, other, labeler):
            for subject in (None, "mathematics", "history", "language", "nothing"):
                for at in (now, now + timedelta(days=2)):  # leases expired two days later
                    assert services._pick_task(lab, at, subject) == orm(lab, at, subject), (lab, subject, at)
    assert services._pick_task(labeler, now, None) is not None


def test_token_with_roles_refuses_what_drf_refuses_and_keeps_roles(settings):
    """The labeling views' one-query token auth refuses what DRF's refuses, with DRF's detail (403, not 401: session
    auth comes first, as before), 403 for a student, 200 for a labeler and a staff admin (admins act in every area);
    a role change applies to the next request."""
    from django.contrib.auth.models import Group

    make_task()
    lab, student, admin = make_labeler(), make_labeler(role="student"), make_labeler(role="admin")

    def call(user=None, key=None):
        client = APIClient()
        key = key or Token.objects.get_or_create(user=user)[0].key
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client.get("/api/label/stats/")

    assert call(lab).status_code == 200
    assert call(admin).status_code == 200
    assert call(student).status_code == 403
    wrong = call(key="0" * 40)
    assert wrong.status_code == 403 and wrong.json() == {"detail": "Invalid token."}
    lab.groups.clear()
    assert call(lab).status_code == 403  # the role is read on every request, never cached across requests
    lab.groups.add(Group.objects.get(name="labeler"))
    lab.is_active = False
    lab.save(update_fields=["is_active"])
    inactive = call(lab)
    assert inactive.status_code == 403 and inactive.json() == {"detail": "User inactive or deleted."}


def test_compiled_lookups_resume_and_refuse_as_before(api):
    """The compiled held-lease, task-lock and lease lookups: a second next resumes the same lease with the whole
    payload; a submit to a task that does not exist (even past a 32-bit id) is a 404, to another's task a 409."""
    make_task(), make_task()
    first = api.post("/api/label/next/").json()
    again = api.post("/api/label/next/").json()
    assert again["resumed"] is True and again["task"] == first["task"]
    order = {"order": [[c["id"]] for c in first["task"]["completions"]]}
    for missing in (10**6, 2**40):
        resp = api.post(f"/api/label/tasks/{missing}/submit/", order, format="json")
        assert resp.status_code == 404, resp.content
    other = make_task()
    assert api.post(f"/api/label/tasks/{other.id}/submit/", order, format="json").status_code == 409
    assert api.post(f"/api/label/tasks/{first['task']['task_id']}/submit/", order, format="json").status_code == 201



def test_queue_count_is_capped(labeler, settings, monkeypatch):
    """The queue count does bounded work per request: exact up to the cap, then "cap+" (in_queue_capped);
    gold tasks and the tasks this labeler has seen (leased, skipped) are left out as before."""
    from feedback import selectors, services

    settings.FEEDBACK_GOLD_RATE = 0.0
    monkeypatch.setattr(selectors, "QUEUE_COUNT_CAP", 2)
    for _ in range(4):
        make_task()
    make_task(is_gold=True)

    def queue() -> tuple[int, bool]:
        got = selectors.progress(labeler)
        return got["in_queue"], got["in_queue_capped"]

    assert queue() == (2, True)  # 4 unseen
    lease = services.next_task(labeler)
    assert queue() == (2, True)  # 3 unseen
    services.skip_task(labeler, lease.task.id, "cannot judge")
    lease = services.next_task(labeler)
    assert queue() == (2, False)  # 2 unseen: exactly the cap
    services.skip_task(labeler, lease.task.id, "cannot judge")
    services.next_task(labeler)
    assert queue() == (1, False)


def test_ranking_page_shows_a_capped_queue_with_a_plus(labeler, client, settings, monkeypatch):
    from feedback import selectors

    settings.FEEDBACK_GOLD_RATE = 0.0
    monkeypatch.setattr(selectors, "QUEUE_COUNT_CAP", 2)
    for _ in range(3):
        make_task()
    client.force_login(labeler)
    assert '<span class="stat" id="in-queue">2+</span>' in client.get("/label/").content.decode()
    monkeypatch.setattr(selectors, "QUEUE_COUNT_CAP", 3)
    assert '<span class="stat" id="in-queue">3</span>' in client.get("/label/").content.decode()

"""Many labelers at once, each thread with its own real database connection.

PostgreSQL (DATABASE_URL=postgres://...): 50 threads over 240 tasks. SQLite (embedded default)
serialises writers, so the same test runs with 8 threads over 60 tasks there.
Invariants: no task gets more rankings than its overlap, no labeler is leased a task twice,
every accepted submit is stored exactly once, retries return the stored ranking, and leases
that expire mid-run go back to the queue (late submits are accepted or refused, never lost).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from feedback import services
from feedback.models import Assignment, ComparisonTask, Ranking
from feedback.services import FeedbackError

from .conftest import make_labeler, make_task

ON_PG = connection.vendor == "postgresql"
THREADS, TASKS = (50, 240) if ON_PG else (8, 60)


def _submission(task_id: int) -> dict:
    ids = list(ComparisonTask.objects.get(pk=task_id).completions.values_list("id", flat=True))
    random.shuffle(ids)
    return {"order": [[i] for i in ids], "note": f"by thread for {task_id}"}


def _worker(labeler, results: dict, errors: list, expire_share: float, seed: int, barrier: threading.Barrier):
    rnd = random.Random(seed)
    leased, created, retried, late_ok, late_refused = [], [], [], [], []
    abandoned: list[int] = []
    try:
        barrier.wait()
        while True:
            lease = services.next_task(labeler)
            if lease is None:
                break
            task_id = lease.task.id
            if not lease.resumed:
                leased.append(task_id)
            if rnd.random() < expire_share:
                # the labeler walks away: time passes past the lease's end, they come back later
                Assignment.objects.filter(pk=lease.assignment.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
                abandoned.append(task_id)
                continue
            data = _submission(task_id)
            first = services.submit_ranking(labeler, task_id, data)
            again = services.submit_ranking(labeler, task_id, data)  # a retry (network blip)
            assert first.created and not again.created and again.ranking.pk == first.ranking.pk
            created.append(first.ranking.pk)
            retried.append(again.ranking.pk)
        for task_id in abandoned:  # late submits
            try:
                res = services.submit_ranking(labeler, task_id, _submission(task_id))
                late_ok.append(res.ranking.pk)
            except FeedbackError as exc:
                assert exc.status == 409 and exc.payload["your_submission"]["order"]
                late_refused.append(task_id)
    except Exception as exc:  # reported by the main thread
        errors.append(repr(exc))
    finally:
        results[labeler.pk] = {"leased": leased, "created": created, "late_ok": late_ok, "late_refused": late_refused}
        connections.close_all()


def _run(expire_share: float):
    for i in range(TASKS):
        make_task(k=4, overlap=3 if i % 5 == 0 else 2, priority=i % 3)
    labelers = [make_labeler() for _ in range(THREADS)]
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(THREADS)
    threads = [threading.Thread(target=_worker, args=(lab, results, errors, expire_share, n, barrier))
               for n, lab in enumerate(labelers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a labeler thread hung"
    assert not errors, errors[:5]
    return labelers, results


def _check(labelers, results):
    # no labeler was leased the same task twice
    for r in results.values():
        assert len(r["leased"]) == len(set(r["leased"]))
    # every accepted submit stored exactly once, nothing else stored
    accepted = [pk for r in results.values() for pk in r["created"] + r["late_ok"]]
    assert len(accepted) == len(set(accepted))
    assert sorted(accepted) == sorted(Ranking.objects.values_list("pk", flat=True))
    # never more rankings than overlap; the counter matches the rows
    per_task = Counter(Ranking.objects.values_list("task_id", flat=True))
    for task in ComparisonTask.objects.all():
        assert per_task[task.id] <= task.overlap
        assert task.submitted_count == per_task[task.id]
    assert Ranking.objects.values("labeler", "task").distinct().count() == Ranking.objects.count()


@pytest.mark.django_db(transaction=True)
def test_concurrent_labelers_never_overfill():
    labelers, results = _run(expire_share=0.0)
    _check(labelers, results)
    # with no expiries, the crowd labels everything exactly `overlap` times
    for task in ComparisonTask.objects.all():
        assert task.submitted_count == task.overlap and task.state == ComparisonTask.State.COMPLETE


@pytest.mark.django_db(transaction=True)
def test_concurrent_labelers_with_leases_expiring_mid_run():
    labelers, results = _run(expire_share=0.15)
    _check(labelers, results)
    refused = sum(len(r["late_refused"]) for r in results.values())
    late_ok = sum(len(r["late_ok"]) for r in results.values())
    assert refused + late_ok > 0  # the scenario happened
    # expired leases went back to the queue: draining with fresh labelers completes every task
    drainers = [make_labeler() for _ in range(3)]
    for lab in drainers:
        while (lease := services.next_task(lab)) is not None:
            services.submit_ranking(lab, lease.task.id, _submission(lease.task.id))
    per_task = Counter(Ranking.objects.values_list("task_id", flat=True))
    for task in ComparisonTask.objects.all():
        assert per_task[task.id] == task.overlap, (task.id, per_task[task.id], task.overlap)

"""Leases, overlap, idempotent submit, late submit, skip, gold interleaving (single-threaded)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from feedback import selectors, services
from feedback.models import Assignment, ComparisonTask, Ranking
from feedback.services import FeedbackError

from .conftest import make_labeler, make_task, rank_all

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings):
    settings.FEEDBACK_GOLD_RATE = 0.0


def test_highest_priority_first_and_lease_resumes(labeler):
    low = make_task(priority=0)
    high = make_task(priority=5)
    lease = services.next_task(labeler)
    assert lease.task.id == high.id and not lease.resumed
    again = services.next_task(labeler)
    assert again.task.id == high.id and again.resumed  # reload gives the same lease
    services.submit_ranking(labeler, high.id, rank_all(high))
    assert services.next_task(labeler).task.id == low.id


def test_shown_order_is_a_permutation_and_stored(labeler):
    task = make_task(k=6)
    lease = services.next_task(labeler)
    ids = set(task.completions.values_list("id", flat=True))
    assert set(lease.assignment.shown_order) == ids and len(lease.assignment.shown_order) == 6
    payload = selectors.task_payload(lease.assignment)
    assert [c["id"] for c in payload["completions"]] == lease.assignment.shown_order
    ranking = services.submit_ranking(labeler, task.id, rank_all(task)).ranking
    assert ranking.shown_order == lease.assignment.shown_order


def test_overlap_never_exceeded_and_no_repeats():
    task = make_task(overlap=2)
    a, b, c = make_labeler(), make_labeler(), make_labeler()
    assert services.next_task(a).task == task
    assert services.next_task(b).task == task
    assert services.next_task(c) is None  # two active leases fill overlap 2
    services.submit_ranking(a, task.id, rank_all(task))
    assert services.next_task(a) is None  # a has seen it
    services.submit_ranking(b, task.id, rank_all(task))
    task.refresh_from_db()
    assert task.state == ComparisonTask.State.COMPLETE and task.submitted_count == 2
    assert services.next_task(c) is None


def test_expired_lease_returns_task_and_late_submit_rules():
    task = make_task(overlap=1)
    a, b = make_labeler(), make_labeler()
    services.next_task(a)
    Assignment.objects.filter(labeler=a).update(expires_at=timezone.now() - timedelta(seconds=1))
    # slot free again: b gets it
    assert services.next_task(b).task == task
    # a's late submit is refused while b holds the only slot, and the work comes back
    with pytest.raises(FeedbackError) as err:
        services.submit_ranking(a, task.id, {**rank_all(task), "note": "my careful work"})
    assert err.value.status == 409 and "expired" in err.value.message
    assert err.value.payload["your_submission"]["note"] == "my careful work"
    assert not Ranking.objects.filter(labeler=a).exists()


def test_late_submit_accepted_when_slot_free():
    task = make_task(overlap=2)
    a = make_labeler()
    services.next_task(a)
    Assignment.objects.filter(labeler=a).update(expires_at=timezone.now() - timedelta(seconds=1))
    result = services.submit_ranking(a, task.id, rank_all(task))
    assert result.created and result.ranking.late


def test_submit_is_idempotent(labeler):
    task = make_task()
    services.next_task(labeler)
    first = services.submit_ranking(labeler, task.id, rank_all(task))
    second = services.submit_ranking(labeler, task.id, rank_all(task, tie=True))
    assert first.created and not second.created and first.ranking.pk == second.ranking.pk
    assert Ranking.objects.filter(task=task).count() == 1
    task.refresh_from_db()
    assert task.submitted_count == 1


@pytest.mark.parametrize("data, message", [
    ({"order": [[1]]}, "exactly once"),
    ({"order": "x"}, "non-empty list"),
])
def test_bad_submissions_change_nothing(labeler, data, message):
    task = make_task()
    services.next_task(labeler)
    with pytest.raises(FeedbackError, match=message):
        services.submit_ranking(labeler, task.id, data)
    assert not Ranking.objects.exists()


def test_ratings_validated(labeler):
    task = make_task()
    services.next_task(labeler)
    cid = task.completions.first().id
    with pytest.raises(FeedbackError, match="1-7"):
        services.submit_ranking(labeler, task.id, {**rank_all(task), "ratings": {str(cid): {"helpfulness": 8}}})
    with pytest.raises(FeedbackError, match="unsafe_reason"):
        services.submit_ranking(labeler, task.id, {**rank_all(task), "unsafe": True})
    r = services.submit_ranking(labeler, task.id, {**rank_all(task), "ratings": {cid: {"helpfulness": 7, "honesty": 2}},
                                                   "unsafe": True, "unsafe_reason": "rude"}).ranking
    assert r.ratings == {str(cid): {"helpfulness": 7, "honesty": 2}} and r.unsafe


def test_skip_frees_slot_and_marks_seen():
    task = make_task(overlap=1)
    a, b = make_labeler(), make_labeler()
    services.next_task(a)
    with pytest.raises(FeedbackError, match="reason"):
        services.skip_task(a, task.id, "  ")
    services.skip_task(a, task.id, "cannot judge")
    assert services.next_task(a) is None
    assert services.next_task(b).task == task
    with pytest.raises(FeedbackError, match="skipped"):
        services.submit_ranking(a, task.id, rank_all(task))


def test_unassigned_submit_refused(labeler):
    task = make_task()
    with pytest.raises(FeedbackError, match="not assigned"):
        services.submit_ranking(labeler, task.id, rank_all(task))


def test_gold_tasks_interleaved_at_rate(settings):
    settings.FEEDBACK_GOLD_RATE = 0.5
    gold_source = make_task(overlap=1)
    ref = make_labeler()
    services.next_task(ref)
    ranking = services.submit_ranking(ref, gold_source.id, rank_all(gold_source)).ranking
    services.set_gold(ranking.id)
    for _ in range(4):
        make_task()
    lab = make_labeler()
    kinds = []
    for _ in range(4):
        lease = services.next_task(lab)
        kinds.append(lease.task.is_gold)
        services.submit_ranking(lab, lease.task.id, rank_all(lease.task))
    assert kinds.count(True) == 1  # one gold task exists: served once, never twice
    assert kinds == [False, True, False, False]  # every second task is gold while gold tasks remain


def test_progress_counts(labeler):
    t1, _ = make_task(), make_task()
    assert selectors.progress(labeler)["in_queue"] == 2
    services.next_task(labeler)
    services.submit_ranking(labeler, t1.id, rank_all(t1))
    p = selectors.progress(labeler)
    assert p["done_today"] == 1 and p["in_queue"] == 1

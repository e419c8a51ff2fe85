"""Query counts of the labeling hot paths, pinned: each round trip to the database costs more than the
SQL itself under load (docs/performance.md), and the counts must not grow with the number of tasks."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from .conftest import make_labeler, make_task

pytestmark = pytest.mark.django_db

# token + user, the user's groups (role check); inside the transaction a savepoint and its release
# (the test wraps everything in a transaction; in production they are BEGIN/COMMIT, not counted)
NEXT_QUERIES = 12  # + lock the labeler, held lease, pick + lock a task, free slot, completion ids,
#                    insert the lease; payload (one query), progress (one query). Was 18 before issue 15.
SUBMIT_QUERIES = 13  # + retry check, lock the task, retry check under the lock, lease, completion ids,
#                      insert, two updates; progress (one query). Was 17.


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
    with django_assert_num_queries(3):  # token + user, groups, progress
        stats = api.get("/api/label/stats/").json()
    assert stats == {"done_today": 0, "done_total": 0, "skipped": 0, "in_queue": 1, "reliability": 1.0,
                     "gold_accuracy": None}

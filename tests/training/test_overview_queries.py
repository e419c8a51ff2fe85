"""Query counts of the studio overview (HTML ``/studio/`` and ``/api/studio/overview/``), pinned.

Why: the overview is the page admins keep open (and poll); each round trip costs more than its SQL
under load (docs/web-tier.md, "Hot paths"), and the count must not grow with the registry: the same
number of queries with 2 and with 10 versions, jobs and deployments per subject.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from feedback.models import DatasetSnapshot, FeedbackSource, Ranking
from feedback.selectors import new_pairs_count
from tests.feedback.conftest import make_labeler, make_task
from training.models import CanaryWatch, Deployment, Job, PolicyVersion
from tutor.accounts import create_user
from tutor.models import Conversation, Message, Subject
from tutor.services import ensure_subjects

pytestmark = pytest.mark.django_db

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")

# session + user (force_login), the user's groups (role check); then: the snapshots (last one and per-source
# counts), the ranking figures (one aggregate), rankings per day, live versions (promoted/canary rows, newest
# deployments), running jobs, feedback switches, canary watches and, per baking canary (at most one per
# subject), its two signal queries. Was 28 before issue 15's overview step.
API_QUERIES = 13
# + the registry check (one query instead of one per subject) and the recent jobs. Was 33.
PAGE_QUERIES = 15


def studio_data(n: int) -> None:
    """``n`` versions of every subject (v1 retired … v{n-1} promoted, v{n} canary on history), ``n``
    deployments and ``n`` jobs per subject, a baking canary with a few answers, snapshots, switches."""
    ensure_subjects()
    now = timezone.now()
    student = create_user(username="stu", password="pw-12345678x", role="student", validate_password=False)
    for subject in SUBJECTS:
        pvs = []
        for v in range(1, n + 1):
            status = "retired" if v < n - 1 else ("promoted" if v == n - 1 else "canary")
            if subject != "history" and v == n:
                status = "candidate"
            pvs.append(PolicyVersion.objects.create(subject=subject, version=v, status=status,
                                                    path=f"/nowhere/{subject}/v{v}"))
        for i in range(n):
            Deployment.objects.create(subject=subject, action="promote", promoted=pvs[max(0, n - 2)],
                                      candidate=pvs[-1] if subject == "history" and i == n - 1 else None,
                                      candidate_share=0.2 if subject == "history" and i == n - 1 else 0.0,
                                      status="applied")
            Job.objects.create(kind="ppo", subject=subject, status="running" if i == 0 else "succeeded",
                               progress=0.5)
    history = PolicyVersion.objects.filter(subject="history")
    CanaryWatch.objects.create(subject="history", candidate=history.get(version=n), baseline=history.get(version=n - 1),
                               share=0.2, started_at=now - timedelta(minutes=5))
    conv = Conversation.objects.create(student=student, subject=Subject.objects.get(slug="history"))
    for i in range(n):
        q = Message.objects.create(conversation=conv, role="user", content=f"q{i}")
        Message.objects.create(conversation=conv, role="assistant", reply_to=q, content=f"a{i}", is_current=True,
                               adapter_subject="history", adapter_version=n - i % 2, latency_ms=100 + i)
    for i in range(n):
        DatasetSnapshot.objects.create(sha256=f"{i:064d}", path=f"/nowhere/{i}", ranking_pairs=i, imported_pairs=1,
                                       source_counts={"labeler": i, "thumbs": 2})
    FeedbackSource.objects.create(slug="imported", enabled=False)


@pytest.fixture
def admin_client(client, settings, tmp_path):
    settings.TUTOR_MODELS_DIR = tmp_path / "models"  # no adapters on disk: the registry check finds rows
    client.force_login(create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False))
    return client


@pytest.mark.parametrize("n", [2, 10])
def test_overview_api_query_count_does_not_grow(admin_client, django_assert_num_queries, n):
    studio_data(n)
    with django_assert_num_queries(API_QUERIES):
        data = admin_client.get(reverse("api-studio-overview")).json()
    assert data["versions"]["history"] == {
        "promoted": n - 1, "promoted_id": PolicyVersion.objects.get(subject="history", version=n - 1).pk,
        "canary": n, "canary_id": PolicyVersion.objects.get(subject="history", version=n).pk,
        "canary_share": 0.2, "deployment_status": "applied", "split": f"v{n - 1} 80 % / v{n} 20 %"}
    assert data["versions"]["language"]["canary"] is None and data["versions"]["language"]["split"] == f"v{n - 1} 100 %"
    assert data["running_jobs"] == 4
    assert [c["watch"]["candidate_version"] for c in data["canaries"]] == [n]
    assert data["canaries"][0]["comparison"]["canary"]["answers"] == n // 2
    sources = {s["slug"]: s for s in data["sources"]}
    assert sources["imported"]["switch_on"] is False and sources["labeler"]["last_snapshot"] == n - 1


@pytest.mark.parametrize("n", [2, 10])
def test_overview_page_query_count_does_not_grow(admin_client, django_assert_num_queries, n):
    studio_data(n)
    with django_assert_num_queries(PAGE_QUERIES):
        page = admin_client.get(reverse("training:index")).content.decode()
    assert f"v{n - 1} 80 % / v{n} 20 %" in page and f"v{n - 1} 100 %" in page
    assert page.count("data-job-id=") == min(4 * n, 25)  # the 25 most recent


def test_ranking_figures_match_the_feedback_selectors(admin_client):
    """The one-aggregate figures equal the per-figure queries they replaced (gold excluded from pairs)."""
    now = timezone.now()
    a, b = make_labeler(), make_labeler()
    rows = []
    for i, (labeler, gold, pairs, age) in enumerate([(a, False, 6, 0), (b, False, 3, 0), (a, True, 6, 0),
                                                     (b, False, 5, 3), (a, False, 2, 10)]):
        r = Ranking.objects.create(task=make_task(is_gold=gold), labeler=labeler, order=[], shown_order=[],
                                   pair_count=pairs)
        Ranking.objects.filter(pk=r.pk).update(created_at=now - timedelta(days=age, minutes=i))
        rows.append(r)
    DatasetSnapshot.objects.create(sha256="f" * 64, path="/nowhere", last_ranking_id=rows[1].pk, train_rows=7,
                                   test_rows=2)
    data = admin_client.get(reverse("api-studio-overview")).json()
    today = Ranking.objects.filter(created_at__date=now.date()).count()
    assert (data["rankings_today"], data["rankings_total"]) == (today, 5)
    assert (data["pairs_total"], data["pairs_new"]) == (new_pairs_count(None), new_pairs_count(rows[1].pk)) == (16, 7)
    assert data["labelers_active"] == 2
    assert data["last_snapshot"]["rows"] == 9
    assert sum(d["rankings"] for d in data["rankings_per_day"]) == 4

"""The labeler API with token auth (what simulated labelers use), and the OpenAPI schema."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from feedback.models import Ranking

from .conftest import make_labeler, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings):
    settings.FEEDBACK_GOLD_RATE = 0.0


def _client(user) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return c


def test_next_submit_retry_skip_stats():
    t1, t2 = make_task(k=3), make_task(k=3)
    lab = make_labeler()
    api = _client(lab)
    body = api.post("/api/label/next/").json()
    task = body["task"]
    assert task["task_id"] == t1.id and [c["label"] for c in task["completions"]] == ["A", "B", "C"]
    assert task["context"][0]["role"] == "user" and body["progress"]["in_queue"] == 1
    ids = [c["id"] for c in task["completions"]]
    sub = {"order": [[ids[0]], [ids[1], ids[2]]], "ratings": {str(ids[0]): {"helpfulness": 6}}, "note": "ok"}
    r1 = api.post(f"/api/label/tasks/{t1.id}/submit/", sub, format="json")
    assert r1.status_code == 201, r1.json()
    assert r1.json()["ranking"]["pair_count"] == 2 and r1.json()["created"] is True
    r2 = api.post(f"/api/label/tasks/{t1.id}/submit/", sub, format="json")
    assert r2.status_code == 200 and r2.json()["ranking"]["ranking_id"] == r1.json()["ranking"]["ranking_id"]
    assert Ranking.objects.count() == 1
    nxt = api.post("/api/label/next/").json()["task"]
    assert nxt["task_id"] == t2.id
    assert api.post(f"/api/label/tasks/{t2.id}/skip/", {}, format="json").status_code == 400
    sk = api.post(f"/api/label/tasks/{t2.id}/skip/", {"reason": "cannot judge"}, format="json")
    assert sk.status_code == 200 and sk.json()["status"] == "skipped"
    empty = api.post("/api/label/next/").json()
    assert empty["task"] is None and "no tasks" in empty["message"].lower()
    stats = api.get("/api/label/stats/").json()
    assert stats["done_today"] == 1 and stats["skipped"] == 1 and stats["in_queue"] == 0


def test_bad_submit_shows_work_back():
    t = make_task(k=2)
    lab = make_labeler()
    api = _client(lab)
    api.post("/api/label/next/")
    r = api.post(f"/api/label/tasks/{t.id}/submit/", {"order": [[999999]], "note": "keep me"}, format="json")
    assert r.status_code == 400 and r.json()["your_submission"]["note"] == "keep me"
    assert not Ranking.objects.exists()


def test_roles_enforced():
    student = make_labeler(role="student")
    assert _client(student).post("/api/label/next/").status_code == 403
    assert _client(make_labeler()).get("/api/label/snapshots/").status_code == 403
    assert APIClient().post("/api/label/next/").status_code in (401, 403)


def test_admin_snapshot_api(datasets_dir):
    admin = make_labeler(role="admin")
    api = _client(admin)
    r1 = api.post("/api/label/snapshots/", {}, format="json")
    r2 = api.post("/api/label/snapshots/", {}, format="json")
    assert r1.status_code == 201 and r2.status_code == 200 and r1.json()["sha256"] == r2.json()["sha256"]
    assert len(api.get("/api/label/snapshots/").json()) == 1


def test_openapi_schema_lists_labeler_endpoints():
    admin = make_labeler(role="admin")
    c = APIClient()
    c.force_authenticate(admin)
    schema = c.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in ("/api/label/next/", "/api/label/tasks/{task_id}/submit/", "/api/label/tasks/{task_id}/skip/",
                 "/api/label/stats/"):
        assert path in schema["paths"], path
    assert "SubmitIn" in schema["components"]["schemas"] or "SubmitInRequest" in schema["components"]["schemas"]


def test_pages_render_for_roles(client):
    lab, admin = make_labeler(), make_labeler(role="admin")
    make_task()
    client.force_login(lab)
    assert client.get("/label/").status_code == 200
    assert client.get("/label/guidelines/").status_code == 200
    assert client.get("/label/dashboard/").status_code == 403
    client.force_login(admin)
    page = client.get("/label/dashboard/")
    assert page.status_code == 200 and b"Krippendorff" in page.content
    assert client.get("/label/admin/import/").status_code == 200
    assert client.get("/label/admin/snapshots/").status_code == 200

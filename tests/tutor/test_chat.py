"""Chat pages and API without a model: permissions, ratings, consent, limits, endpoint down.

The endpoint-down cases talk to a real closed port (connection refused), not a fake.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from tests.tutor.conftest import PASSWORD, api_for, closed_port_url, conversation_with_answer, make_user
from tutor import selectors, services
from tutor.api_chat import StudentMessageThrottle
from tutor.models import Conversation, Message, Rating, Subject

pytestmark = pytest.mark.django_db


def read_stream(resp) -> str:
    """Drain a streamed response whose body is an async generator (as the ASGI server would)."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in resp.streaming_content])

    return async_to_sync(collect)().decode()


def page_client(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


# --- subjects & conversations -------------------------------------------------------------------


def test_four_subjects_exist_and_seed_is_idempotent():
    Subject.objects.filter(slug="history").update(name="World history")  # an admin edit survives seeding
    services.seed_demo()
    services.seed_demo()
    assert sorted(Subject.objects.values_list("slug", flat=True)) == [
        "general_knowledge", "history", "language", "mathematics"]
    assert Subject.objects.get(slug="history").name == "World history"


def test_student_starts_conversation_from_page_and_inactive_subject_is_refused(student):
    client = page_client(student)
    resp = client.post(reverse("tutor:new"), {"subject": "mathematics"})
    conv = Conversation.objects.get(student=student)
    assert resp.status_code == 302 and resp["Location"] == reverse("tutor:conversation", args=[conv.pk])
    Subject.objects.filter(slug="history").update(active=False)
    resp = api_for(student).post("/api/conversations/", {"subject": "history"}, format="json")
    assert resp.status_code == 400
    assert Conversation.objects.filter(student=student).count() == 1


def test_title_comes_from_first_message_and_rename(student):
    conv, _, _ = conversation_with_answer(student, question="How do   fractions\nwork when adding?")
    conv.refresh_from_db()
    assert conv.title == "How do fractions work when adding?"
    api = api_for(student)
    assert api.patch(f"/api/conversations/{conv.pk}/", {"title": "Fractions"}, format="json").status_code == 200
    assert api.patch(f"/api/conversations/{conv.pk}/", {"title": "   "}, format="json").status_code == 400
    conv.refresh_from_db()
    assert conv.title == "Fractions"


def test_history_search_and_soft_delete(student):
    a, _, _ = conversation_with_answer(student, question="Who was Napoleon?", subject="history")
    b, _, _ = conversation_with_answer(student, question="Solve x+1=3")
    services.start_conversation(student, "language")  # empty: not listed
    client = page_client(student)
    body = client.get(reverse("tutor:history")).content.decode()
    assert "Who was Napoleon?" in body and "Solve x+1=3" in body
    body = client.get(reverse("tutor:history"), {"q": "napoleon"}).content.decode()
    assert "Who was Napoleon?" in body and "Solve x+1=3" not in body
    api = api_for(student)
    assert [c["id"] for c in api.get("/api/conversations/", {"q": "x+1"}).json()["results"]] == [b.pk]
    assert client.post(reverse("tutor:delete", args=[a.pk])).status_code == 302
    a.refresh_from_db()
    assert a.deleted_at is not None and Message.objects.filter(conversation=a).count() == 2  # kept, hidden
    assert client.get(reverse("tutor:conversation", args=[a.pk])).status_code == 404
    assert [c["id"] for c in api.get("/api/conversations/").json()["results"]] == [b.pk]


# --- permissions --------------------------------------------------------------------------------


def test_student_never_reads_another_students_conversation(student, other_student):
    conv, q, a = conversation_with_answer(student, question="my secret question")
    client = page_client(other_student)
    for url in (reverse("tutor:conversation", args=[conv.pk]),
                reverse("tutor:turn", args=[conv.pk, q.pk])):
        resp = client.get(url)
        assert resp.status_code == 404 and b"my secret question" not in resp.content
    for url in (reverse("tutor:send", args=[conv.pk]), reverse("tutor:rename", args=[conv.pk]),
                reverse("tutor:delete", args=[conv.pk]), reverse("tutor:regenerate", args=[conv.pk]),
                reverse("tutor:rate", args=[a.pk])):
        assert client.post(url, {"content": "x", "title": "pwned", "value": "1"}).status_code == 404
    assert b"my secret question" not in client.get(reverse("tutor:history")).content
    api = api_for(other_student)
    assert api.get(f"/api/conversations/{conv.pk}/").status_code == 404
    assert api.patch(f"/api/conversations/{conv.pk}/", {"title": "pwned"}, format="json").status_code == 404
    assert api.delete(f"/api/conversations/{conv.pk}/").status_code == 404
    assert api.post(f"/api/conversations/{conv.pk}/messages/", {"content": "hi"}, format="json").status_code == 404
    assert api.post(f"/api/conversations/{conv.pk}/regenerate/").status_code == 404
    assert api.put(f"/api/messages/{a.pk}/rating/", {"value": 1}, format="json").status_code == 404
    assert api.get("/api/conversations/").json()["results"] == []
    conv.refresh_from_db()
    assert conv.title == "my secret question" and conv.deleted_at is None
    assert Message.objects.filter(conversation=conv).count() == 2 and not Rating.objects.exists()


def test_labeler_and_anonymous_boundaries(student):
    conv, _, a = conversation_with_answer(student)
    labeler = make_user("lena", role="labeler")
    client = page_client(labeler)
    assert client.get(reverse("tutor:index")).status_code == 403
    assert client.get(reverse("tutor:conversation", args=[conv.pk])).status_code == 403
    api = api_for(labeler)
    assert api.get("/api/conversations/").status_code == 403
    assert api.get(f"/api/conversations/{conv.pk}/").status_code == 403
    assert api.put(f"/api/messages/{a.pk}/rating/", {"value": 1}, format="json").status_code == 403
    anon = Client()
    resp = anon.get(reverse("tutor:conversation", args=[conv.pk]))
    assert resp.status_code == 302 and "/accounts/login/" in resp["Location"]
    assert anon.get("/api/conversations/").status_code in (401, 403)
    assert anon.post(f"/api/conversations/{conv.pk}/messages/", {"content": "x"}).status_code in (401, 403)


def test_chat_api_is_in_the_openapi_schema(student):
    admin = make_user("ada", role="admin")
    schema = api_for(admin).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path in ("/api/conversations/", "/api/conversations/{id}/", "/api/conversations/{id}/messages/",
                 "/api/conversations/{id}/regenerate/", "/api/messages/{id}/rating/", "/api/ratings/",
                 "/api/subjects/", "/api/profile/"):
        assert path in schema["paths"], path


# --- ratings -----------------------------------------------------------------------------------


def test_rating_is_changeable_and_keeps_policy_version(student):
    _, q, a = conversation_with_answer(student, version=7)
    api = api_for(student)
    url = f"/api/messages/{a.pk}/rating/"
    assert api.put(url, {"value": 1}, format="json").status_code == 200
    resp = api.put(url, {"value": -1, "reasons": ["wrong", "unclear"], "comment": "2+2 is not 5"}, format="json")
    assert resp.status_code == 200
    assert resp.json()["policy_version"] == {"subject": "mathematics", "version": 7}
    rating = Rating.objects.get()
    assert (rating.value, rating.reasons, rating.comment) == (-1, ["wrong", "unclear"], "2+2 is not 5")
    assert (rating.adapter_subject, rating.adapter_version) == ("mathematics", 7)
    bad = api.put(url, {"value": 1, "reasons": ["boring"]}, format="json")
    assert bad.status_code == 400
    assert api.put(f"/api/messages/{q.pk}/rating/", {"value": 1}, format="json").status_code == 400
    assert api.put(url, {"value": 0}, format="json").status_code == 400
    rating.refresh_from_db()
    assert rating.value == -1 and Rating.objects.count() == 1  # bad input changed nothing
    # the page form (no JavaScript) changes the same rating
    resp = page_client(student).post(reverse("tutor:rate", args=[a.pk]), {"value": "1", "reasons": ["other"]})
    assert resp.status_code == 302
    rating.refresh_from_db()
    assert (rating.value, rating.reasons) == (1, ["other"])
    assert api.delete(url).status_code == 204 and not Rating.objects.exists()


# --- consent & the labeling prompt feed ---------------------------------------------------------------


def test_consent_profile_override_soft_delete_and_selector(student, other_student):
    c1, q1, _ = conversation_with_answer(student, question="Alice asks: is 7 prime?")
    q1b = services.post_user_message(c1, "and 9?")
    c2, q2, _ = conversation_with_answer(other_student, question="bob's question")
    assert selectors.consented_prompts() == []  # opt-in: nobody consented yet

    api = api_for(student)
    assert api.put("/api/profile/", {"consent_to_labeling": True}, format="json").json() == {
        "consent_to_labeling": True}
    rows = selectors.consented_prompts()
    assert [r["message_id"] for r in rows] == [q1.pk, q1b.pk]
    assert rows[1]["subject"] == "mathematics" and rows[1]["text"] == "and 9?"
    assert rows[1]["context"] == [{"role": "user", "content": "Alice asks: is 7 prime?"},
                                  {"role": "assistant", "content": "It is **4**."}]
    assert {"alice", "Alice", "Liddell", "alice@example.org"} <= set(rows[0]["student_names"])
    assert [r["message_id"] for r in selectors.consented_prompts(since_id=q1.pk)] == [q1b.pk]

    # per-conversation overrides: "no" removes a consenting student's prompts, "yes" adds others'
    api.patch(f"/api/conversations/{c1.pk}/", {"consent_override": False}, format="json")
    api_for(other_student).patch(f"/api/conversations/{c2.pk}/", {"consent_override": True}, format="json")
    assert [r["message_id"] for r in selectors.consented_prompts()] == [q2.pk]

    # soft-deleted: out, unless that conversation explicitly consents
    api.patch(f"/api/conversations/{c1.pk}/", {"consent_override": None}, format="json")
    services.delete_conversation(c1)
    assert [r["message_id"] for r in selectors.consented_prompts()] == [q2.pk]
    services.delete_conversation(c2)
    assert [r["message_id"] for r in selectors.consented_prompts()] == [q2.pk]


def test_settings_page_toggles_consent(student):
    client = page_client(student)
    client.post(reverse("tutor:settings"), {"consent_to_labeling": "on"})
    assert selectors.consent_for(student) is True
    client.post(reverse("tutor:settings"), {})
    assert selectors.consent_for(student) is False


# --- limits and failures ------------------------------------------------------------------------


def test_message_length_limit_gives_400_and_saves_nothing(student, settings):
    settings.TUTOR_MAX_MESSAGE_CHARS = 50
    conv = services.start_conversation(student, "language")
    resp = api_for(student).post(f"/api/conversations/{conv.pk}/messages/", {"content": "x" * 51}, format="json")
    assert resp.status_code == 400
    assert "limit is 50" in resp.json()["content"][0]
    assert api_for(student).post(f"/api/conversations/{conv.pk}/messages/", {"content": "  "},
                                 format="json").status_code == 400
    page_client(student).post(reverse("tutor:send", args=[conv.pk]), {"content": "y" * 51})
    assert not Message.objects.exists()


def test_endpoint_down_keeps_the_message_json_and_page(student, settings):
    settings.TUTOR_ENDPOINT_URL = closed_port_url()
    conv = services.start_conversation(student, "history")
    resp = api_for(student).post(f"/api/conversations/{conv.pk}/messages/", {"content": "When was Rome founded?"},
                                 format="json")
    assert resp.status_code == 503
    body = resp.json()
    assert body["retryable"] is True and "unavailable" in body["detail"]
    assert body["user_message"]["content"] == "When was Rome founded?"
    assert list(Message.objects.values_list("role", "content")) == [("user", "When was Rome founded?")]
    # the page shows the kept question and a Retry button; Retry fails the same way, keeping it
    client = page_client(student)
    page = client.get(reverse("tutor:conversation", args=[conv.pk])).content.decode()
    assert "When was Rome founded?" in page and "Retry" in page
    resp = client.post(reverse("tutor:regenerate", args=[conv.pk]), follow=True)
    assert "unavailable" in resp.content.decode()
    resp = client.post(reverse("tutor:send", args=[conv.pk]), {"content": "Hello?"}, follow=True)
    assert list(Message.objects.values_list("role", flat=True)) == ["user", "user"]


def test_endpoint_down_stream_reports_retryable_error(student, settings):
    settings.TUTOR_ENDPOINT_URL = closed_port_url()
    conv = services.start_conversation(student, "mathematics")
    resp = api_for(student).post(f"/api/conversations/{conv.pk}/messages/?stream=1", {"content": "1+1?"},
                                 format="json")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("application/jsonlines")
    events = [json.loads(line) for line in read_stream(resp).splitlines() if line]
    assert [e["event"] for e in events] == ["start", "error"]
    assert events[0]["user_message"]["content"] == "1+1?"
    assert events[1]["retryable"] is True and events[1]["message"] is None
    assert list(Message.objects.values_list("role", flat=True)) == ["user"]


def test_rate_limit_api_and_page_share_the_budget(student, settings, monkeypatch):
    settings.TUTOR_ENDPOINT_URL = closed_port_url()
    monkeypatch.setattr(StudentMessageThrottle, "THROTTLE_RATES", {"student_messages": "2/min"})
    conv = services.start_conversation(student, "mathematics")
    api = api_for(student)
    url = f"/api/conversations/{conv.pk}/messages/"
    assert api.post(url, {"content": "one"}, format="json").status_code == 503
    assert api.post(url, {"content": "two"}, format="json").status_code == 503
    resp = api.post(url, {"content": "three"}, format="json")
    assert resp.status_code == 429 and "throttled" in resp.json()["detail"]
    resp = page_client(student).post(reverse("tutor:send", args=[conv.pk]), {"content": "four"}, follow=True)
    assert "too fast" in resp.content.decode()
    assert list(Message.objects.values_list("content", flat=True)) == ["one", "two"]
    # another student has their own budget
    other = make_user("carol")
    conv2 = services.start_conversation(other, "mathematics")
    assert api_for(other).post(f"/api/conversations/{conv2.pk}/messages/", {"content": "hi"},
                               format="json").status_code == 503


# --- rendering & context ------------------------------------------------------------------------


def test_page_escapes_html_and_shows_policy_version_and_regenerations(student):
    conv, q, a1 = conversation_with_answer(student, question="<script>alert(1)</script>", version=2)
    a2 = services.save_answer(q, services.Answer(text="second <b>try</b>", adapter={"subject": "mathematics",
                                                                                     "version": 3}))
    a1.refresh_from_db()
    assert a2.is_current and not a1.is_current
    page = page_client(student).get(reverse("tutor:conversation", args=[conv.pk])).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "second &lt;b&gt;try&lt;/b&gt;" in page
    assert "mathematics v3" in page and "mathematics v2" in page
    assert "answer 2 of 2 · current" in page and "1 earlier answer" in page


def test_context_uses_current_answers_and_routing_key(student, settings):
    conv, q1, a1 = conversation_with_answer(student, question="first", answer="old")
    services.save_answer(q1, services.Answer(text="new", adapter={"subject": "mathematics", "version": 1}))
    q2 = services.post_user_message(conv, "second")
    payload = services.endpoint_payload(q2)
    assert payload["messages"] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "new"},
                                   {"role": "user", "content": "second"}]
    assert payload["subject"] == "mathematics" and payload["routing_key"] == f"conversation-{conv.pk}"
    settings.TUTOR_CONTEXT_CHARS = 8  # only the newest student turn fits
    assert services.endpoint_payload(q2)["messages"] == [{"role": "user", "content": "second"}]

"""The chat against the real endpoint process (tiny model, v1 adapter per subject), and the
streamed path through a real uvicorn web process — the way the browser uses it."""

from __future__ import annotations

import json

import httpx
import pytest
from rest_framework.authtoken.models import Token

from tests.fixtures.processes import start_web_server, subprocess_env
from tests.tutor.conftest import api_for, make_user
from tutor import services
from tutor.models import Message


def loaded_version(endpoint_server, subject: str) -> int | None:
    """The adapter version the endpoint serves for ``subject`` (what the answer must record)."""
    with endpoint_server.client() as client:
        listing = client.list_adapters()
    promoted = listing.get("routing", {}).get(subject, {}).get("promoted")
    versions = [r["version"] for r in listing.get("adapters", []) if r.get("subject") == subject]
    return promoted if promoted is not None else (max(versions) if versions else None)


@pytest.mark.django_db
def test_json_answer_records_policy_version(endpoint_server, settings):
    settings.TUTOR_ENDPOINT_URL = endpoint_server.url
    settings.TUTOR_MAX_NEW_TOKENS = 12
    student = make_user("dora")
    conv = services.start_conversation(student, "mathematics")
    resp = api_for(student).post(f"/api/conversations/{conv.pk}/messages/", {"content": "What is 3 + 4?"},
                                 format="json")
    assert resp.status_code == 201, resp.content
    answer = resp.json()["assistant_message"]
    expected = loaded_version(endpoint_server, "mathematics")
    assert expected is not None
    assert answer["adapter"] == {"subject": "mathematics", "version": expected}
    assert answer["policy_version"] == f"mathematics v{expected}"
    row = Message.objects.get(pk=answer["id"])
    assert (row.role, row.reply_to_id, row.status, row.is_current) == ("assistant", resp.json()["user_message"]["id"],
                                                                       "complete", True)
    assert (row.adapter_subject, row.adapter_version) == ("mathematics", expected)
    assert row.tokens and row.tokens <= 12


def _events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if line:
            events.append(json.loads(line))
    return events


@pytest.mark.slow
def test_stream_through_the_web_process(transactional_db, endpoint_server):
    """Token-by-token events through uvicorn → Django → endpoint; regenerate keeps both answers."""
    student = make_user("erin")
    token = Token.objects.create(user=student).key
    conv = services.start_conversation(student, "history")
    web = start_web_server(subprocess_env(TUTOR_ENDPOINT_URL=endpoint_server.url, TUTOR_MAX_NEW_TOKENS="24"))
    try:
        headers = {"Authorization": f"Token {token}", "Accept": "application/jsonlines"}
        with httpx.Client(base_url=web.info["url"], headers=headers, timeout=60) as http:
            with http.stream("POST", f"/api/conversations/{conv.pk}/messages/",
                             json={"content": "Who crossed the Alps with elephants?"}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("application/jsonlines")
                events = _events(resp)
            kinds = [e["event"] for e in events]
            assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 2, kinds
            first = events[-1]["message"]
            assert first["content"] == "".join(e["text"] for e in events if e["event"] == "token")
            assert first["adapter"] == {"subject": "history", "version": loaded_version(endpoint_server, "history")}

            with http.stream("POST", f"/api/conversations/{conv.pk}/regenerate/",
                             headers={"Accept": "text/event-stream"}) as resp:
                raw = resp.read().decode()
            assert raw.startswith("data: ")
            events = [json.loads(chunk[6:]) for chunk in raw.split("\n\n") if chunk.strip()]
            second = events[-1]["message"]
            assert events[-1]["event"] == "done" and second["reply_to"] == first["reply_to"]
    finally:
        web.stop()
    answers = list(Message.objects.filter(role="assistant").order_by("id"))
    assert [a.id for a in answers] == [first["id"], second["id"]]
    assert [a.is_current for a in answers] == [False, True]
    assert all(a.adapter_version == first["adapter"]["version"] for a in answers)

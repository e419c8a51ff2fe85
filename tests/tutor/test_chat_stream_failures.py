"""A stream that breaks, and one the student stops: what arrived is kept, marked incomplete.

The real endpoint cannot be made to fail after exactly N tokens, so these tests talk to a
misbehaving HTTP peer (a raw socket that speaks just enough HTTP/1.1 to send two token lines,
then drops the connection or stalls). Everything on our side is the real code path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from tests.tutor.conftest import make_user
from tests.tutor.peers import BrokenPeer
from tutor import services
from tutor.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def question(settings) -> Iterator[Message]:
    student = make_user("fay")
    conv = services.start_conversation(student, "history")
    yield services.post_user_message(conv, "Who crossed the Alps?")


def test_stream_that_breaks_keeps_partial_answer(question, settings):
    peer = BrokenPeer("drop")
    settings.TUTOR_ENDPOINT_URL = peer.url

    async def run() -> list[dict]:
        return [ev async for ev in services.stream_answer(question)]

    events = async_to_sync(run)()
    assert [e["event"] for e in events] == ["token", "token", "error"]
    assert events[-1]["retryable"] is True and "broke off" in events[-1]["error"]
    assert events[-1]["message"]["content"] == "Hannibal" and events[-1]["message"]["status"] == "incomplete"
    answer = Message.objects.get(role="assistant")
    assert (answer.content, answer.status, answer.reply_to_id) == ("Hannibal", "incomplete", question.id)
    sent = peer.body()  # what the endpoint was asked: subject + sticky routing key
    assert sent["subject"] == "history" and sent["routing_key"] == f"conversation-{question.conversation_id}"


def test_stop_keeps_what_arrived(question, settings):
    peer = BrokenPeer("stall")
    settings.TUTOR_ENDPOINT_URL = peer.url

    async def run() -> list[dict]:
        gen = services.stream_answer(question)
        seen = []
        async for ev in gen:
            seen.append(ev)
            if len(seen) == 2:
                break
        await gen.aclose()  # what the ASGI server does when the browser aborts (Stop)
        return seen

    assert [e["text"] for e in async_to_sync(run)()] == ["Hanni", "bal"]
    answer = Message.objects.get(role="assistant")
    assert (answer.content, answer.status, answer.error) == ("Hannibal", "incomplete", "stopped by the student")
    peer.thread.join(timeout=10)
    assert not peer.thread.is_alive()  # the endpoint connection was closed, freeing its batch slot

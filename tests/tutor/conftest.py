"""Helpers for the chat tests: students with conversations, API clients, a closed port."""

from __future__ import annotations

import json
import socket

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from rest_framework.test import APIClient

from tutor import services
from tutor.accounts import create_user
from tutor.api_chat import StudentMessageThrottle

PASSWORD = "chat-test-pass-1"


def make_user(username: str, role: str = "student", **extra):
    """A user in one role; also makes sure the subjects exist (transactional tests flush them)."""
    services.ensure_subjects()
    user = create_user(username=username, password=PASSWORD, role=role, validate_password=False,
                       email=extra.pop("email", ""))
    for k, v in extra.items():
        setattr(user, k, v)
    if extra:
        user.save()
    return user


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def conversation_with_answer(user, subject: str = "mathematics", question: str = "What is 2+2?",
                             answer: str = "It is **4**.", version: int | None = 3):
    """A conversation with one answered question, written through the services (no endpoint)."""
    conv = services.start_conversation(user, subject)
    q = services.post_user_message(conv, question)
    a = services.save_answer(q, services.Answer(text=answer, adapter={"subject": subject, "version": version}))
    return conv, q, a


def closed_port_url() -> str:
    """A URL nothing listens on (bound then released): connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _fresh_throttle_cache():
    """The throttle counts live in the cache; each test starts with none."""
    cache.clear()
    StudentMessageThrottle.cache.clear()
    yield
    cache.clear()
    StudentMessageThrottle.cache.clear()


@pytest.fixture
def student(db):
    return make_user("alice", email="alice@example.org", first_name="Alice", last_name="Liddell")


@pytest.fixture
def other_student(db):
    return make_user("bob")


def first_event(resp) -> dict:
    """The first streamed line, then close the stream (as a client that stops reading would): the body
    yields ``start`` before it calls the endpoint, so no endpoint is needed (the context for it is read
    before the response is returned)."""

    async def read() -> bytes:
        it = resp.streaming_content.__aiter__()
        try:
            return await it.__anext__()
        finally:
            await it.aclose()

    return json.loads(async_to_sync(read)())

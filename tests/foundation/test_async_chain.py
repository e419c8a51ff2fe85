"""The web tier under ASGI (issue 15): the middleware chain runs on the event loop, and the chat's
message/regenerate views are async views around DRF. The sync test client never runs these paths, so
these tests drive Django's async handler (``AsyncClient``: the same async middleware chain as uvicorn)
and check that behaviour is what the sync path gives: request ids, 4xx with messages, the throttle, the
sign-in limit, sessions, static files."""

from __future__ import annotations

import json
import secrets
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from tests.tutor.conftest import PASSWORD, first_event, make_user
from tutor import services
from tutor.models import Message

pytestmark = pytest.mark.django_db


def _address() -> str:
    """A fresh client address per test: the sign-in counters live in the (persistent) cache."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def _token(user) -> dict[str, str]:
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def _post(headers: dict[str, str] | None, path: str, data=None, **kwargs):
    """POST through Django's async handler (headers per request: the async client does not apply its
    default headers to the ASGI scope here)."""
    if data is not None and "content_type" not in kwargs:
        kwargs["content_type"] = "application/json"
    return async_to_sync(AsyncClient().post)(path, data, headers=headers or {}, **kwargs)


def test_no_middleware_hook_is_adapted_to_a_thread(monkeypatch):
    """One sync-only middleware (or a sync ``process_view``) makes Django hop to a thread and back for
    every request; only django-prometheus's ``process_template_response`` (template responses only) is."""
    adapted: list[str] = []
    original = BaseHandler.adapt_method_mode

    def spy(self, is_async, method, method_is_async=None, debug=False, name=None):
        from asgiref.sync import iscoroutinefunction

        if is_async != (iscoroutinefunction(method) if method_is_async is None else method_is_async):
            adapted.append(name or getattr(method, "__qualname__", repr(method)))
        return original(self, is_async, method, method_is_async, debug, name)

    monkeypatch.setattr(BaseHandler, "adapt_method_mode", spy)
    ASGIHandler()
    assert adapted == ["PrometheusAfterMiddleware.process_template_response"]
    # MiddlewareMixin hops to a thread inside __acall__ for process_request/process_response: every class in
    # the chain runs them on the loop (config.middleware._OnLoop), Django's three patched in place
    from django.conf import settings
    from django.utils.module_loading import import_string

    from config.middleware import _OnLoop

    for path in settings.MIDDLEWARE:
        cls = import_string(path)
        if hasattr(cls, "process_request") or hasattr(cls, "process_response"):
            assert cls.__acall__ is _OnLoop.__acall__, path


def test_chat_stream_start_through_the_async_chain():
    student = make_user(f"as-{uuid.uuid4().hex[:8]}")
    conv = services.start_conversation(student, "mathematics")
    auth = _token(student)
    resp = _post({**auth, "X-Request-ID": "rid-async-1"}, f"/api/conversations/{conv.pk}/messages/?stream=1",
                 {"content": "What is 5+5?"})
    assert resp.status_code == 200 and resp["X-Request-ID"] == "rid-async-1"
    assert resp["Content-Type"].startswith("application/jsonlines")
    start = first_event(resp)
    asked = Message.objects.get(pk=start["user_message"]["id"])
    assert (start["event"], asked.content, asked.conversation_id) == ("start", "What is 5+5?", conv.pk)

    resp = _post({**auth, "Accept": "text/event-stream"}, f"/api/conversations/{conv.pk}/regenerate/")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/event-stream")


def test_chat_errors_through_the_async_chain():
    """400/403/404 with their messages, as the sync DRF view gives them."""
    student = make_user(f"as-{uuid.uuid4().hex[:8]}")
    other = make_user(f"as-{uuid.uuid4().hex[:8]}")
    labeler = make_user(f"as-{uuid.uuid4().hex[:8]}", role="labeler")
    conv = services.start_conversation(student, "history")
    theirs = services.start_conversation(other, "history")
    url = f"/api/conversations/{conv.pk}/messages/?stream=1"
    auth = _token(student)

    empty = _post(auth, url, {"content": "   "})
    assert empty.status_code == 400 and "empty" in json.dumps(empty.json())
    assert _post(auth, f"/api/conversations/{theirs.pk}/messages/?stream=1", {"content": "hi"}).status_code == 404
    regen = _post(auth, f"/api/conversations/{conv.pk}/regenerate/?stream=1")
    assert regen.status_code == 400 and "send a message first" in regen.json()["detail"]
    denied = _post(_token(labeler), url, {"content": "hi"})
    assert denied.status_code == 403 and "student role" in denied.json()["detail"]
    anonymous = _post(None, url, {"content": "hi"})  # 403, not 401: DRF asks the first class (session auth)
    assert anonymous.status_code == 403 and "credentials were not provided" in anonymous.json()["detail"]
    assert not Message.objects.filter(conversation__in=[conv, theirs]).exists()


def test_the_message_throttle_through_the_async_chain():
    from tutor.api_chat import StudentMessageThrottle

    monkey_rate = StudentMessageThrottle.THROTTLE_RATES
    StudentMessageThrottle.THROTTLE_RATES = {"student_messages": "2/min"}
    StudentMessageThrottle.cache.clear()  # counts of earlier tests' students (ids are reused)
    try:
        student = make_user(f"as-{uuid.uuid4().hex[:8]}")
        conv = services.start_conversation(student, "language")
        auth = _token(student)
        codes = []
        for i in range(3):
            resp = _post(auth, f"/api/conversations/{conv.pk}/messages/?stream=1", {"content": f"q{i}"})
            codes.append(resp.status_code)
            if resp.status_code == 200:
                first_event(resp)
        assert codes == [200, 200, 429]
        assert "throttled" in resp.json()["detail"].lower()
    finally:
        StudentMessageThrottle.THROTTLE_RATES = monkey_rate
        StudentMessageThrottle.cache.clear()


def test_sign_in_limit_session_and_messages_through_the_async_chain(settings):
    """The sign-in limit (cache on a thread), a session saved on login (the session middleware's save goes
    to a thread), and the page that reads it."""
    settings.TUTOR_AUTH_MAX_PER_USERNAME = 2
    settings.TUTOR_AUTH_MAX_PER_ADDRESS = 5
    settings.TUTOR_AUTH_WINDOW_SECONDS = 600
    settings.TUTOR_TRUST_X_FORWARDED_FOR = True  # a fresh client address per test (the counters persist)
    student = make_user(f"as-{uuid.uuid4().hex[:8]}")
    client = AsyncClient()
    addr = {"X-Forwarded-For": _address()}

    def login(password: str):
        return async_to_sync(client.post)("/accounts/login/", {"username": student.username, "password": password},
                                          headers=addr)

    for _ in range(2):
        assert login("wrong").status_code == 200
    locked = login(PASSWORD)
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0

    fresh = AsyncClient()
    ok = async_to_sync(fresh.post)("/accounts/login/", {"username": student.username, "password": PASSWORD},
                                   headers={"X-Forwarded-For": _address()})
    assert ok.status_code == 302 and "sessionid" in ok.cookies
    page = async_to_sync(fresh.get)("/chat/")
    assert page.status_code == 200 and page["X-Frame-Options"] == "DENY"
    assert "csrftoken" in page.cookies or "csrftoken" in fresh.cookies


def test_static_files_through_the_async_chain():
    from django.contrib.staticfiles import finders

    assert finders.find("js/chat.js")
    resp = async_to_sync(AsyncClient().get)("/static/js/chat.js")
    assert resp.status_code == 200
    body = b"".join(resp.streaming_content) if resp.streaming else resp.content
    assert b"function" in body or b"=>" in body


def test_the_request_thread_pool_reuses_idle_threads_and_never_a_busy_one():
    import threading

    from config.asgi_handler import ExecutorPool

    pool = ExecutorPool(max_idle=1)
    first = pool.take()
    assert first.submit(threading.current_thread).result() is not threading.current_thread()
    pool.give_back(first)
    assert pool.take() is first  # idle: handed to the next request, thread and all

    release = threading.Event()
    busy = first.submit(release.wait, 10)
    pool.give_back(first)  # a sync call outlived its request: not pooled
    fresh = pool.take()
    assert fresh is not first and pool.created == 2
    release.set()
    assert busy.result() is True
    pool.give_back(fresh)
    pool.give_back(pool.take())
    extra = pool.take()
    pool.give_back(extra)
    pool.give_back(pool.take())  # at most max_idle kept
    assert len(pool._idle) == 1


def test_each_request_has_one_thread_for_its_sync_work_taken_from_the_pool():
    """Django's thread sensitivity (one thread per request for its sync parts), with the thread reused by
    the next request instead of started and joined per request."""
    import threading

    from django.core.signals import request_finished, request_started

    from config.asgi_handler import PooledThreadASGIHandler

    seen: list[tuple[str, threading.Thread]] = []

    def started(**kwargs):
        seen.append(("started", threading.current_thread()))

    def finished(**kwargs):
        seen.append(("finished", threading.current_thread()))

    request_started.connect(started)
    request_finished.connect(finished)
    handler = PooledThreadASGIHandler()

    async def get(path: str) -> int:
        import asyncio

        sent: list[dict] = []
        body = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if body:
                return body.pop()
            await asyncio.Event().wait()  # the client stays connected; Django cancels this when done

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "headers": [(b"host", b"testserver")],
                 "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "scheme": "http"}
        await handler(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    try:
        assert async_to_sync(get)("/accounts/login/") == 200
        assert async_to_sync(get)("/accounts/login/") == 200
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert [event for event, _ in seen] == ["started", "finished", "started", "finished"]
    threads = {thread for _, thread in seen}
    assert len(threads) == 1 and threading.current_thread() not in threads  # one pooled thread, reused

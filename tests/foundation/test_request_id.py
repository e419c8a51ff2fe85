"""X-Request-ID across web -> Celery -> endpoint: the web echoes it, the endpoint client sends it,
a Celery task carries it as a header into the worker, and the endpoint echoes and logs it."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from config import request_id


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Recorder.seen.append(self.headers.get("X-Request-ID"))
        body = json.dumps({"adapters": [], "routing": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_endpoint_clients_send_the_current_request_id(recorder, settings):
    from tutor.endpoint import get_async_client, get_client

    settings.TUTOR_ENDPOINT_URL = recorder
    settings.TUTOR_ENDPOINT_ADMIN_TOKEN = "t" * 32
    client = get_client()
    outer = request_id.set(None)  # whatever an earlier test left in this thread's context
    token = request_id.set("req-abc")
    try:
        client.list_adapters()
    finally:
        request_id.reset(token)
    client.list_adapters()  # outside a request: no header

    async def run() -> None:
        aclient = get_async_client()
        request_id.set("req-async")
        await aclient.list_adapters()
        await aclient.aclose()

    import asyncio

    asyncio.run(run())
    request_id.reset(outer)
    assert _Recorder.seen == ["req-abc", None, "req-async"]


def test_endpoint_echoes_and_logs_the_request_id(caplog):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.app import RequestIDMiddleware

    async def boom(request):
        return JSONResponse({"error": "no"}, status_code=422)

    app = Starlette(routes=[Route("/invocations", boom, methods=["POST"])])
    app.add_middleware(RequestIDMiddleware)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
            return await c.post("/invocations", headers={"X-Request-ID": "req-42"})

    import asyncio

    with caplog.at_level(logging.INFO, logger="serving.app"):
        resp = asyncio.run(call())
    assert resp.headers["x-request-id"] == "req-42"
    assert any("req-42" in r.getMessage() and "422" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(180)
def test_celery_task_carries_the_request_id(celery_worker):
    from config.celery import request_id_probe

    token = request_id.set("req-celery-7")
    try:
        result = request_id_probe.delay()
    finally:
        request_id.reset(token)
    assert result.get(timeout=60) == "req-celery-7"
    # a task sent outside any request gets an id of its own in the worker
    fresh = request_id_probe.delay().get(timeout=60)
    assert fresh and fresh != "req-celery-7"

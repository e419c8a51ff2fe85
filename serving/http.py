"""The HTTP helpers both endpoint processes use: the single-process endpoint (serving.app) and the HTTP
front of `--model-process` (serving.front). Why a module of its own: the front must not import torch
(it holds no model; importing serving.app would cost it ~200 MB of resident memory).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("serving.app")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _stream_kind(accept: str) -> str | None:
    accept = accept.lower()
    if "text/event-stream" in accept:
        return "sse"
    if any(t in accept for t in ("application/jsonlines", "application/jsonl", "application/x-ndjson")):
        return "jsonlines"
    return None


async def _watch_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _frame(kind: str, obj: dict) -> str:
    line = json.dumps(obj, ensure_ascii=False)
    return f"data: {line}\n\n" if kind == "sse" else line + "\n"


class RequestIDMiddleware:
    """Echo the caller's ``X-Request-ID`` (the web tier and Celery send theirs) and log it: every admin
    call and every failed request at INFO, the rest at DEBUG (a log line per token stream costs TTFT)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        rid = rid if rid and len(rid) <= 64 and rid.replace("-", "").replace(".", "").replace(":", "").replace(
            "_", "").isalnum() else ""
        status = {}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if rid:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            code = status.get("code", 500)
            admin = scope.get("path", "").startswith("/admin/")
            level = logging.INFO if admin or code >= 400 else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "%s %s %s [request %s]", scope.get("method"), scope.get("path"), code, rid or "-")

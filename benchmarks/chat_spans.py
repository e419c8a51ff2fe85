"""Where a chat question's time to first token goes inside the web process: per-request spans.

An ASGI wrapper around ``config.asgi:application`` that times, for each ``.../messages/`` request, the
steps from its arrival in Django to the first token sent back (the middleware reached, DRF's dispatch,
auth, role check, throttle, the conversation lookup, the insert, the endpoint context, the response start,
the endpoint call and its first token) and appends them, in ms since the request reached Django, as one
JSON line per request. Profiling only: it wraps project functions in place. Used for docs/web-tier.md
("Chat time to first token"):

    CHAT_SPANS_FILE=/tmp/spans.jsonl .venv/bin/python benchmarks/chat.py --asgi-app benchmarks.chat_spans:application
    .venv/bin/python benchmarks/chat_spans.py /tmp/spans.jsonl --skip 42 --take 64   # one level's requests
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import inspect
import json
import os
import statistics
import time
from pathlib import Path

SPANS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("chat_spans", default=None)


def mark(name: str) -> None:
    """Record the first time ``name`` is reached in the current request."""
    spans = SPANS.get()
    if spans is not None and name not in spans:
        spans[name] = time.perf_counter()


def _wrap(obj, attr: str, before: str, after: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        mark(before)
        try:
            return fn(*args, **kwargs)
        finally:
            mark(after)

    static = isinstance(inspect.getattr_static(obj, attr), staticmethod)
    setattr(obj, attr, staticmethod(wrapper) if static else wrapper)


def _instrument() -> None:
    from rest_framework.views import APIView

    from config import middleware
    from tutor import endpoint, selectors, services

    # _start: the middleware since issue 15 (__call__ before it: the spans of the old code were taken so)
    first = "_start" if hasattr(middleware.RequestIDMiddleware, "_start") else "__call__"
    _wrap(middleware.RequestIDMiddleware, first, "middleware", "middleware_done")
    _wrap(APIView, "dispatch", "view_dispatch", "view_return")
    _wrap(APIView, "perform_authentication", "auth0", "auth1")
    _wrap(APIView, "check_permissions", "perm0", "perm1")
    _wrap(APIView, "check_throttles", "thr0", "thr1")
    _wrap(selectors, "get_conversation_for", "conv0", "conv1")
    _wrap(services, "post_user_message", "insert0", "insert1")
    _wrap(services, "endpoint_payload", "payload0", "payload1")
    shared = endpoint.shared_async_client

    def shared_async_client():
        client = shared()
        if not getattr(client, "_chat_spans", False):
            stream = client.stream

            async def timed_stream(**kwargs):
                mark("endpoint_call")
                async for event in stream(**kwargs):
                    if "token" in event:
                        mark("endpoint_first_token")
                    yield event

            client.stream = timed_stream
            client._chat_spans = True
        return client

    endpoint.shared_async_client = shared_async_client


def _application():
    from config.asgi import application as django_app

    _instrument()
    out = open(os.environ.get("CHAT_SPANS_FILE", "chat_spans.jsonl"), "a", buffering=1)  # noqa: SIM115 - process-long

    async def application(scope, receive, send):
        if scope["type"] != "http" or "/messages/" not in scope.get("path", ""):
            return await django_app(scope, receive, send)
        spans = {"t0": time.perf_counter()}
        SPANS.set(spans)
        bodies = [0]

        async def timed_send(message):
            if message["type"] == "http.response.start":
                mark("response_start_sent")
            elif message["type"] == "http.response.body" and message.get("body"):
                bodies[0] += 1
                if bodies[0] == 1:
                    mark("start_event_sent")
                elif b'"token"' in message["body"]:
                    mark("first_token_sent")
            await send(message)

        try:
            await django_app(scope, receive, timed_send)
        finally:
            spans["end"] = time.perf_counter()
            t0 = spans.pop("t0")
            out.write(json.dumps({k: round((v - t0) * 1000, 2) for k, v in spans.items()}) + "\n")

    return application


def __getattr__(name: str):
    if name == "application":  # built on first use: uvicorn imports this module, then reads the attribute
        app = globals()["application"] = _application()
        return app
    raise AttributeError(name)


def summarise(path: str, skip: int = 0, take: int | None = None) -> None:
    """p50/p95 of each mark (ms since the request reached Django), in order of their median."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()][skip: (skip + take) if take else None]
    keys = sorted({k for r in rows for k in r}, key=lambda k: statistics.median(r[k] for r in rows if k in r))
    print(f"{len(rows)} requests; ms since the request reached Django")
    for key in keys:
        values = sorted(r[key] for r in rows if key in r)
        p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
        print(f"{key:22} n={len(values):3} p50={statistics.median(values):7.1f} p95={p95:7.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    p.add_argument("--skip", type=int, default=0, help="requests to leave out first (warm-up, earlier levels)")
    p.add_argument("--take", type=int, default=None)
    a = p.parse_args()
    summarise(a.path, a.skip, a.take)

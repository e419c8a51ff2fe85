"""Django's ASGI handler with each request's sync thread taken from a pool instead of started and joined.

Django runs a request's sync code (sync views, ORM calls through ``sync_to_async``) on one thread per
request (``ThreadSensitiveContext``): asgiref starts a new thread for it and, at the end, another one
to join it. ``Thread.start`` waits until the new thread runs, so the event loop stalls each time until
that thread gets the GIL: profiled at 16 concurrent chat streams (py-spy, docs/web-tier.md), the loop
spent ~31 % of its time in these starts and joins, during which no token was forwarded to anyone.

Here the request still gets a thread of its own (an executor with one worker, used by nothing else
until the request ends: the same thread sensitivity as Django's), but from a pool of idle ones, through
asgiref's ``ThreadSensitiveContext(executor=...)``. An executor whose thread is still busy when the
request ends (a sync call outliving a cancelled request) is not reused: it is shut down without waiting.
Thread-local leftovers are not a concern: Django keeps its per-request state (database connections,
translations, URLconf) in asgiref ``Local``s bound to the request's context, not to the thread.
"""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# idle request threads kept; more than the usual number of requests in flight in one process
MAX_IDLE = 32
# asgiref 3.13 here; without the executor argument (older asgiref) Django's own handler runs unchanged
_SUPPORTED = "executor" in inspect.signature(ThreadSensitiveContext).parameters


class RequestExecutor(ThreadPoolExecutor):
    """One worker thread; counts calls not finished yet, so a busy one is never handed to a new request."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="django-request")
        self._count_lock = threading.Lock()
        self.pending = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._count_lock:
            self.pending += 1
        future = super().submit(fn, *args, **kwargs)
        # runs in the worker as the result is set, before the awaiting coroutine is woken
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future) -> None:
        with self._count_lock:
            self.pending -= 1


class ExecutorPool:
    """Idle ``RequestExecutor``s, last in first out (a recently used thread is warm)."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._idle: list[RequestExecutor] = []
        self._lock = threading.Lock()
        self.created = 0

    def take(self) -> RequestExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        return RequestExecutor()

    def give_back(self, executor: RequestExecutor) -> None:
        with self._lock:
            if executor.pending == 0 and len(self._idle) < self.max_idle:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)  # busy or too many idle: let its thread end on its own


POOL = ExecutorPool()


class PooledThreadASGIHandler(ASGIHandler):
    """``django.core.asgi.get_asgi_application()``'s handler, the request's thread from ``POOL``."""

    async def __call__(self, scope, receive, send):
        if not _SUPPORTED or scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        executor = POOL.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            POOL.give_back(executor)


def get_asgi_application() -> PooledThreadASGIHandler:
    """As Django's: set Django up, then the handler."""
    import django

    django.setup(set_prefix=False)
    return PooledThreadASGIHandler()

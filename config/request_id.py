"""The current request id (``X-Request-ID``): one context variable, a log filter, and helpers.

Set by ``config.middleware.RequestIDMiddleware`` for a web request and by the Celery task prerun
signal (config.celery) for a task; read by the logging filter (every log line shows ``[rid]``), by the
endpoint client (sent as the ``X-Request-ID`` header) and by Celery's publish signal (a task header).
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

HEADER = "X-Request-ID"
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new() -> str:
    return uuid.uuid4().hex


def clean(value: str | None) -> str | None:
    """A client-supplied id if it is short and plain (ids end up in logs: no injection)."""
    return value if value and _VALID.match(value) else None


def get() -> str | None:
    return _current.get()


def set(value: str | None) -> contextvars.Token:  # noqa: A001 - mirrors ContextVar.set
    return _current.set(value)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


class RequestIDFilter(logging.Filter):
    """Adds ``record.request_id`` ("-" outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        return True

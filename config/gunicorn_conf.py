"""gunicorn settings for the production web tier: a gunicorn arbiter over uvicorn worker processes.

    .venv/bin/gunicorn -c config/gunicorn_conf.py config.asgi:application

Why several processes: Django runs a request's sync code on a thread of that request, but all threads
of a process share one GIL, so one uvicorn process uses about one core whatever the number of
connections (docs/performance.md: 5 s submit p99 at 50 labelers; docs/web-tier.md). gunicorn
forks ``WEB_CONCURRENCY`` uvicorn workers, restarts one that dies (SIGKILL included), and lets
them share the listening socket.

Environment:
  WEB_CONCURRENCY   worker processes; default 2 x CPU cores + 1 (gunicorn's rule of thumb: while one
                    worker waits on PostgreSQL another runs Python), at least 2, at most 16.
  WEB_BIND          address (default 127.0.0.1:${TUTOR_WEB_PORT:-8000}; docker: 0.0.0.0:8000)
  WEB_TIMEOUT       seconds a silent worker may hang before the arbiter kills it (default 60)
  WEB_MAX_REQUESTS  recycle a worker after this many requests (default 0 = never)
"""

from __future__ import annotations

import multiprocessing
import os


def default_workers(cores: int | None = None) -> int:
    """2 x cores + 1, clamped to [2, 16] (documented in docs/performance.md)."""
    cores = cores or multiprocessing.cpu_count()
    return max(2, min(16, 2 * cores + 1))


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not valid: expected an integer") from None
    if value < 0 or (name == "WEB_CONCURRENCY" and value < 1):
        raise SystemExit(f"{name}={raw!r} is not valid: must be positive")
    return value


workers = _int("WEB_CONCURRENCY", default_workers())
worker_class = "uvicorn_worker.UvicornWorker"
bind = os.environ.get("WEB_BIND") or f"127.0.0.1:{os.environ.get('TUTOR_WEB_PORT', '8000')}"
timeout = _int("WEB_TIMEOUT", 60)
graceful_timeout = 20
keepalive = 5
max_requests = _int("WEB_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10
# no preload: each worker opens its own database pool after the fork (psycopg_pool threads do not
# survive fork), and a worker killed mid-request loses nothing a fresh one needs
preload_app = False
accesslog = None
errorlog = "-"
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")
proc_name = "tutorloop-web"

"""/healthz: database, broker, a live Celery worker and the model endpoint — each "ok" or an error.

Returns 503 if any part is down, so a load balancer or `make demo` can wait on it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import JsonResponse


def check_database() -> str:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return "ok"
    except Exception as exc:  # report, never raise, from a health check
        return f"error: {exc}".splitlines()[0]


def check_broker(app=None) -> str:
    if app is None:
        from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc}".splitlines()[0]


def check_worker(app=None) -> str:
    """One live worker is enough: return on its first answer (``limit=1``) instead of collecting answers until
    the timeout, so a green check costs milliseconds, not ``HEALTHZ_WORKER_TIMEOUT`` on the web process's one
    sync-view thread. A broker error is asked once more: the first use of a pooled connection after a broker
    restart fails ("Connection closed by server") and reconnects; a broker really down fails both times."""
    if app is None:
        from config.celery import app

    error = ""
    for _ in range(2):
        try:
            replies = app.control.inspect(timeout=settings.HEALTHZ_WORKER_TIMEOUT, limit=1).ping() or {}
        except Exception as exc:
            error = f"error: {exc}".splitlines()[0]
            continue
        return "ok" if replies else "error: no Celery worker answered ping"
    return error


def check_endpoint() -> str:
    import httpx

    url = settings.TUTOR_ENDPOINT_URL.rstrip("/") + "/ping"
    try:
        resp = httpx.get(url, timeout=2.0)
    except httpx.HTTPError as exc:
        return f"error: endpoint {url} unreachable ({type(exc).__name__})"
    if resp.status_code != 200:
        return f"error: endpoint {url} answered {resp.status_code}"
    return "ok"


def run_checks(include_endpoint: bool = True) -> dict[str, str]:
    checks = {"database": check_database(), "broker": check_broker(), "worker": check_worker()}
    if include_endpoint and getattr(settings, "HEALTHZ_CHECK_ENDPOINT", True):
        checks["endpoint"] = check_endpoint()
    return checks


def healthz(request):
    checks = run_checks()
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503)

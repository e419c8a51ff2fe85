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


def check_broker() -> str:
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc}".splitlines()[0]


def check_worker() -> str:
    from config.celery import app

    try:
        replies = app.control.inspect(timeout=settings.HEALTHZ_WORKER_TIMEOUT).ping() or {}
    except Exception as exc:
        return f"error: {exc}".splitlines()[0]
    if not replies:
        return "error: no Celery worker answered ping"
    return "ok"


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

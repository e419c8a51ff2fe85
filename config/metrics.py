"""``/metrics``: the web tier's Prometheus metrics (django-prometheus), beside the endpoint's own.

Request counts and latencies by view and status, exceptions, and the database's error counters. Who may
read it: with ``TUTOR_METRICS_TOKEN`` set, a scraper sending ``Authorization: Bearer <token>``; without it,
loopback clients only (a Prometheus on the same host or behind the same proxy). Several gunicorn workers:
set ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, cleared at start) so one scrape sums all workers.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView

LOOPBACK = {"127.0.0.1", "::1"}


def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.TUTOR_METRICS_TOKEN
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JsonResponse({"detail": "metrics need Authorization: Bearer <TUTOR_METRICS_TOKEN>"}, status=401)
    elif request.META.get("REMOTE_ADDR") not in LOOPBACK:
        return JsonResponse({"detail": "metrics are served to loopback only unless TUTOR_METRICS_TOKEN is set"},
                            status=403)
    return ExportToDjangoView(request)

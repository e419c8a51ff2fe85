"""/metrics: the web tier's Prometheus metrics, loopback-only or behind a bearer token."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_metrics_count_requests_and_are_loopback_only():
    local = Client()  # REMOTE_ADDR 127.0.0.1
    local.get("/accounts/login/")
    body = local.get("/metrics").content.decode()
    assert "django_http_requests_total_by_view_transport_method_total" in body
    assert 'view="login"' in body and "django_http_requests_latency_seconds_by_view_method" in body
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403


def test_metrics_token(settings):
    settings.TUTOR_METRICS_TOKEN = "m" * 32
    remote = Client(REMOTE_ADDR="10.1.2.3")
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "m" * 32).status_code == 200

"""Security settings and limits: sign-in rate limits, request size limits, CSRF on every form,
production settings checked by ``check --deploy``, request ids, and no secret in the logs."""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.test import Client

from tutor.accounts import create_user

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Secret-123"


def _address() -> str:
    """A fresh client address per test: the counters live in the (persistent) cache."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


@pytest.fixture
def limits(settings):
    settings.TUTOR_AUTH_MAX_PER_USERNAME = 3
    settings.TUTOR_AUTH_MAX_PER_ADDRESS = 5
    settings.TUTOR_SIGNUP_MAX_PER_ADDRESS = 2
    settings.TUTOR_AUTH_WINDOW_SECONDS = 600
    return settings


@pytest.mark.django_db
def test_login_failures_are_rate_limited_per_username_and_address(limits):
    name = f"lim-{uuid.uuid4().hex[:8]}"
    create_user(username=name, password=PASSWORD, role="student", validate_password=False)
    client = Client(REMOTE_ADDR=_address())
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": name, "password": "wrong"}).status_code == 200
    locked = client.post("/accounts/login/", {"username": name, "password": PASSWORD})
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session  # the right password does not get through a locked bucket
    # another username from the same address has its own budget, until the address's limit (5)
    other = f"lim-{uuid.uuid4().hex[:8]}"
    assert client.post("/accounts/login/", {"username": other, "password": "wrong"}).status_code == 200
    assert client.post("/accounts/login/", {"username": other, "password": "wrong"}).status_code == 200
    assert client.post("/accounts/login/", {"username": other, "password": "wrong"}).status_code == 429
    # another address is not affected, and a successful login is never counted
    fresh = Client(REMOTE_ADDR=_address())
    for _ in range(6):
        fresh.logout()
        assert fresh.post("/accounts/login/", {"username": name, "password": PASSWORD}).status_code == 302


@pytest.mark.django_db
def test_token_endpoint_failures_are_rate_limited(limits):
    name = f"lim-{uuid.uuid4().hex[:8]}"
    create_user(username=name, password=PASSWORD, role="labeler", validate_password=False)
    client = Client(REMOTE_ADDR=_address())
    ok = client.post("/api/auth/token/", {"username": name, "password": PASSWORD}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["token"]
    for _ in range(3):
        bad = client.post("/api/auth/token/", {"username": name, "password": "x"}, content_type="application/json")
        assert bad.status_code == 400
    refused = client.post("/api/auth/token/", {"username": name, "password": PASSWORD},
                          content_type="application/json")
    assert refused.status_code == 429 and "try again" in refused.json()["detail"]


@pytest.mark.django_db
def test_signups_are_rate_limited_per_address(limits):
    client = Client(REMOTE_ADDR=_address())
    for i in range(2):
        client.logout()
        resp = client.post("/accounts/signup/", {"username": f"new-{uuid.uuid4().hex[:8]}", "email": f"n{i}@example.com",
                                                 "password1": "a-Good-pass-99", "password2": "a-Good-pass-99"})
        assert resp.status_code == 302
    client.logout()
    resp = client.post("/accounts/signup/", {"username": f"new-{uuid.uuid4().hex[:8]}", "email": "n9@example.com",
                                             "password1": "a-Good-pass-99", "password2": "a-Good-pass-99"})
    assert resp.status_code == 429


@pytest.mark.django_db
def test_request_body_size_limits(settings):
    settings.TUTOR_MAX_REQUEST_BYTES = 4096
    client = Client()
    big = "x" * 5000
    resp = client.post("/api/auth/token/", {"username": "a", "password": big}, content_type="application/json")
    assert resp.status_code == 413 and "too large" in resp.json()["detail"]
    # Django's own bound on what a form parser keeps in memory: 400, nothing parsed
    settings.TUTOR_MAX_REQUEST_BYTES = 10 * 1024 * 1024
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    assert client.post("/accounts/login/", {"username": "a", "password": big}).status_code == 400


def test_production_defaults_bound_requests():
    from django.conf import settings

    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= 10 * 1024 * 1024
    assert settings.DATA_UPLOAD_MAX_NUMBER_FIELDS <= 1000
    # the import upload (FEEDBACK_MAX_IMPORT_BYTES) fits under the request limit, nothing far beyond it
    assert settings.FEEDBACK_MAX_IMPORT_BYTES <= settings.TUTOR_MAX_REQUEST_BYTES <= 2 * settings.FEEDBACK_MAX_IMPORT_BYTES


@pytest.mark.django_db
def test_csrf_is_enforced_on_forms():
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/login/", {"username": "a", "password": "b"}).status_code == 403


def test_every_post_form_has_a_csrf_token():
    forms = 0
    for template in ROOT.glob("*/templates/**/*.html"):
        if ".venv" in template.parts:
            continue
        text = template.read_text()
        for match in re.finditer(r"<form\b[^>]*>(.*?)</form>", text, flags=re.S | re.I):
            tag = match.group(0)[: match.group(0).index(">") + 1]
            if re.search(r"method\s*=\s*[\"']?post", tag, flags=re.I):
                forms += 1
                assert "{% csrf_token %}" in match.group(1), f"{template.relative_to(ROOT)}: POST form without csrf_token"
    assert forms >= 5


def test_check_deploy_passes_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "TUTOR_VAR_DIR": str(tmp_path / "var"),
                "DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "tutor.example.org",
                "CSRF_TRUSTED_ORIGINS": "https://tutor.example.org"})
    proc = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = ("import django; django.setup(); from django.conf import settings as s; "
             "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_HTTPONLY)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "31536000", "True"], out.stderr
    # the same check fails loudly on the demo defaults (DEBUG on, no HSTS): it is a real check
    env.pop("DEBUG")
    demo = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert demo.returncode != 0 and "security.W018" in demo.stdout + demo.stderr


@pytest.mark.django_db
def test_request_id_is_echoed_and_made(client):
    given = client.get("/accounts/login/", HTTP_X_REQUEST_ID="abc-123")
    assert given["X-Request-ID"] == "abc-123"
    made = client.get("/accounts/login/", HTTP_X_REQUEST_ID="bad id\nInjected: 1")
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])


@pytest.mark.django_db
def test_no_secret_in_logs(caplog, limits):
    name = f"sec-{uuid.uuid4().hex[:8]}"
    user = create_user(username=name, password=PASSWORD, role="labeler", validate_password=False)
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    client = Client(REMOTE_ADDR=_address())
    with caplog.at_level(logging.DEBUG):
        client.post("/accounts/login/", {"username": name, "password": "Wrong-Secret-9"})
        client.post("/api/auth/token/", {"username": name, "password": PASSWORD}, content_type="application/json")
        client.get("/api/me/", HTTP_AUTHORIZATION=f"Token {token}")
        client.get("/api/me/", HTTP_AUTHORIZATION="Token not-a-real-token-value")
        for _ in range(4):  # past the limit: the refusal is logged, without the password
            client.post("/accounts/login/", {"username": name, "password": "Wrong-Secret-9"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "rate limit" in text
    for secret in ("Wrong-Secret-9", PASSWORD, token, "not-a-real-token-value"):
        assert secret not in text

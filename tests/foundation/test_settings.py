"""Settings come from the environment with embedded defaults; bad values stop start-up clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
  "engine": db["ENGINE"], "name": str(db["NAME"]), "host": db.get("HOST", ""),
  "broker": settings.CELERY_BROKER_URL, "results": settings.CELERY_RESULT_BACKEND,
  "debug": settings.DEBUG, "hosts": settings.ALLOWED_HOSTS, "csrf": settings.CSRF_TRUSTED_ORIGINS,
  "base_model": settings.TUTOR_BASE_MODEL, "endpoint": settings.TUTOR_ENDPOINT_URL,
  "secret_len": len(settings.SECRET_KEY), "cache": settings.CACHES["default"]["BACKEND"],
}))
"""
CLEAN = ["DJANGO_ALLOW_ASYNC_UNSAFE", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "SECRET_KEY", "DEBUG",
         "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "TUTOR_BASE_MODEL", "TUTOR_ENDPOINT_URL"]


def run_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in CLEAN}
    full.update({"DJANGO_SETTINGS_MODULE": "config.settings", "TUTOR_VAR_DIR": str(tmp_path / "var")})
    full.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=60)


def probe(tmp_path: Path, **env: str) -> dict:
    proc = run_settings(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_embedded_defaults(tmp_path):
    s = probe(tmp_path)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "var" / "db.sqlite3")
    assert s["broker"] == "filesystem://"
    assert s["results"].startswith("file://")
    assert s["debug"] is True
    assert s["base_model"] == "demo"
    assert s["endpoint"] == "http://127.0.0.1:8080"
    assert s["cache"].endswith("FileBasedCache")
    # the demo secret key is generated once and kept
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.exists() and s["secret_len"] == len(key_file.read_text().strip())
    assert probe(tmp_path)["secret_len"] == s["secret_len"]
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_each_variable_overrides(tmp_path):
    s = probe(
        tmp_path,
        DATABASE_URL="postgres://u:p@db.example:5433/tutor",
        REDIS_URL="redis://cache.example:6379/2",
        SECRET_KEY="x" * 64,
        DEBUG="false",
        ALLOWED_HOSTS="tutor.example,api.example",
        CSRF_TRUSTED_ORIGINS="https://tutor.example",
        TUTOR_BASE_MODEL="/models/bloomz-560m",
        TUTOR_ENDPOINT_URL="http://endpoint:8080",
    )
    assert s["engine"] == "django.db.backends.postgresql" and s["name"] == "tutor" and s["host"] == "db.example"
    assert s["broker"] == "redis://cache.example:6379/2" and s["results"] == "redis://cache.example:6379/2"
    assert s["debug"] is False
    assert s["hosts"] == ["tutor.example", "api.example"]
    assert s["csrf"] == ["https://tutor.example"]
    assert s["base_model"] == "/models/bloomz-560m"
    assert s["endpoint"] == "http://endpoint:8080"
    assert s["cache"].endswith("RedisCache")
    # an explicit broker wins over REDIS_URL
    assert probe(tmp_path, REDIS_URL="redis://r:6379/0", CELERY_BROKER_URL="amqp://guest@mq:5672//")[
        "broker"
    ] == "amqp://guest@mq:5672//"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "postgres:/x"),
        ("DATABASE_URL", "mysqlx://nope/db"),
        ("REDIS_URL", "localhost:6379"),
        ("CELERY_BROKER_URL", "carrier-pigeon://x"),
        ("DEBUG", "maybe"),
        ("TUTOR_ENDPOINT_URL", "127.0.0.1:8080"),
        ("CSRF_TRUSTED_ORIGINS", "tutor.example"),
        ("FEEDBACK_K", "four"),
    ],
)
def test_malformed_value_stops_startup_with_one_line(tmp_path, name, value):
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update({"TUTOR_VAR_DIR": str(tmp_path / "var"), name: value})
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] and "Traceback" not in proc.stderr


def test_production_requires_secret_key(tmp_path):
    proc = run_settings(tmp_path, DEBUG="false")
    assert proc.returncode != 0 and "SECRET_KEY is required" in proc.stderr


def test_check_deploy_is_clean_in_production(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(
        TUTOR_VAR_DIR=str(tmp_path / "var"),
        DEBUG="false",
        SECRET_KEY="k" * 20 + "Q7#n$e!-" * 6,
        ALLOWED_HOSTS="tutor.example",
        CSRF_TRUSTED_ORIGINS="https://tutor.example",
    )
    proc = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout

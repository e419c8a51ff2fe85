"""A short soak with faults (benchmarks/soak.py): labelers against gunicorn + PostgreSQL + its own
Redis + a Celery worker while a web worker and the Celery worker are SIGKILLed and Redis restarts;
nothing acknowledged is lost or duplicated, no task is over-labeled, /healthz heals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.fixtures.processes import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the soak needs PostgreSQL (SQLite serialises "
                    "writers; CI's PostgreSQL + Redis pass runs it)")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="the soak starts its own redis-server")
@pytest.mark.timeout(300)
def test_short_soak_with_faults(transactional_db):
    # the soak flushes and seeds the database it is given: here, the test database
    env = subprocess_env()
    env.pop("REDIS_URL", None)  # it starts and restarts its own Redis, never the shared one
    proc = subprocess.run([sys.executable, "benchmarks/soak.py", "--seconds", "30", "--labelers", "6", "--tasks",
                           "200", "--web-concurrency", "2", "--heal-seconds", "60", "--seed", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
    assert proc.returncode == 0, out
    assert "lost 0, duplicated 0, over-labeled tasks 0" in out
    for fault in ("SIGKILL web worker", "Redis stopped", "SIGKILL Celery worker"):
        assert fault in out, out
    assert "NOT green" not in out

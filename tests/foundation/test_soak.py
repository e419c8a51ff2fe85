"""A short soak with faults (benchmarks/soak.py): labelers against gunicorn + PostgreSQL + its own
Redis + a Celery worker while a web worker is SIGKILLed, Redis restarts, and the Celery worker is
SIGKILLed in the middle of a real training step (a prune job's LoRA recovery on the tiny model);
nothing acknowledged is lost or duplicated, no task is over-labeled, the killed job ends failed (reaped)
with its version failed, nothing is half-promoted or half-written, /healthz heals."""

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
@pytest.mark.timeout(360)
def test_short_soak_with_faults(transactional_db, tiny_base_path, tiny_adapters):
    # the soak flushes and seeds the database it is given: here, the test database
    env = subprocess_env()
    env.pop("REDIS_URL", None)  # it starts and restarts its own Redis, never the shared one
    adapters = Path(next(iter(tiny_adapters.values()))).parents[1]  # <root>/<subject>/v1
    proc = subprocess.run([sys.executable, "benchmarks/soak.py", "--seconds", "30", "--labelers", "6", "--tasks",
                           "500", "--web-concurrency", "2", "--heal-seconds", "60", "--seed", "1",
                           "--base-model", str(tiny_base_path), "--adapters", str(adapters), "--train-steps", "200",
                           "--stale-seconds", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=340)
    out = proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
    assert proc.returncode == 0, out
    assert "lost 0, duplicated 0, over-labeled tasks 0" in out
    for fault in ("SIGKILL web worker", "Redis stopped", "SIGKILL Celery worker in a training step"):
        assert fault in out, out
    assert "NOT green" not in out
    # the killed job: failed by the reaper, its version failed, nothing training, promoted or half-written
    assert "(reaped: worker lost" in out, out
    assert "half-promoted versions 0, versions left training by a finished job 0" in out, out
    assert "left training or promoted: 0" in out, out
    assert "artefacts: half-written 0" in out, out

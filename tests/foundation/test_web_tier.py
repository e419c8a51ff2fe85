"""The production web tier: gunicorn + uvicorn workers, the psycopg pool settings, and a pooled
multi-process server serving the labeling API on PostgreSQL (surviving a SIGKILLed worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.fixtures.processes import free_port, start_process, subprocess_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({"options": db.get("OPTIONS", {}), "conn_max_age": db["CONN_MAX_AGE"]}))
"""


def _probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DB_POOL_MAX_SIZE", "DB_CONN_MAX_AGE"}}
    full.update({"DJANGO_SETTINGS_MODULE": "config.settings", "TUTOR_VAR_DIR": str(tmp_path / "var"), **env})
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_default_worker_count_per_core():
    from config.gunicorn_conf import default_workers

    assert [default_workers(c) for c in (1, 2, 4, 8, 64)] == [3, 5, 9, 16, 16]


def test_pool_settings(tmp_path):
    pg = "postgres://u@db.example.org:5432/tutor"
    pooled = _probe(tmp_path, DATABASE_URL=pg, DB_POOL_MAX_SIZE="6", DB_POOL_MIN_SIZE="2")
    assert pooled.returncode == 0, pooled.stderr
    assert json.loads(pooled.stdout.splitlines()[-1])["options"]["pool"] == {"min_size": 2, "max_size": 6,
                                                                             "timeout": 10.0}
    off = json.loads(_probe(tmp_path, DATABASE_URL=pg).stdout.splitlines()[-1])
    assert "pool" not in off["options"]
    # a pool and persistent connections exclude each other: a clear one-line error
    bad = _probe(tmp_path, DATABASE_URL=pg, DB_POOL_MAX_SIZE="4", DB_CONN_MAX_AGE="60")
    assert bad.returncode != 0 and "DB_CONN_MAX_AGE must be 0 when DB_POOL_MAX_SIZE is set" in bad.stderr
    # SQLite ignores the pool setting (the embedded default keeps working)
    lite = json.loads(_probe(tmp_path, DB_POOL_MAX_SIZE="4").stdout.splitlines()[-1])
    assert "pool" not in lite["options"]


def _worker_pids(arbiter_pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(arbiter_pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the psycopg pool is PostgreSQL-only "
                    "(run with DATABASE_URL=postgres://...; CI's second pass does)")
def test_pooled_gunicorn_serves_labeling_and_survives_a_killed_worker(transactional_db):
    from rest_framework.authtoken.models import Token

    from tests.feedback.conftest import make_labeler, make_task

    for _ in range(6):
        make_task()
    labelers = [make_labeler() for _ in range(2)]
    tokens = [Token.objects.create(user=lab).key for lab in labelers]
    port = free_port()
    env = subprocess_env(WEB_CONCURRENCY="2", DB_POOL_MAX_SIZE="2", WEB_BIND=f"127.0.0.1:{port}",
                         FEEDBACK_GOLD_RATE="0", WEB_LOG_LEVEL="warning")
    web = start_process("gunicorn", [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn_conf.py",
                                     "config.asgi:application"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/accounts/login/", timeout=2).status_code == 200, 90,
                   f"gunicorn to serve (log: {web.log_path})")
        wait_until(lambda: len(_worker_pids(web.proc.pid)) == 2, 30, "two workers")

        def label(token: str) -> int:
            headers = {"Authorization": f"Token {token}"}
            task = httpx.post(f"{url}/api/label/next/", headers=headers, timeout=30).json()["task"]
            order = [[c["id"]] for c in task["completions"]]
            resp = httpx.post(f"{url}/api/label/tasks/{task['task_id']}/submit/", json={"order": order},
                              headers=headers, timeout=30)
            assert resp.status_code == 201, resp.text
            return resp.json()["ranking"]["ranking_id"]

        seen = [label(tokens[0]), label(tokens[1])]
        # SIGKILL one worker: the arbiter forks a new one (its own pool), the other keeps serving
        victim = sorted(_worker_pids(web.proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        seen.append(label(tokens[0]))
        wait_until(lambda: len(_worker_pids(web.proc.pid) - {victim}) == 2, 60, "the arbiter to replace the worker")
        seen += [label(tokens[1]), label(tokens[0])]
        from feedback.models import Ranking

        assert sorted(Ranking.objects.values_list("id", flat=True)) == sorted(seen)
    finally:
        web.stop()

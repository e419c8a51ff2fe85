"""Real Celery worker and beat processes: tasks run end to end, /healthz follows the worker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.celery import app
from tests.fixtures.processes import start_celery_worker, subprocess_env, wait_until

REDIS_TEST_URL = os.environ.get("TUTOR_TEST_REDIS_URL", settings.REDIS_URL or "redis://127.0.0.1:6379/7")


def test_app_config_is_safe():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.beat_scheduler.startswith("django_celery_beat")


def test_worker_process_runs_a_task_over_the_configured_broker(celery_worker):
    result = app.send_task("config.ping", kwargs={"value": "hello"})
    assert result.get(timeout=60) == "hello"


def test_worker_processes_share_the_cores_as_torch_threads(transactional_db):
    from tests.fixtures.processes import purge_filesystem_broker

    purge_filesystem_broker()
    cpus = os.cpu_count() or 1
    worker = start_celery_worker(subprocess_env(), concurrency=2)
    try:
        # two training jobs at once must not run 2 x cpus spinning OpenMP threads
        assert app.send_task("config.torch_threads").get(timeout=60) == max(1, cpus // 2)
    finally:
        worker.stop()


def _redis_available(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:
        return f"Redis at {url} is unreachable ({exc})"


def test_worker_process_runs_a_task_over_redis(transactional_db):
    reason = _redis_available(REDIS_TEST_URL)
    if reason:
        pytest.skip(reason)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    # not the current app: shared tasks sent later by other tests must keep using the project's app
    redis_app = Celery("tutorloop-test", broker=REDIS_TEST_URL, backend=REDIS_TEST_URL, set_as_current=False)
    redis_app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    env = subprocess_env(CELERY_BROKER_URL=REDIS_TEST_URL, CELERY_RESULT_BACKEND=REDIS_TEST_URL)
    worker = start_celery_worker(env, app=redis_app, queues=queue)
    try:
        result = redis_app.send_task("config.ping", kwargs={"value": "over-redis"}, queue=queue)
        assert result.get(timeout=60) == "over-redis"
    finally:
        worker.stop()


def test_healthz_goes_from_503_to_200_when_a_worker_starts(client, transactional_db):
    from tests.fixtures.processes import purge_filesystem_broker

    resp = client.get("/healthz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert body["checks"]["worker"].startswith("error")
    purge_filesystem_broker()
    worker = start_celery_worker(subprocess_env())
    try:
        resp = client.get("/healthz")
        assert resp.status_code == 200, resp.json()
        assert resp.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "worker": "ok"}}
    finally:
        worker.stop()
    assert client.get("/healthz").status_code == 503


def test_beat_sends_a_periodic_task_created_through_django_celery_beat(celery_worker, celery_beat, tmp_path):
    marker: Path = tmp_path / "beat-marker"
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="probe", task="config.beat_probe", interval=every,
                                kwargs=f'{{"path": "{marker}"}}')
    wait_until(marker.exists, 90, "beat to send config.beat_probe and the worker to run it")
    assert float(marker.read_text()) > 0

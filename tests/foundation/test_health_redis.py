"""/healthz after a Redis restart: a real redis-server of the test's own, a real Celery worker against it.

Why: the soak saw /healthz red for a minute after a 2 s Redis restart. Celery's consumer re-connects with
kombu's 2, 4, 6, ... 30 s back-off, and the worker check collected ping answers for its whole timeout;
``config.worker_consumer`` and ``tutor.health.check_worker`` fix both (docs/web-tier.md).
"""

from __future__ import annotations

import shutil
import time

import pytest
from celery import Celery
from django.conf import settings

from tests.fixtures.processes import (
    ManagedProcess,
    free_port,
    start_celery_worker,
    start_process,
    subprocess_env,
    wait_until,
)
from tutor import health

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="starts its own redis-server")


def _redis(port: int) -> ManagedProcess:
    server = start_process("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], subprocess_env())

    def up() -> bool:
        import redis

        return redis.Redis(port=port, socket_connect_timeout=0.5).ping()

    wait_until(up, 30, f"redis-server on :{port}")
    return server


def test_healthz_is_green_within_seconds_of_redis_coming_back(transactional_db):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis(port)
    app = Celery("tutorloop-health", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    worker = start_celery_worker(subprocess_env(CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url), app=app)
    try:
        t0 = time.monotonic()
        assert health.check_worker(app) == "ok"
        assert time.monotonic() - t0 < settings.HEALTHZ_WORKER_TIMEOUT  # the first answer, not the whole timeout

        server.stop()
        # honest while Redis is down
        assert health.check_broker(app).startswith("error") and health.check_worker(app).startswith("error")
        # the worker notices and retries: by its 4th try Celery's own back-off sleeps 8 s before the next
        wait_until(lambda: worker.log_path.read_text(errors="replace").count("Trying again") >= 4, 60,
                   "the worker to retry the broker 4 times")
        server = _redis(port)
        back = time.monotonic()
        wait_until(lambda: health.check_broker(app) == "ok" and health.check_worker(app) == "ok", 60,
                   "/healthz's broker and worker checks to be green again")
        healed = time.monotonic() - back
        assert healed < 4.0, f"green {healed:.1f} s after Redis came back\n{worker.log()}"
    finally:
        worker.stop()
        server.stop()

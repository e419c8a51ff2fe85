"""The Celery app. Tasks are discovered from the Django apps; settings come from CELERY_*."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tutorloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="config.ping", ignore_result=False)
def ping(value: str = "pong") -> str:
    """A trivial task used by health checks and the worker tests."""
    return value


@app.task(name="config.beat_probe", ignore_result=True)
def beat_probe(path: str) -> None:
    """Write a timestamp to ``path``: proof that beat sent a task and a worker ran it."""
    import time
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(f"{time.time()}\n")
    tmp.replace(target)

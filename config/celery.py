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

"""The Celery app. Tasks are discovered from the Django apps; settings come from CELERY_*."""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tutorloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="config.ping", ignore_result=False)
def ping(value: str = "pong") -> str:
    """A trivial task used by health checks and the worker tests."""
    return value


@app.task(name="config.torch_threads", ignore_result=False)
def torch_threads() -> int:
    """The PyTorch intra-op threads of the worker process that runs it (see ``_share_the_cores``)."""
    import torch

    return torch.get_num_threads()


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


@signals.celeryd_init.connect
def _remember_concurrency(options: dict | None = None, **_: object) -> None:
    """Pass the worker's ``--concurrency`` to its child processes (they inherit the environment)."""
    concurrency = (options or {}).get("concurrency")
    if concurrency:
        os.environ["TUTOR_WORKER_CONCURRENCY"] = str(concurrency)


@signals.worker_process_init.connect
def _share_the_cores(**_: object) -> None:
    """Give each worker process its share of the cores as PyTorch intra-op threads.

    PyTorch defaults to every core in every process. Two training jobs on a 2-core machine then run 4 spinning
    OpenMP threads: in the demo the PPO of one subject took 180-245 s in the worker against ~20 s inline.
    """
    concurrency = int(os.environ.get("TUTOR_WORKER_CONCURRENCY") or os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    try:
        import torch
    except ImportError:  # a worker without the ML stack
        return
    torch.set_num_threads(threads)

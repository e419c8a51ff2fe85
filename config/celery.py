"""The Celery app. Tasks are discovered from the Django apps; settings come from CELERY_*."""

from __future__ import annotations

import os

from celery import Celery, signals

from config.kombu_fs import install as install_atomic_filesystem_broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
install_atomic_filesystem_broker()

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


@signals.before_task_publish.connect
def _send_request_id(headers: dict | None = None, **_: object) -> None:
    """A task sent while serving a request (or another task) carries its X-Request-ID as a header."""
    from config import request_id

    rid = request_id.get()
    if rid and headers is not None and "request_id" not in headers:
        headers["request_id"] = rid


@signals.task_prerun.connect
def _receive_request_id(task=None, **_: object) -> None:
    """The worker's log lines and endpoint calls for this task show the id it was sent with (or a new one)."""
    from config import request_id

    rid = request_id.clean(getattr(task.request, "request_id", None)) if task is not None else None
    request_id.set(rid or request_id.new())


@signals.task_postrun.connect
def _forget_request_id(**_: object) -> None:
    from config import request_id

    request_id.set(None)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_request_id(logger=None, **_: object) -> None:
    """Celery sets up its own handlers: give them the request id too."""
    import logging

    from config.request_id import RequestIDFilter

    for handler in getattr(logger, "handlers", []):
        handler.addFilter(RequestIDFilter())
        fmt = getattr(handler.formatter, "_fmt", None) or "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
        if "%(request_id)s" not in fmt:
            handler.setFormatter(logging.Formatter(fmt.replace("%(message)s", "[%(request_id)s] %(message)s")))


@app.task(name="config.request_id_probe", ignore_result=False)
def request_id_probe() -> str | None:
    """The request id the worker sees for this task (the request-id test sends one)."""
    from config import request_id

    return request_id.get()

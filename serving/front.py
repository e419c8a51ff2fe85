"""`python -m serving --model-process`: the HTTP front and the model worker in two processes.

Why: in one process the event loop (accepting connections, parsing requests, writing streams for
every client) and the decode thread share one GIL, so HTTP work for many clients delays decode steps
(docs/performance.md measured the decode loop busy only 11-35 % of the time under load). Here the
front owns every client connection; the model worker (the same endpoint, `python -m serving --uds`)
owns the weights, the registry and the batch loop, and is reached over a Unix domain socket with a
small pool of keep-alive connections — a local channel with no TCP stack and no per-client sockets.

The front supervises the worker:
- a worker that dies (OOM-killed, SIGKILL, a crash) is started again at once; it restores the loaded
  versions and routing from its state file, so hot swaps made before the crash survive it;
- while it is down or loading, requests get 503 with `Retry-After` (never a hang); a stream that was
  in flight ends with an error event that says the model worker stopped;
- back-pressure crosses the boundary unchanged: the worker's 429 (queue or KV budget full) and 413 reach
  the client as they are.

Everything else (the SageMaker contract, admin API, multi-model routes) is forwarded as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.http import RequestIDMiddleware, _frame, _stream_kind, _watch_disconnect, error

log = logging.getLogger("serving.front")

FORWARD_HEADERS = ("authorization", "accept", "content-type", "x-request-id", "x-amzn-sagemaker-target-model",
                   "x-amzn-sagemaker-custom-attributes")
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)  # after the 1st, 2nd, ... consecutive failure to get ready


def _die_with_parent() -> None:
    from serving.bases import _die_with_parent as die

    die()


class Worker:
    """The model worker process: started, watched, restarted; `ready` once its /ping answers 200."""

    def __init__(self, argv: Sequence[str], uds: str, startup_timeout: float = 900.0):
        self.argv = list(argv)
        self.uds = uds
        self.startup_timeout = startup_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.restarts = 0
        self.failures = 0  # consecutive starts that never got ready
        self.last_exit: int | None = None
        self.stopping = False
        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds), base_url="http://worker",
                                        timeout=httpx.Timeout(None, connect=5.0),
                                        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._task: asyncio.Task | None = None

    def describe(self) -> dict[str, Any]:
        return {"pid": self.proc.pid if self.proc else None, "ready": self.ready.is_set(),
                "restarts": self.restarts, "last_exit": self.last_exit, "channel": f"unix:{self.uds}"}

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds)
        env = {k: v for k, v in os.environ.items() if k != "TUTOR_ENDPOINT_MODEL_PROCESS"}
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while self.proc.returncode is None and time.monotonic() < deadline:
            try:  # ready when the worker answers /ping 200 (it loads the model first)
                if (await self.client.get("/ping", timeout=5.0)).status_code == 200:
                    self.failures = 0
                    self.ready.set()
                    log.info("model worker ready (pid %d, %s)", self.proc.pid, self.uds)
                    return
            except httpx.TransportError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.1)
        if self.proc.returncode is None:
            log.error("model worker did not get ready in %.0f s; killing it", self.startup_timeout)
            self.proc.kill()
        self.failures += 1

    async def _supervise(self) -> None:
        while not self.stopping:
            await self._spawn()
            code = await self.proc.wait()
            self.ready.clear()
            if self.stopping:
                return
            self.last_exit = code
            self.restarts += 1
            pause = RESTART_BACKOFF_S[min(self.failures, len(RESTART_BACKOFF_S) - 1)]
            log.warning("model worker exited with %s; starting it again in %.1f s", code, pause)
            await asyncio.sleep(pause)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()


def _down(worker: Worker, why: str) -> Response:
    state = "restarting" if worker.restarts else "loading"
    return error(503, f"the model worker is {state} ({why}); retry shortly", headers={"Retry-After": "1"})


async def forward(request: Request) -> Response:
    """Any request: to the worker, the answer streamed back unchanged."""
    worker: Worker = request.app.state.worker
    if not worker.ready.is_set():
        return _down(worker, "not ready")
    headers = {k: v for k in FORWARD_HEADERS if (v := request.headers.get(k)) is not None}
    body = await request.body()
    req = worker.client.build_request(request.method, request.url.path, params=request.query_params,
                                      content=body, headers=headers)
    try:
        upstream = await worker.client.send(req, stream=True)
    except httpx.TransportError as exc:
        return _down(worker, f"{type(exc).__name__}")
    keep = {k: v for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "retry-after", "cache-control", "x-accel-buffering")}
    kind = _stream_kind(request.headers.get("accept", ""))
    streaming = upstream.headers.get("content-type", "").startswith(("text/event-stream", "application/jsonlines"))
    if not streaming:
        collect = asyncio.ensure_future(upstream.aread())
        watch = asyncio.ensure_future(_watch_disconnect(request))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not collect.done():  # the client went away: closing the upstream makes the worker cancel it
                collect.cancel()
                return Response(status_code=499)
            content = collect.result()
        except httpx.TransportError as exc:
            return _down(worker, f"it stopped while answering: {type(exc).__name__}")
        finally:
            watch.cancel()
            await upstream.aclose()
        return Response(content, status_code=upstream.status_code, headers=keep)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:  # the worker died mid-answer: say so, never hang
            yield _frame(kind or "jsonlines", {"error": "the model worker stopped mid-answer "
                                                        f"({type(exc).__name__}); it is being restarted"}).encode()
        finally:
            await upstream.aclose()

    return StreamingResponse(relay(), status_code=upstream.status_code, headers=keep)


async def ping(request: Request) -> Response:
    worker: Worker = request.app.state.worker
    if not worker.ready.is_set():
        return JSONResponse({"status": "restarting" if worker.restarts else "loading",
                             "front": worker.describe()}, status_code=503)
    try:
        r = await worker.client.get("/ping")
    except httpx.TransportError as exc:
        return _down(worker, type(exc).__name__)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return JSONResponse({**body, "front": worker.describe()}, status_code=r.status_code)


async def metrics(request: Request) -> Response:
    """The worker's metrics, plus the front's own (restarts, readiness)."""
    worker: Worker = request.app.state.worker
    text = ""
    if worker.ready.is_set():
        with contextlib.suppress(httpx.TransportError):
            text = (await worker.client.get("/metrics")).text
    text += ("# HELP tutor_endpoint_worker_restarts_total Model worker restarts by the HTTP front.\n"
             "# TYPE tutor_endpoint_worker_restarts_total counter\n"
             f"tutor_endpoint_worker_restarts_total {worker.restarts}\n"
             "# HELP tutor_endpoint_worker_ready Whether the model worker answers.\n"
             "# TYPE tutor_endpoint_worker_ready gauge\n"
             f"tutor_endpoint_worker_ready {int(worker.ready.is_set())}\n")
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def worker_argv(argv: Sequence[str], uds: str) -> list[str]:
    """`python -m serving` with the same flags, minus the front's own, plus `--uds`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--model-process":
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        if arg.startswith(("--host=", "--port=")):
            continue
        out.append(arg)
    return [sys.executable, "-m", "serving", *out, "--uds", uds]


def build_front(argv: Sequence[str], uds: str | None = None) -> Starlette:
    uds = uds or str(Path(tempfile.mkdtemp(prefix="tutor-endpoint-")) / "worker.sock")
    worker = Worker(worker_argv(argv, uds), uds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await worker.stop()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(routes=[Route("/ping", ping, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
                            Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)
    app.state.worker = worker
    app.add_middleware(RequestIDMiddleware)
    return app


__all__ = ["Worker", "build_front", "worker_argv"]

"""The HTTP layer (Starlette): the SageMaker contract, streaming, the admin API, metrics.

Everything here runs on the event loop and stays cheap: parsing, tokenising the prompt,
detokenising streamed tokens. The model runs on the scheduler's decode thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.config import ServerConfig
from serving.http import RequestIDMiddleware, _frame, _stream_kind, _watch_disconnect, error
from serving.registry import AdapterVersion, RegistryError
from serving.scheduler import Group, QueueFull, SamplingParams, TooLargeForBudget

log = logging.getLogger("serving.app")

MAX_STOP_STRINGS = 8


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class Invocation:
    text: str
    prompt_ids: list[int]
    subject: str
    version: int | None
    routing_key: str | None
    params: SamplingParams


@dataclass
class Completion:
    """The event-loop side of one sequence: incremental detokenisation and stop strings."""

    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (complete characters only)
    sent: int = 0  # characters already streamed
    prefix_offset: int = 0  # ids[prefix_offset:read_offset] were decoded into the end of `text`
    read_offset: int = 0
    finish_reason: str | None = None


# ---- request parsing ----------------------------------------------------------------------------

def _int(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = params.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(400, f"parameters.{name} must be an integer")
    if not lo <= v <= hi:
        raise BadRequest(400, f"parameters.{name} must be between {lo} and {hi} (got {v})")
    return v


def _float(params: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = params.get(name, default)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise BadRequest(400, f"parameters.{name} must be a number")
    if not lo <= v <= hi:
        raise BadRequest(400, f"parameters.{name} must be between {lo} and {hi} (got {v})")
    return float(v)


def parse_parameters(raw: Any, cfg: ServerConfig) -> SamplingParams:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest(400, "'parameters' must be an object")
    unknown = set(raw) - {"max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "n", "stop"}
    if unknown:
        raise BadRequest(400, f"unknown parameter(s): {', '.join(sorted(unknown))}")
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise BadRequest(400, "parameters.seed must be a non-negative integer")
    stop = raw.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(400, f"parameters.stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them")
    max_new_tokens = _int(raw, "max_new_tokens", cfg.default_max_new_tokens, 1, cfg.max_new_tokens_limit)
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        min_new_tokens=_int(raw, "min_new_tokens", 0, 0, max_new_tokens),
        temperature=_float(raw, "temperature", cfg.default_temperature, 0.0, 5.0),
        top_p=_float(raw, "top_p", 1.0, 1e-6, 1.0),
        seed=seed,
        n=_int(raw, "n", 1, 1, cfg.max_n),
        stop=tuple(stop),
    )


def json_object(body: bytes) -> dict:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the request body must be a JSON object")
    return data


def parse_invocation(body: bytes, cfg: ServerConfig, tokenizer: Any, build_prompt: Any) -> Invocation:
    if len(body) > cfg.max_body_bytes:
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {cfg.max_body_bytes}")
    data = json_object(body)
    unknown = set(data) - {"messages", "prompt", "subject", "adapter", "routing_key", "parameters"}
    if unknown:
        raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    version = None
    if "adapter" in data:
        adapter = data["adapter"]
        if not isinstance(adapter, dict) or not isinstance(adapter.get("subject"), str):
            raise BadRequest(400, "'adapter' must be {\"subject\": str, \"version\": int}")
        subject, version = adapter["subject"], adapter.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise BadRequest(400, "adapter.version must be an integer")
        if "subject" in data and data["subject"] != subject:
            raise BadRequest(400, "'subject' and 'adapter.subject' disagree")
    elif isinstance(data.get("subject"), str):
        subject = data["subject"]
    else:
        raise BadRequest(400, "'subject' (a string) or 'adapter' is required")
    routing_key = data.get("routing_key")
    if routing_key is not None and not isinstance(routing_key, str | int):
        raise BadRequest(400, "'routing_key' must be a string")
    params = parse_parameters(data.get("parameters"), cfg)
    if ("messages" in data) == ("prompt" in data):
        raise BadRequest(400, "give exactly one of 'messages' or 'prompt'")
    if "prompt" in data:
        text = data["prompt"]
        if not isinstance(text, str) or not text:
            raise BadRequest(400, "'prompt' must be a non-empty string")
    else:
        messages = data["messages"]
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "'messages' must be a non-empty list of {\"role\", \"content\"}")
        if not all(isinstance(m, dict) for m in messages):
            raise BadRequest(400, "every message must be an object with 'role' and 'content'")
        try:
            text = build_prompt(tokenizer, subject, messages)
        except ValueError as exc:
            if "unknown subject" in str(exc):
                raise BadRequest(404, str(exc)) from None
            raise BadRequest(400, str(exc)) from None
    ids = tokenizer(text)["input_ids"]
    if len(ids) > cfg.max_prompt_tokens:
        raise BadRequest(413, f"the prompt is {len(ids)} tokens; the limit is {cfg.max_prompt_tokens}")
    if not ids:
        raise BadRequest(400, "the prompt is empty after tokenisation")
    return Invocation(text=text, prompt_ids=ids, subject=subject, version=version,
                      routing_key=str(routing_key) if routing_key is not None else None, params=params)


# ---- generation on the event loop side ----------------------------------------------------------

class Generation:
    """Consumes a group's events: detokenises, applies stop strings, builds the answer."""

    def __init__(self, state: Any, inv: Invocation, av: AdapterVersion, group: Group, queue: asyncio.Queue):
        self.state, self.inv, self.av, self.group, self.queue = state, inv, av, group, queue
        self.completions = [Completion() for _ in range(inv.params.n)]
        self.open = inv.params.n
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.hold = max((len(s) for s in inv.params.stop), default=1) - 1

    def _decode_new(self, c: Completion, final: bool = False) -> None:
        """Extend `c.text` by the characters the newest ids completed (vLLM/TGI-style offsets).

        Decoding only a short window keeps detokenisation O(1) per token instead of re-decoding
        the whole completion; a window ending in U+FFFD is an unfinished UTF-8 character and waits.
        """
        decode = self.state.tokenizer.decode
        before = decode(c.ids[c.prefix_offset:c.read_offset], skip_special_tokens=True)
        after = decode(c.ids[c.prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            c.text += after[len(before):]
            c.prefix_offset, c.read_offset = c.read_offset, len(c.ids)

    def _update(self, i: int, token: int) -> str:
        """Append a token; returns the newly safe text (holding back what could start a stop string)."""
        c = self.completions[i]
        c.ids.append(token)
        self._decode_new(c)
        stops = [(c.text.find(s), s) for s in self.inv.params.stop if s in c.text]
        if stops:
            c.text = c.text[:min(stops)[0]]
            c.finish_reason = "stop"
            self.group.seqs[i].cancelled = True  # leaves the batch at the next step boundary
            self.open -= 1
            return self._flush(c)
        safe = max(len(c.text) - self.hold, c.sent)
        out = c.text[c.sent:safe]
        c.sent = safe
        return out

    @staticmethod
    def _flush(c: Completion) -> str:
        out = c.text[c.sent:]
        c.sent = len(c.text)
        return out

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Text deltas as they arrive; raises RuntimeError when the decode loop failed.

        Coalesced: whatever is already queued when we wake up goes out as one write, one event per
        completion. When clients read slower than the model writes, this keeps the per-token cost
        of the HTTP layer from becoming the bottleneck (see docs/performance.md).
        """
        while self.open > 0:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            deltas: dict[int, str] = {}
            for kind, i, payload in items:
                c = self.completions[i]
                if c.finish_reason is not None:
                    continue  # already stopped by a stop string; late tokens are ignored
                if kind == "token":
                    if self.first_token is None:
                        self.first_token = time.monotonic()
                    delta = self._update(i, payload)
                elif kind == "done":
                    c.finish_reason = payload
                    self.open -= 1
                    self._decode_new(c, final=True)
                    delta = self._flush(c)
                else:
                    raise RuntimeError(payload)
                if delta:
                    deltas[i] = deltas.get(i, "") + delta
            if deltas:
                yield [{"index": i, "token": d} for i, d in deltas.items()]

    def result(self) -> dict:
        now = time.monotonic()
        n_gen = sum(len(c.ids) for c in self.completions)
        total = now - self.started
        ttft = (self.first_token - self.started) if self.first_token else None
        adapter = {"subject": self.av.subject, "version": self.av.version}
        return {
            "outputs": [{"text": c.text, "adapter": adapter, "tokens": len(c.ids), "finish_reason": c.finish_reason}
                        for c in self.completions],
            "usage": {"prompt_tokens": len(self.inv.prompt_ids), "completion_tokens": n_gen,
                      "total_tokens": len(self.inv.prompt_ids) + n_gen},
            "timings": {
                "queue_ms": round(((self.group.first_token_at or now) - self.group.submitted) * 1000, 2),
                "time_to_first_token_ms": round(ttft * 1000, 2) if ttft is not None else None,
                "total_ms": round(total * 1000, 2),
                "tokens_per_second": round(n_gen / total, 2) if total > 0 else None,
            },
        }


# ---- handlers -----------------------------------------------------------------------------------

async def ping(request: Request) -> Response:
    state = request.app.state.endpoint
    if state.error:
        return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    body = {"status": "ok", "base_model": state.base_model_id, "adapters": len(state.registry.versions),
            **state.scheduler.load()}
    if state.bases.workers:  # the child endpoints of other bases (optimised variants)
        body["other_bases"] = [{"base": w.base, "alive": w.alive(), "versions": len(w.versions)}
                               for w in list(state.bases.workers.values())]
    return JSONResponse(body)


async def invocations(request: Request) -> Response:
    state = request.app.state.endpoint
    if not state.ready:
        return error(503, "the endpoint is still loading the model" if not state.error else state.error)
    cfg: ServerConfig = state.config
    body = await request.body()
    try:
        inv = parse_invocation(body, cfg, state.tokenizer, state.build_prompt)
        av = state.registry.acquire(inv.subject, inv.version, inv.routing_key)
    except BadRequest as exc:
        state.metrics.requests.labels("-", "-", str(exc.status)).inc()
        return error(exc.status, exc.message)
    except RegistryError as exc:
        state.metrics.requests.labels("-", "-", str(exc.status)).inc()
        return error(exc.status, exc.message)
    if av.upstream:  # a version on another base: its own endpoint process answers
        return await _proxy(request, state, body, av, _stream_kind(request.headers.get("accept", "")))
    queue: asyncio.Queue = asyncio.Queue()
    try:
        group = state.scheduler.submit(inv.prompt_ids, av, inv.params, queue)
    except QueueFull as exc:  # the queue or the KV-cache budget is full
        state.registry.release(av)
        state.metrics.requests.labels(av.subject, str(av.version), "429").inc()
        return error(429, str(exc), headers={"Retry-After": "1"})
    except TooLargeForBudget as exc:
        state.registry.release(av)
        state.metrics.requests.labels(av.subject, str(av.version), "413").inc()
        return error(413, str(exc))
    gen = Generation(state, inv, av, group, queue)
    labels = (av.subject, str(av.version))
    kind = _stream_kind(request.headers.get("accept", ""))

    if kind is None:
        collect = asyncio.ensure_future(_drain(gen))
        watch = asyncio.ensure_future(_watch_disconnect(request))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not collect.done():  # the client went away: free its batch slots
            collect.cancel()
            state.scheduler.cancel(group)
            state.metrics.requests.labels(*labels, "499").inc()
            return Response(status_code=499)
        try:
            collect.result()
        except RuntimeError as exc:
            state.metrics.requests.labels(*labels, "500").inc()
            return error(500, str(exc))
        state.metrics.requests.labels(*labels, "200").inc()
        return JSONResponse(gen.result())

    async def body_iter() -> AsyncIterator[str]:
        finished = False
        try:
            async for batch in gen.batches():
                yield "".join(_frame(kind, ev) for ev in batch)
            finished = True
            state.metrics.requests.labels(*labels, "200").inc()
            yield _frame(kind, {"done": True, **gen.result()})
        except RuntimeError as exc:
            finished = True
            state.metrics.requests.labels(*labels, "500").inc()
            yield _frame(kind, {"error": str(exc)})
        finally:
            if not finished:  # cancelled by a disconnect (or the server stopping)
                state.scheduler.cancel(group)
                state.metrics.requests.labels(*labels, "499").inc()

    media = "text/event-stream" if kind == "sse" else "application/jsonlines"
    return StreamingResponse(body_iter(), media_type=media,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _release_remote(state: Any, av: AdapterVersion) -> None:
    """Drop the request's reference; a version unloaded meanwhile stops its child once the last one is done."""
    if state.registry.release(av) is not None:
        asyncio.get_running_loop().run_in_executor(None, state.bases.detach, av.subject, av.version)


async def _proxy(request: Request, state: Any, body: bytes, av: AdapterVersion, kind: str | None) -> Response:
    """Forward the invocation to the child endpoint of the version's base, pinned to the version chosen here
    (so canary shares and sticky routing stay this endpoint's), streaming its answer through unchanged."""
    data = json.loads(body)
    data.pop("subject", None)
    data.pop("routing_key", None)
    data["adapter"] = {"subject": av.subject} if av.bare else {"subject": av.subject, "version": av.version}
    labels = (av.subject, str(av.version))
    if state.upstream_client is None:
        import httpx

        state.upstream_client = httpx.AsyncClient(timeout=None)
    client = state.upstream_client
    headers = {"accept": request.headers.get("accept", "application/json")}
    if rid := request.headers.get("x-request-id"):
        headers["x-request-id"] = rid
    down = None
    if av.upstream in state.bases.restarting:
        down = "starting again"
    else:
        try:
            upstream = await client.send(client.build_request("POST", av.upstream + "/invocations", json=data,
                                                              headers=headers), stream=True)
        except Exception as exc:  # connection refused / reset: the child died
            down = f"not answering ({type(exc).__name__})"
            asyncio.get_running_loop().run_in_executor(None, state.bases.revive, av.upstream)
    if down is not None:
        _release_remote(state, av)
        state.metrics.requests.labels(*labels, "503").inc()
        return error(503, f"the endpoint process serving {av.subject} v{av.version} (base {av.base}) is {down}; "
                          "it is being restarted, retry shortly", headers={"Retry-After": "2"})
    if kind is None or upstream.status_code != 200:
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
            _release_remote(state, av)
        state.metrics.requests.labels(*labels, str(upstream.status_code)).inc()
        return Response(content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"))

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
            state.metrics.requests.labels(*labels, "200").inc()
        except Exception as exc:  # the child died mid-answer: say so in the stream, never hang
            state.metrics.requests.labels(*labels, "500").inc()
            yield _frame(kind, {"error": f"the endpoint process serving {av.subject} v{av.version} stopped "
                                         f"mid-answer ({type(exc).__name__})"}).encode()
        finally:
            await upstream.aclose()
            _release_remote(state, av)

    return StreamingResponse(relay(), media_type=upstream.headers.get("content-type"),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _drain(gen: Generation) -> None:
    async for _ in gen.batches():
        pass


async def metrics(request: Request) -> Response:
    state = request.app.state.endpoint
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ---- admin --------------------------------------------------------------------------------------

def _authorised(request: Request) -> JSONResponse | None:
    token = request.app.state.endpoint.admin_token
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer ") or not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        return error(401, "admin API: missing or wrong bearer token")
    return None


async def _json_object(request: Request) -> dict:
    return json_object(await request.body())


async def admin_list(request: Request) -> Response:
    if (denied := _authorised(request)) is not None:
        return denied
    state = request.app.state.endpoint
    return JSONResponse({"base_model": state.base_model_id, **state.registry.describe(),
                         "other_bases": await asyncio.to_thread(state.bases.describe)})


async def admin_load(request: Request) -> Response:
    if (denied := _authorised(request)) is not None:
        return denied
    state = request.app.state.endpoint
    if not state.ready:
        return error(503, "the endpoint is still loading the model")
    try:
        data = await _json_object(request)
        subject, version, path = data.get("subject"), data.get("version"), data.get("path")
        if not isinstance(subject, str) or not subject:
            raise BadRequest(400, "'subject' must be a non-empty string")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BadRequest(400, "'version' must be a positive integer")
        if not isinstance(path, str) or not path:
            raise BadRequest(400, "'path' must be the adapter directory")
        base = data.get("base")
        if base is not None and (not isinstance(base, str) or not base):
            raise BadRequest(400, "'base' must be a base model directory (an optimised variant's own base)")
        av = await state.load_adapter(subject, version, Path(path), Path(base) if base else None)
    except BadRequest as exc:
        return error(exc.status, exc.message)
    except RegistryError as exc:
        return error(exc.status, exc.message)
    return JSONResponse({"adapter": av.describe()}, status_code=201)


async def admin_unload(request: Request) -> Response:
    if (denied := _authorised(request)) is not None:
        return denied
    state = request.app.state.endpoint
    subject, raw_version = request.path_params["subject"], request.path_params["version"]
    if not raw_version.lstrip("v").isdigit():
        return error(400, "version must be an integer")
    try:
        draining = await state.unload_adapter(subject, int(raw_version.lstrip("v")))
    except RegistryError as exc:
        return error(exc.status, exc.message)
    return JSONResponse({"unloaded": {"subject": subject, "version": int(raw_version.lstrip("v"))},
                         "draining": draining})


async def admin_routing(request: Request) -> Response:
    if (denied := _authorised(request)) is not None:
        return denied
    state = request.app.state.endpoint
    subject = request.path_params["subject"]
    try:
        data = await _json_object(request)
        unknown = set(data) - {"promoted", "candidate", "candidate_share"}
        if unknown:
            raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        route = state.registry.set_routing(subject, data.get("promoted"), data.get("candidate"),
                                           data.get("candidate_share", 0.0))
        state.save_state()
    except BadRequest as exc:
        return error(exc.status, exc.message)
    except RegistryError as exc:
        return error(exc.status, exc.message)
    return JSONResponse({"subject": subject, "routing": route.describe()})


async def not_found(request: Request, exc: Exception) -> Response:
    return error(404, f"no route {request.method} {request.url.path}")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return error(405, f"{request.method} is not allowed on {request.url.path}")


def create_app(state: Any) -> Starlette:
    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/adapters", admin_list, methods=["GET"]),
        Route("/admin/adapters", admin_load, methods=["POST"]),
        Route("/admin/adapters/{subject}/{version}", admin_unload, methods=["DELETE"]),
        Route("/admin/routing/{subject}", admin_routing, methods=["PUT"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed},
                    lifespan=state.lifespan)
    app.state.endpoint = state
    app.add_middleware(RequestIDMiddleware)
    return app

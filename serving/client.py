"""Clients of the endpoint (sync for Django views and Celery tasks, async for the benchmark).

Retries only on connection errors (the request never reached the server, so retrying cannot
generate twice); every HTTP error becomes `EndpointError(status, message)`.

    client = EndpointClient()                     # $TUTOR_ENDPOINT_URL or http://127.0.0.1:8080
    out = client.generate(messages=[{"role": "user", "content": "2+2?"}], subject="mathematics")
    for event in client.stream(prompt="...", subject="history"):   # {"index", "token"} ... {"done": True, ...}
        ...
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from serving.config import read_admin_token

DEFAULT_URL = "http://127.0.0.1:8080"


class EndpointError(Exception):
    """The endpoint answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"endpoint error {status}: {message}")
        self.status = status
        self.message = message


def default_url() -> str:
    return os.environ.get("TUTOR_ENDPOINT_URL", DEFAULT_URL).rstrip("/")


def invocation_body(messages: list[dict] | None = None, prompt: str | None = None, subject: str | None = None,
                    version: int | None = None, routing_key: str | None = None, **parameters: Any) -> dict:
    """The JSON body of `POST /invocations` (parameters left out are the server's defaults)."""
    body: dict[str, Any] = {}
    if messages is not None:
        body["messages"] = messages
    if prompt is not None:
        body["prompt"] = prompt
    if version is not None:
        body["adapter"] = {"subject": subject, "version": version}
    elif subject is not None:
        body["subject"] = subject
    if routing_key is not None:
        body["routing_key"] = routing_key
    params = {k: v for k, v in parameters.items() if v is not None}
    if params:
        body["parameters"] = params
    return body


def _load_body(subject: str, version: int, path: str | os.PathLike, base: str | os.PathLike | None) -> dict:
    body = {"subject": subject, "version": version, "path": str(path)}
    return body | {"base": str(base)} if base else body


def _error_of(response: httpx.Response) -> EndpointError:
    try:
        message = response.json().get("error") or response.text
    except (ValueError, AttributeError):
        message = response.text or response.reason_phrase
    return EndpointError(response.status_code, message)


def _parse_line(line: str) -> dict | None:
    line = line.strip()
    if line.startswith("data:"):
        line = line[5:].strip()
    if not line:
        return None
    event = json.loads(line)
    if "error" in event:
        raise EndpointError(500, event["error"])
    return event


class EndpointClient:
    """Synchronous client (httpx)."""

    def __init__(self, url: str | None = None, admin_token: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.2, extra_headers: Callable[[], dict[str, str]] | None = None):
        self.url = (url or default_url()).rstrip("/")
        self.admin_token = admin_token if admin_token is not None else read_admin_token()
        self.retries, self.backoff = retries, backoff
        # extra_headers: computed per request (the caller's X-Request-ID), so one client serves many requests
        self._extra_headers = extra_headers
        hooks = {"request": [self._add_headers]} if extra_headers else {}
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                  event_hooks=hooks)

    def _add_headers(self, request: httpx.Request) -> None:
        for key, value in (self._extra_headers() or {}).items():
            request.headers.setdefault(key, value)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin_headers(self) -> dict[str, str]:
        if not self.admin_token:
            raise EndpointError(401, "no admin token (pass admin_token=, set TUTOR_ENDPOINT_ADMIN_TOKEN, "
                                     "or run where <var>/endpoint_admin_token exists)")
        return {"Authorization": f"Bearer {self.admin_token}"}

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kw)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.retries:
                    raise EndpointError(0, f"cannot reach the endpoint at {self.url}: {exc}") from exc
                time.sleep(self.backoff * 2**attempt)
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json() if response.content else None

    def ping(self) -> dict:
        return self._request("GET", "/ping")

    def generate(self, messages: list[dict] | None = None, prompt: str | None = None, subject: str | None = None,
                 version: int | None = None, routing_key: str | None = None, **parameters: Any) -> dict:
        """One JSON answer: `{"outputs": [{"text", "adapter", "tokens", "finish_reason"}], "usage", "timings"}`."""
        return self._request("POST", "/invocations",
                             json=invocation_body(messages, prompt, subject, version, routing_key, **parameters))

    def stream(self, messages: list[dict] | None = None, prompt: str | None = None, subject: str | None = None,
               version: int | None = None, routing_key: str | None = None, **parameters: Any) -> Iterator[dict]:
        """Events as produced: `{"index", "token"}` ..., then `{"done": True, "outputs", ...}`."""
        body = invocation_body(messages, prompt, subject, version, routing_key, **parameters)
        for attempt in range(self.retries + 1):
            try:
                with self._http.stream("POST", "/invocations", json=body,
                                       headers={"Accept": "application/jsonlines"}) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_of(response)
                    for line in response.iter_lines():
                        event = _parse_line(line)
                        if event is not None:
                            yield event
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.retries:
                    raise EndpointError(0, f"cannot reach the endpoint at {self.url}: {exc}") from exc
                time.sleep(self.backoff * 2**attempt)

    def list_adapters(self) -> dict:
        return self._request("GET", "/admin/adapters", headers=self._admin_headers())

    def load_adapter(self, subject: str, version: int, path: str | os.PathLike,
                     base: str | os.PathLike | None = None) -> dict:
        """Load a version; `base`: an optimised variant's own base model (served by its own process)."""
        return self._request("POST", "/admin/adapters", headers=self._admin_headers(),
                             json=_load_body(subject, version, path, base))

    def unload_adapter(self, subject: str, version: int) -> dict:
        return self._request("DELETE", f"/admin/adapters/{subject}/{version}", headers=self._admin_headers())

    def set_routing(self, subject: str, promoted: int, candidate: int | None = None,
                    candidate_share: float = 0.0) -> dict:
        return self._request("PUT", f"/admin/routing/{subject}", headers=self._admin_headers(),
                             json={"promoted": promoted, "candidate": candidate, "candidate_share": candidate_share})


class AsyncEndpointClient:
    """Asynchronous client (httpx.AsyncClient); the same methods as `EndpointClient`, awaitable."""

    def __init__(self, url: str | None = None, admin_token: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.2, max_connections: int = 256,
                 extra_headers: Callable[[], dict[str, str]] | None = None):
        self.url = (url or default_url()).rstrip("/")
        self.admin_token = admin_token if admin_token is not None else read_admin_token()
        self.retries, self.backoff = retries, backoff
        self._extra_headers = extra_headers
        hooks = {"request": [self._add_headers]} if extra_headers else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                       limits=httpx.Limits(max_connections=max_connections), event_hooks=hooks)

    async def _add_headers(self, request: httpx.Request) -> None:
        for key, value in (self._extra_headers() or {}).items():
            request.headers.setdefault(key, value)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEndpointClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _admin_headers(self) -> dict[str, str]:
        if not self.admin_token:
            raise EndpointError(401, "no admin token (pass admin_token=, set TUTOR_ENDPOINT_ADMIN_TOKEN, "
                                     "or run where <var>/endpoint_admin_token exists)")
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, **kw)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.retries:
                    raise EndpointError(0, f"cannot reach the endpoint at {self.url}: {exc}") from exc
                await asyncio.sleep(self.backoff * 2**attempt)
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json() if response.content else None

    async def ping(self) -> dict:
        return await self._request("GET", "/ping")

    async def generate(self, messages: list[dict] | None = None, prompt: str | None = None,
                       subject: str | None = None, version: int | None = None, routing_key: str | None = None,
                       **parameters: Any) -> dict:
        return await self._request("POST", "/invocations",
                                   json=invocation_body(messages, prompt, subject, version, routing_key, **parameters))

    async def stream(self, messages: list[dict] | None = None, prompt: str | None = None,
                     subject: str | None = None, version: int | None = None, routing_key: str | None = None,
                     **parameters: Any) -> AsyncIterator[dict]:
        body = invocation_body(messages, prompt, subject, version, routing_key, **parameters)
        for attempt in range(self.retries + 1):
            try:
                async with self._http.stream("POST", "/invocations", json=body,
                                             headers={"Accept": "application/jsonlines"}) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error_of(response)
                    async for line in response.aiter_lines():
                        event = _parse_line(line)
                        if event is not None:
                            yield event
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.retries:
                    raise EndpointError(0, f"cannot reach the endpoint at {self.url}: {exc}") from exc
                await asyncio.sleep(self.backoff * 2**attempt)

    async def list_adapters(self) -> dict:
        return await self._request("GET", "/admin/adapters", headers=self._admin_headers())

    async def load_adapter(self, subject: str, version: int, path: str | os.PathLike,
                           base: str | os.PathLike | None = None) -> dict:
        return await self._request("POST", "/admin/adapters", headers=self._admin_headers(),
                                   json=_load_body(subject, version, path, base))

    async def unload_adapter(self, subject: str, version: int) -> dict:
        return await self._request("DELETE", f"/admin/adapters/{subject}/{version}", headers=self._admin_headers())

    async def set_routing(self, subject: str, promoted: int, candidate: int | None = None,
                          candidate_share: float = 0.0) -> dict:
        return await self._request("PUT", f"/admin/routing/{subject}", headers=self._admin_headers(),
                                   json={"promoted": promoted, "candidate": candidate,
                                         "candidate_share": candidate_share})

"""The Django side of the model endpoint: clients built from settings, one place for all apps.

feedback/ and training/ import ``get_client()`` / ``get_async_client()`` from here so the URL,
admin token and timeout are read the same way everywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings

# (loop, url, timeout) -> client: reused by the chat's streaming path on the server's event loop.
_SHARED: dict[tuple[int, str, float, bool], tuple[asyncio.AbstractEventLoop, Any]] = {}


def _admin_token() -> str | None:
    """The configured token, else the one the local endpoint wrote under var/ (embedded demo)."""
    token = settings.TUTOR_ENDPOINT_ADMIN_TOKEN
    if token:
        return token
    path = settings.VAR_DIR / "endpoint_admin_token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


admin_token = _admin_token  # public name (training/ deploys with it)


def request_id_headers() -> dict[str, str]:
    """``X-Request-ID`` of the web request or Celery task being served (config.request_id), if any."""
    from config import request_id

    rid = request_id.get()
    return {request_id.HEADER: rid} if rid else {}


def _sagemaker() -> bool:
    return getattr(settings, "TUTOR_DEPLOY_TARGET", "local") == "sagemaker"


def get_client(timeout: float | None = None):
    """A synchronous client for the configured endpoint: ``serving.client.EndpointClient`` (local
    HTTP), or the SageMaker runtime client with the same ``generate``/``stream`` when
    ``TUTOR_DEPLOY_TARGET=sagemaker``."""
    if _sagemaker():
        from serving.sagemaker_runtime import client_from_settings

        return client_from_settings(settings)
    from serving.client import EndpointClient

    return EndpointClient(
        settings.TUTOR_ENDPOINT_URL,
        admin_token=_admin_token(),
        timeout=timeout or settings.TUTOR_ENDPOINT_TIMEOUT,
        extra_headers=request_id_headers,
    )


def get_async_client(timeout: float | None = None):
    """The async twin of ``get_client`` (close it with ``aclose``)."""
    if _sagemaker():
        from serving.sagemaker_runtime import async_client_from_settings

        return async_client_from_settings(settings)
    from serving.client import AsyncEndpointClient

    return AsyncEndpointClient(
        settings.TUTOR_ENDPOINT_URL,
        admin_token=_admin_token(),
        timeout=timeout or settings.TUTOR_ENDPOINT_TIMEOUT,
        extra_headers=request_id_headers,
    )


def shared_async_client():
    """The chat's streaming client, shared per event loop: building an httpx client (SSL context,
    connection pool) costs tens of milliseconds, which would land on every time-to-first-token.
    Do not close it. Clients of loops that have ended are dropped."""
    loop = asyncio.get_running_loop()
    for key, (old_loop, _) in list(_SHARED.items()):
        if old_loop.is_closed():
            del _SHARED[key]
    key = (id(loop), settings.TUTOR_ENDPOINT_URL, settings.TUTOR_ENDPOINT_TIMEOUT, _sagemaker())
    entry = _SHARED.get(key)
    if entry is None:
        entry = _SHARED[key] = (loop, get_async_client())
    return entry[1]

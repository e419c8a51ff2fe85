"""Web-tier middleware: request ids, request size limit, and brute-force limits on sign-in.

* ``RequestIDMiddleware`` takes ``X-Request-ID`` from the client (or makes one), puts it in every log
  line of the request (``config.request_id``), and sends it back; the endpoint client and Celery
  task headers carry it on (docs/observability.md).
* ``RequestSizeLimitMiddleware`` refuses a body larger than ``TUTOR_MAX_REQUEST_BYTES`` with 413
  before anything reads it (Django's own DATA_UPLOAD_MAX_MEMORY_SIZE only bounds what a form
  parser keeps in memory, and the ASGI handler spools any body to disk first).
* ``AuthRateLimitMiddleware`` counts FAILED sign-ins (login form, token endpoint) per client address
  and per address + username, and sign-ups per address, in the cache (Redis in production: shared
  by all web workers); past the limit it answers 429 with ``Retry-After`` without running the view.
  Successful sign-ins are not counted, so a class logging in together is never locked out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, JsonResponse

from config import request_id

log = logging.getLogger("tutorloop.security")

# URL name -> what counts against the limit: "failure" (status tells) or "any" successful POST
LIMITED = {"login": "failure", "api-token": "failure", "signup": "success"}


class RequestIDMiddleware:
    """``X-Request-ID`` in, in every log line, and out."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id.clean(request.META.get("HTTP_X_REQUEST_ID")) or request_id.new()
        token = request_id.set(rid)
        request.request_id = rid
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        return response


class RequestSizeLimitMiddleware:
    """413 for a declared body over ``TUTOR_MAX_REQUEST_BYTES`` (checked before the body is read)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": "invalid Content-Length"}, status=400)
        limit = settings.TUTOR_MAX_REQUEST_BYTES
        if length > limit:
            return JsonResponse({"detail": f"request body too large: {length} bytes, at most {limit}"}, status=413)
        return self.get_response(request)


def _client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR (behind a trusted proxy set TUTOR_TRUST_X_FORWARDED_FOR=true: its first hop)."""
    if settings.TUTOR_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return request.META.get("REMOTE_ADDR") or "unknown"


def _key(*parts: str) -> str:
    return "authrl:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _username(request: HttpRequest) -> str:
    """The username a sign-in names (form or JSON body), lower-cased; "" when there is none."""
    try:
        if request.content_type == "application/json":
            body = json.loads(request.body or b"{}")
            value = body.get("username") if isinstance(body, dict) else None
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            value = request.POST.get("username")
        else:
            value = None
    except (ValueError, UnicodeDecodeError):
        value = None
    return str(value or "").strip().lower()[:150]


class AuthRateLimitMiddleware:
    """429 after too many failed sign-ins (per address, and per address + username) or sign-ups."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return self.get_response(request)
        name = getattr(getattr(request, "resolver_match", None), "url_name", None)
        if name is None:
            from django.urls import Resolver404, resolve

            try:
                name = resolve(request.path_info).url_name
            except Resolver404:
                name = None
        if name not in LIMITED:
            return self.get_response(request)
        cache = caches[settings.TUTOR_RATELIMIT_CACHE]
        window = settings.TUTOR_AUTH_WINDOW_SECONDS
        addr = _client_address(request)
        bucket = int(time.time() // window)
        username = _username(request) if name != "signup" else ""
        keys = [(_key(name, addr, str(bucket)), settings.TUTOR_AUTH_MAX_PER_ADDRESS if name != "signup"
                 else settings.TUTOR_SIGNUP_MAX_PER_ADDRESS)]
        if username:
            keys.append((_key(name, addr, username, str(bucket)), settings.TUTOR_AUTH_MAX_PER_USERNAME))
        for key, limit in keys:
            if (cache.get(key) or 0) >= limit:
                retry = int(window - time.time() % window) + 1
                log.warning("rate limit: %s from %s refused (limit %d per %d s)", name, addr, limit, window)
                resp = JsonResponse({"detail": f"too many attempts; try again in {retry} s"}, status=429)
                resp["Retry-After"] = str(retry)
                return resp
        response = self.get_response(request)
        failed = response.status_code == 400 or (name == "login" and response.status_code == 200)
        counts = failed if LIMITED[name] == "failure" else response.status_code == 302
        if counts:
            for key, _ in keys:
                if not cache.add(key, 1, timeout=window + 1):
                    try:
                        cache.incr(key)
                    except ValueError:  # expired between add and incr
                        cache.add(key, 1, timeout=window + 1)
        return response

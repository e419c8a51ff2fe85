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
* ``WhiteNoiseMiddleware``: WhiteNoise's, able to run in an async chain.
* Django's and django-prometheus's middleware (sessions, common, auth, messages, metrics) as subclasses
  whose hooks run on the loop in an async chain, except the ones that may touch the database
  (``_OnLoop``); Django's security, CSRF and X-Frame-Options middleware the same way, patched in place
  (``run_django_middleware_on_loop``: ``check --deploy`` needs their Django paths in ``MIDDLEWARE``).

All of them are sync *and* async capable (Django's middleware protocol), so under ASGI the whole chain
runs on the event loop and a request only goes to a thread for its view's sync work. WhiteNoise's own
middleware is sync-only, and one sync-only middleware makes Django run the chain's outer part on a
thread and hop back to the loop for the inner part: two thread hops per request, each waiting for the
GIL behind every other busy thread (measured: ~30 ms each at 16 concurrent chat streams on 2 cores;
docs/web-tier.md, "Chat time to first token").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import types

import django.contrib.auth.middleware
import django.contrib.messages.middleware
import django.contrib.sessions.middleware
import django.middleware.clickjacking
import django.middleware.common
import django.middleware.csrf
import django.middleware.security
import django_prometheus.middleware
import whitenoise.middleware
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, JsonResponse

from config import request_id

log = logging.getLogger("tutorloop.security")

# URL name -> what counts against the limit: "failure" (status tells) or "any" successful POST
LIMITED = {"login": "failure", "api-token": "failure", "signup": "success"}


class _Hybrid:
    """Sync and async capable: ``__call__`` returns a coroutine when the next handler is async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.acall(request)
        return self.call(request)

    def call(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    async def acall(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError


class RequestIDMiddleware(_Hybrid):
    """``X-Request-ID`` in, in every log line, and out."""

    @staticmethod
    def _start(request: HttpRequest) -> tuple[str, object]:
        rid = request_id.clean(request.META.get("HTTP_X_REQUEST_ID")) or request_id.new()
        request.request_id = rid
        return rid, request_id.set(rid)

    def call(self, request: HttpRequest) -> HttpResponse:
        rid, token = self._start(request)
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        return response

    async def acall(self, request: HttpRequest) -> HttpResponse:
        rid, token = self._start(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        return response


class RequestSizeLimitMiddleware(_Hybrid):
    """413 for a declared body over ``TUTOR_MAX_REQUEST_BYTES`` (checked before the body is read)."""

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": "invalid Content-Length"}, status=400)
        limit = settings.TUTOR_MAX_REQUEST_BYTES
        if length > limit:
            return JsonResponse({"detail": f"request body too large: {length} bytes, at most {limit}"}, status=413)
        return None

    def call(self, request: HttpRequest) -> HttpResponse:
        return self._refusal(request) or self.get_response(request)

    async def acall(self, request: HttpRequest) -> HttpResponse:
        return self._refusal(request) or await self.get_response(request)


class WhiteNoiseMiddleware(_Hybrid, whitenoise.middleware.WhiteNoiseMiddleware):
    """WhiteNoise's static files, async capable: on the loop a request that is not for a static file
    costs a dict lookup or a prefix check (no thread); a static file is looked up and opened on a thread."""

    def __init__(self, get_response=None):
        whitenoise.middleware.WhiteNoiseMiddleware.__init__(self, get_response)
        _Hybrid.__init__(self, get_response)

    def call(self, request: HttpRequest) -> HttpResponse:
        return whitenoise.middleware.WhiteNoiseMiddleware.__call__(self, request)

    def _may_be_static(self, path: str) -> bool:
        # autorefresh (DEBUG) finds files on disk under STATIC_URL (and WHITENOISE_ROOT: anywhere)
        return path.startswith(self.static_prefix) or bool(getattr(settings, "WHITENOISE_ROOT", None))

    async def acall(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(path) if self._may_be_static(path) else None
        else:
            static_file = self.files.get(path)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


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


class AuthRateLimitMiddleware(_Hybrid):
    """429 after too many failed sign-ins (per address, and per address + username) or sign-ups."""

    @staticmethod
    def _limited_name(request: HttpRequest) -> str | None:
        """The URL name when this request is a sign-in/sign-up POST that is counted, else None."""
        if request.method != "POST":
            return None
        name = getattr(getattr(request, "resolver_match", None), "url_name", None)
        if name is None:
            from django.urls import Resolver404, resolve

            try:
                name = resolve(request.path_info).url_name
            except Resolver404:
                name = None
        return name if name in LIMITED else None

    def call(self, request: HttpRequest) -> HttpResponse:
        name = self._limited_name(request)
        if name is None:
            return self.get_response(request)
        return self._limited(request, name, self.get_response)

    async def acall(self, request: HttpRequest) -> HttpResponse:
        name = self._limited_name(request)
        if name is None:  # every other request (the chat included) stays on the event loop
            return await self.get_response(request)
        from asgiref.sync import async_to_sync

        # sign-in/sign-up only: the cache and the body are read on a thread, as in the sync chain
        return await sync_to_async(self._limited)(request, name, async_to_sync(self.get_response))

    def _limited(self, request: HttpRequest, name: str, get_response) -> HttpResponse:
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
        response = get_response(request)
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



class _OnLoop:
    """``MiddlewareMixin.__acall__`` without the thread hops: Django runs a MiddlewareMixin's
    ``process_request``/``process_response`` in ``sync_to_async`` in an async chain (two hops per
    middleware, ~17 per request here). These run on the loop when they do no I/O; a subclass names the
    cases that may touch the database (saving a session), which still go to a thread."""

    def request_on_loop(self, request: HttpRequest) -> bool:
        return True

    def response_on_loop(self, request: HttpRequest, response: HttpResponse) -> bool:
        return True

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        if hasattr(self, "process_request"):
            if self.request_on_loop(request):
                response = self.process_request(request)
            else:
                response = await sync_to_async(self.process_request)(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_on_loop(request, response):
                response = self.process_response(request, response)
            else:
                response = await sync_to_async(self.process_response)(request, response)
        return response


class SessionMiddleware(_OnLoop, django.contrib.sessions.middleware.SessionMiddleware):
    """Django's; the session is loaded lazily (by a view, on its thread) and saved on a thread."""

    def response_on_loop(self, request: HttpRequest, response: HttpResponse) -> bool:
        session = getattr(request, "session", None)
        if session is None or not session.accessed:
            return True
        return not ((session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not session.is_empty())


class CommonMiddleware(_OnLoop, django.middleware.common.CommonMiddleware):
    """Django's (URL and header checks)."""


class AuthenticationMiddleware(_OnLoop, django.contrib.auth.middleware.AuthenticationMiddleware):
    """Django's; it only sets the lazy ``request.user`` (read later, on the view's thread)."""


class MessageMiddleware(_OnLoop, django.contrib.messages.middleware.MessageMiddleware):
    """Django's; storing messages may spill into the session, so a request that used or added messages
    stores them on a thread."""

    def response_on_loop(self, request: HttpRequest, response: HttpResponse) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is None or not (storage.used or storage.added_new)


class PrometheusBeforeMiddleware(_OnLoop, django_prometheus.middleware.PrometheusBeforeMiddleware):
    """django-prometheus's (in-memory counters)."""


class PrometheusAfterMiddleware(_OnLoop, django_prometheus.middleware.PrometheusAfterMiddleware):
    """django-prometheus's per-view counters, all on the loop in an async chain."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode:
            self.process_view = self._aprocess_view

    async def _aprocess_view(self, request, view_func, *view_args, **view_kwargs):
        return super().process_view(request, view_func, *view_args, **view_kwargs)


def run_django_middleware_on_loop() -> None:
    """Django's security, CSRF and X-Frame-Options middleware, whose hooks do no I/O (CSRF: with its
    cookie, not ``CSRF_USE_SESSIONS``), run on the loop in an async chain. Patched in place rather than
    subclassed: ``check --deploy`` looks for these three by their Django paths in ``MIDDLEWARE`` (and skips
    the HSTS/SSL/CSRF settings checks without them), so the paths stay Django's."""
    security = django.middleware.security.SecurityMiddleware
    clickjacking = django.middleware.clickjacking.XFrameOptionsMiddleware
    csrf = django.middleware.csrf.CsrfViewMiddleware
    if getattr(csrf, "_tutor_on_loop", False):
        return
    for cls in (security, clickjacking):
        cls.__acall__ = _OnLoop.__acall__
        cls.request_on_loop = _OnLoop.request_on_loop
        cls.response_on_loop = _OnLoop.response_on_loop

    def csrf_on_loop(self, request, response=None) -> bool:
        return not settings.CSRF_USE_SESSIONS

    async def csrf_process_view(self, request, callback, callback_args, callback_kwargs):
        # a CSRF-exempt view (every DRF API view: DRF checks CSRF itself for session-authenticated
        # requests) is let through on the loop; other views are checked on a thread, as before
        if getattr(callback, "csrf_exempt", False):
            return None
        return await sync_to_async(csrf.process_view.__get__(self))(request, callback, callback_args, callback_kwargs)

    original_init = csrf.__init__

    def csrf_init(self, get_response) -> None:
        original_init(self, get_response)
        if self.async_mode:
            self.process_view = types.MethodType(csrf_process_view, self)

    csrf.__acall__ = _OnLoop.__acall__
    csrf.request_on_loop = csrf_on_loop
    csrf.response_on_loop = csrf_on_loop
    csrf.__init__ = csrf_init
    csrf._tutor_on_loop = True


run_django_middleware_on_loop()  # also called by tutor's AppConfig.ready, before any handler is built

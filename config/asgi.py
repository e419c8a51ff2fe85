"""ASGI entry point: uvicorn serves it so that chat answers can stream.

Django's handler with each request's sync thread taken from a pool (config/asgi_handler.py): starting
and joining a thread per request stalled the event loop (docs/web-tier.md, chat time to first token)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.asgi_handler import get_asgi_application  # noqa: E402  (after the settings module is named)

application = get_asgi_application()

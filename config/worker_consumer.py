"""The Celery worker's consumer, reconnecting to the broker at a short, capped interval.

Why: Celery's consumer reconnects through kombu's ``ensure_connection`` with its fixed defaults, sleeping
2, 4, 6, ... up to 30 s between attempts. After a Redis restart the worker came back up to one whole step
after Redis did (a 2 s outage: green 6.3 s after Redis returned; longer outages wait up to 30 s more), and
``/healthz`` stayed red meanwhile although nothing was down any more (docs/web-tier.md, the soak's
findings). A refused connection costs the broker nothing, so the worker tries every
``BROKER_RECONNECT_MAX_SECONDS`` at most, and forever (``CELERY_BROKER_CONNECTION_MAX_RETRIES`` is None: 100
one-second tries would have shut the worker down after less than two minutes of outage).
"""

from __future__ import annotations

from functools import partial

from celery.worker.consumer import Consumer as CeleryConsumer


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn):
        from django.conf import settings

        cap = float(getattr(settings, "BROKER_RECONNECT_MAX_SECONDS", 1.0))
        conn.ensure_connection = partial(conn.ensure_connection, interval_start=min(0.5, cap),
                                         interval_step=min(0.5, cap), interval_max=cap)
        return super().ensure_connected(conn)

"""Celery tasks (thin: each calls one service)."""

from __future__ import annotations

from celery import shared_task

# the endpoint is unreachable (0) or still loading / restarting: worth retrying shortly
RETRYABLE_ENDPOINT_STATUSES = {0, 502, 503, 504}


@shared_task(name="feedback.build_tasks", bind=True, max_retries=5)
def build_tasks(self, limit: int = 50, k: int | None = None) -> dict:
    """Ingest consenting students' prompts and sample K completions per new pool prompt."""
    from feedback.services import build_tasks as build
    from serving.client import EndpointError

    try:
        return build(limit=limit, k=k)
    except EndpointError as exc:
        if exc.status in RETRYABLE_ENDPOINT_STATUSES:
            raise self.retry(countdown=min(60, 5 * 2**self.request.retries)) from None
        raise


@shared_task(name="feedback.update_reliability")
def update_reliability() -> int:
    from feedback.services import update_reliability as update

    return update()


@shared_task(name="feedback.create_snapshot")
def create_snapshot(since_ranking_id: int | None = None) -> str:
    from feedback.services import create_snapshot as create

    return create(since_ranking_id=since_ranking_id).sha256

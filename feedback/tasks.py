"""Celery tasks (thin: each calls one service)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="feedback.build_tasks")
def build_tasks(limit: int = 50, k: int | None = None) -> dict:
    """Ingest consenting students' prompts and sample K completions per new pool prompt."""
    from feedback.services import build_tasks as build

    return build(limit=limit, k=k)


@shared_task(name="feedback.update_reliability")
def update_reliability() -> int:
    from feedback.services import update_reliability as update

    return update()


@shared_task(name="feedback.create_snapshot")
def create_snapshot(since_ranking_id: int | None = None) -> str:
    from feedback.services import create_snapshot as create

    return create(since_ranking_id=since_ranking_id).sha256

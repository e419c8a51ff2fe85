"""Celery tasks: thin wrappers that call one service function with plain arguments.

``acks_late`` + ``reject_on_worker_lost``: a job whose worker dies is redelivered; ``execute_job`` claims
it exactly once (a reaped or finished job is skipped), so a retry is safe.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="training.run_job", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: int) -> str:
    """Run one training job (snapshot, reward model, PPO, evaluate or deploy) to a terminal state."""
    from training.services import execute_job

    return execute_job(int(job_id), worker=self.request.hostname or "")


@shared_task(name="training.reap", acks_late=True, ignore_result=True)
def reap() -> dict:
    """Periodic: fail jobs whose heartbeat stopped, then re-apply deployments the target lost."""
    from training.services import reap_dead_jobs, reconcile_deployments

    return {"reaped": reap_dead_jobs(), "deployments": reconcile_deployments()}


@shared_task(name="training.trigger_pipeline", acks_late=True, ignore_result=True)
def trigger_pipeline(min_new_pairs: int | None = None, config: dict | None = None) -> str:
    """The schedule: start the pipeline when at least N new preference pairs exist and none is running."""
    from training.services import maybe_trigger_pipeline

    result = maybe_trigger_pipeline(min_new_pairs, config)
    return f"started {result.started}" if result.started else f"not started: {result.reason}"


@shared_task(name="training.watch_canaries", acks_late=True, ignore_result=True)
def watch_canaries() -> dict:
    """Periodic: compare each baking canary's live signals with the promoted version's; promote or roll back
    the ones whose bake is over."""
    from training.canary import check_canaries

    return check_canaries()

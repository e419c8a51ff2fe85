"""Real Celery worker processes: cancel stops a PPO job within one step; a SIGKILLed worker's job is
reaped as failed with its version, and the promoted version is unchanged and still served."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.fixtures.processes import purge_filesystem_broker, start_celery_worker, subprocess_env, wait_until
from training import services
from training.models import Job, PolicyVersion, RewardModelVersion

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

LONG_PPO = {"steps": 200, "batch_size": 4, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 8}


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_base_path, tmp_path_factory):
    """A reward model trained once per session on a synthetic answer-key snapshot."""
    from rlhf.reward import RewardConfig, synthetic_preference_dataset, train_reward_model

    root = tmp_path_factory.mktemp("rm")
    ds = synthetic_preference_dataset(root / "snapshot", n_per_subject=16, n_test_per_subject=4)
    train_reward_model(ds, root / "rm", RewardConfig(epochs=1.0, batch_size=8), base_model=str(tiny_base_path))
    return ds, root / "rm"


@pytest.fixture
def registry(models_dir, tiny_reward_model):
    from feedback.models import DatasetSnapshot
    from rlhf.manifest import artifact_sha256

    services.ensure_initial_versions()
    ds, rm_path = tiny_reward_model
    snap = DatasetSnapshot.objects.create(sha256="0" * 64, path=str(ds), train_rows=64, test_rows=16)
    rm = RewardModelVersion.objects.create(snapshot=snap, status="ready", path=str(rm_path),
                                           sha256=artifact_sha256(rm_path))
    return snap, rm


def _worker(models_dir, tiny_base_path, settings, **extra):
    purge_filesystem_broker()
    env = subprocess_env(TUTOR_MODELS_DIR=str(models_dir), TUTOR_BASE_MODEL=str(tiny_base_path),
                         TRAINING_HEARTBEAT_SECONDS="1", TUTOR_ENDPOINT_URL=settings.TUTOR_ENDPOINT_URL,
                         TUTOR_ENDPOINT_ADMIN_TOKEN=settings.TUTOR_ENDPOINT_ADMIN_TOKEN or "", **extra)
    return start_celery_worker(env)


def _ppo_steps(job: Job) -> int:
    job.refresh_from_db()
    return sum(1 for m in job.metrics if m.get("step") and "policy_loss" in m)


def test_cancel_stops_a_ppo_job_within_one_step(registry, models_dir, tiny_base_path, settings):
    snap, rm = registry
    # every step written at once, so the count read below is the job's real progress
    worker = _worker(models_dir, tiny_base_path, settings, TRAINING_PROGRESS_INTERVAL="0")
    try:
        job = services.create_job("ppo", {"ppo": LONG_PPO, "ppo_prompts": 8, "reward_model_id": rm.pk,
                                          "snapshot_id": snap.pk}, subject="mathematics")
        wait_until(lambda: _ppo_steps(job) >= 2, 180, "two PPO steps")
        services.request_cancel(job)
        at_request = _ppo_steps(job)
        wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, "the job to stop")
        job.refresh_from_db()
        assert job.status == "cancelled", job.error
        # the step running when we asked may finish (and one more if it checked just before our
        # write landed); never more
        assert _ppo_steps(job) <= at_request + 2
        pv = PolicyVersion.objects.get(job=job)
        assert pv.status == "failed"
        assert not (models_dir / "adapters" / "mathematics" / f"v{pv.version}").exists()
    finally:
        worker.stop()


def test_killed_worker_job_is_reaped_and_promoted_version_still_served(endpoint, registry, models_dir,
                                                                       tiny_base_path, settings):
    snap, rm = registry
    settings.TRAINING_JOB_STALE_SECONDS = 3
    worker = _worker(models_dir, tiny_base_path, settings)
    try:
        job = services.create_job("ppo", {"ppo": LONG_PPO, "ppo_prompts": 8, "reward_model_id": rm.pk,
                                          "snapshot_id": snap.pk}, subject="mathematics")
        wait_until(lambda: _ppo_steps(job) >= 1, 180, "a PPO step")
        worker.kill()  # SIGKILL the process group: no cleanup code runs
    finally:
        worker.stop()
    job.refresh_from_db()
    assert job.status == "running"  # nobody told the database
    wait_until(lambda: job.pk in services.reap_dead_jobs(), 30, "the reaper to fail the job")
    job.refresh_from_db()
    pv = PolicyVersion.objects.get(job=job)
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    assert job.status == "failed" and "worker lost" in job.error and job.finished_at <= timezone.now()
    assert pv.status == "failed"
    assert v1.status == "promoted"
    assert not (models_dir / "adapters" / "mathematics" / f"v{pv.version}").exists()
    state = services.get_deployer().state()["mathematics"]
    assert state["promoted"] == 1 and pv.version not in state["loaded"]
    out = endpoint.client().generate(prompt="What is 3 + 4?", subject="mathematics", max_new_tokens=2)
    assert out["outputs"][0]["adapter"]["version"] == 1

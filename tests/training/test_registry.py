"""Registry transactions: promotion, canary, rollback and retirement change the database atomically,
and the database comes first — an unreachable endpoint leaves the deployment pending, never undone."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from serving.deploy.local import LocalDeployer
from tests.fixtures.endpoint import free_port
from tests.training.conftest import make_version, pass_gate
from training import services
from training.models import Deployment, Job, PolicyVersion
from training.services import TrainingError

pytestmark = pytest.mark.django_db


@pytest.fixture
def down():
    """A real local deployer pointed at a port where nothing listens."""
    return LocalDeployer(endpoint_url=f"http://127.0.0.1:{free_port()}", admin_token="x", retries=1, backoff=0.0)


@pytest.fixture
def v1(models_dir):
    services.ensure_initial_versions()
    return PolicyVersion.objects.get(subject="mathematics", version=1)


def test_bootstrap_registers_v1_promoted_once(models_dir):
    created = services.ensure_initial_versions()
    assert {pv.subject for pv in created} == {"history", "mathematics", "language", "general_knowledge"}
    assert all(pv.status == "promoted" and len(pv.sha256) == 64 for pv in created)
    assert services.ensure_initial_versions() == []
    assert services.next_version("mathematics") == 2


def test_promote_is_one_transaction_and_db_comes_first(v1, down):
    v2 = make_version(v1, 2)
    with pytest.raises(TrainingError, match="has not passed the evaluation gate"):
        services.promote(v2, deployer=down)
    pass_gate(v2)
    dep = services.promote(v2, deployer=down, )
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("retired", "promoted")
    assert v2.promoted_at is not None
    # the endpoint is down: the deployment is recorded and pending (the reaper retries it)
    assert dep.status == Deployment.Status.PENDING and dep.attempts >= 1 and dep.error


def test_one_promoted_per_subject_is_enforced_by_the_database(v1):
    v2 = make_version(v1, 2)
    with pytest.raises(IntegrityError), transaction.atomic():
        PolicyVersion.objects.filter(pk=v2.pk).update(status="promoted")


def test_rollback_restores_previous_promoted_and_retires_canary(v1, down):
    v2 = make_version(v1, 2)
    pass_gate(v2)
    services.promote(v2, deployer=down)
    v3 = make_version(v2, 3)
    pass_gate(v3)
    services.start_canary(v3, 0.25, deployer=down)
    assert services.rollback_target("mathematics") == v1
    dep = services.rollback("mathematics", deployer=down)
    statuses = dict(PolicyVersion.objects.filter(subject="mathematics").values_list("version", "status"))
    assert statuses == {1: "promoted", 2: "retired", 3: "retired"}
    assert dep.action == "rollback" and dep.promoted_id == v1.pk and dep.candidate_id is None
    # v2 was rolled back: it is not the next rollback target, and there is none now
    with pytest.raises(TrainingError, match="no earlier promoted version"):
        services.rollback("mathematics", deployer=down)


def test_bad_requests_change_nothing(v1, down):
    v2 = make_version(v1, 2, status="training")
    before = list(PolicyVersion.objects.values_list("pk", "status"))
    for call in (lambda: services.promote(v2, deployer=down), lambda: services.start_canary(v2, 0.1, deployer=down),
                 lambda: services.start_canary(v1, 1.5, deployer=down), lambda: services.retire(v1, deployer=down),
                 lambda: services.rollback("physics", deployer=down), lambda: services.promote(99999)):
        with pytest.raises(TrainingError):
            call()
    assert list(PolicyVersion.objects.values_list("pk", "status")) == before
    assert not Deployment.objects.exclude(action="bootstrap").exists()


def test_a_dead_attempt_leaves_no_half_written_artefact(v1, settings):
    """SIGKILL runs no cleanup: the reaper (and a re-claim of the job) removes what the dead attempt wrote."""
    from django.utils import timezone

    from training.optimise import variant_dir

    settings.TRAINING_JOB_STALE_SECONDS = 5
    old = timezone.now() - timezone.timedelta(seconds=60)
    jobs, dirs = [], []
    for subject, version in (("mathematics", 2), ("history", 2)):
        job = Job.objects.create(kind="optimise", subject=subject, status="running", heartbeat_at=old,
                                 config={"method": "prune", "policy_version_id": v1.pk})
        PolicyVersion.objects.create(subject=subject, version=version, status="training", kind="pruned", job=job,
                                     source=v1, path="")
        d = variant_dir(subject, version, "prune")
        (d / "base").mkdir(parents=True)
        (d / "base" / "model.safetensors").write_bytes(b"half")
        jobs.append(job)
        dirs.append(d)
    assert sorted(services.reap_dead_jobs()) == sorted(j.pk for j in jobs)
    assert not dirs[0].exists() and not dirs[1].exists()
    assert set(PolicyVersion.objects.filter(job__in=jobs).values_list("status", flat=True)) == {"failed"}
    # a re-claimed stale job (its message redelivered before the reaper ran) voids the dead attempt too
    job = Job.objects.create(kind="optimise", subject="language", status="running", heartbeat_at=old,
                             config={"method": "prune", "policy_version_id": v1.pk})
    pv = PolicyVersion.objects.create(subject="language", version=2, status="training", kind="pruned", job=job,
                                      source=v1, path="")
    variant_dir("language", 2, "prune").mkdir(parents=True)
    assert services.claim_job(job.pk, worker="w2") is not None
    pv.refresh_from_db()
    assert pv.status == "failed" and not variant_dir("language", 2, "prune").exists()


def test_cancel_queued_job_and_its_pipeline(models_dir):
    pipeline = Job.objects.create(kind="pipeline", status="running")
    child = services.create_job("ppo", {"x": 1}, subject="history", parent=pipeline, enqueue=False)
    services.request_cancel(pipeline)
    child.refresh_from_db()
    pipeline.refresh_from_db()
    assert child.status == "cancelled" and child.cancel_requested
    assert pipeline.status == "cancelled"
    with pytest.raises(TrainingError, match="already finished"):
        services.request_cancel(child)


def test_reaper_fails_dead_jobs_and_their_versions(v1, settings):
    from django.utils import timezone

    settings.TRAINING_JOB_STALE_SECONDS = 5
    job = Job.objects.create(kind="ppo", subject="mathematics", status="running",
                             heartbeat_at=timezone.now() - timezone.timedelta(seconds=60))
    alive = Job.objects.create(kind="ppo", subject="history", status="running", heartbeat_at=timezone.now())
    pv = PolicyVersion.objects.create(subject="mathematics", version=2, status="training", parent=v1, job=job,
                                      path=str(v1.path) + "-never-written")
    assert services.reap_dead_jobs() == [job.pk]
    job.refresh_from_db()
    pv.refresh_from_db()
    alive.refresh_from_db()
    v1.refresh_from_db()
    assert job.status == "failed" and "worker lost" in job.error
    assert pv.status == "failed"
    assert alive.status == "running"
    assert v1.status == "promoted"
    # a redelivered message for the reaped job is a no-op
    assert services.claim_job(job.pk) is None


def test_job_reporter_throttles_keeps_every_point_and_cancels(models_dir):
    from rlhf.callbacks import Cancelled, make_event

    job = Job.objects.create(kind="ppo", subject="history", status="running")
    rep = services.JobReporter(job, interval=3600)
    for step in range(1, 4):
        rep(make_event(step, 10, f"step {step}", {"reward": step * 0.1}))
    job.refresh_from_db()
    assert len(job.metrics) == 1  # first event written, the next two held back by the throttle
    rep.flush()
    job.refresh_from_db()
    assert [m["reward"] for m in job.metrics] == pytest.approx([0.1, 0.2, 0.3])
    assert job.progress == pytest.approx(0.3)
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    with pytest.raises(Cancelled):
        rep(make_event(4, 10, "step 4", {"reward": 0.4}))
    job.refresh_from_db()
    assert len(job.metrics) == 4  # the last point is flushed before stopping


def test_schedule_trigger_needs_enough_new_pairs_and_never_starts_a_second_pipeline(models_dir):
    from tests.training.conftest import seed_rankings

    pairs = seed_rankings("history", 4)
    assert pairs > 0
    r = services.maybe_trigger_pipeline(pairs + 1)
    assert r.started is None and f"{pairs} new pairs < {pairs + 1}" == r.reason
    r = services.maybe_trigger_pipeline(pairs)
    assert r.started is not None and r.started.kind == "pipeline" and r.started.status == "running"
    snapshot_job = Job.objects.get(parent=r.started)
    assert snapshot_job.kind == "snapshot" and snapshot_job.status == "queued"
    again = services.maybe_trigger_pipeline(1)
    assert again.started is None and "already running" in again.reason
    with pytest.raises(TrainingError, match="still running"):
        services.start_pipeline({})
    assert Job.objects.filter(kind="pipeline").count() == 1

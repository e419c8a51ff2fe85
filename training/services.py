"""Write-side of training/: the registry transactions, deployments, jobs and their runner.

Rules this module keeps (docs/studio.md):

* promotion, canary changes and rollback are one database transaction each; the deployer call comes
  after the commit and is retried until the target's ``state()`` agrees, and a pending deployment is
  re-applied by the periodic reaper, so the endpoint converges on what the database lists;
* a job reports progress through a throttled callback that also heart-beats and checks for
  cancellation; a job whose heartbeat stops (its worker died) is failed by the reaper, with its
  versions, so nothing is left half-done;
* the maths lives in ``rlhf/`` and the serving in ``serving/``: the step functions here only move
  plain arguments (paths, dicts) between the database and those packages.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Max
from django.utils import timezone

from training.models import Deployment, Job, PolicyVersion, RewardModelVersion

log = logging.getLogger(__name__)

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")
LOG_TAIL_CHARS = 8000


class TrainingError(Exception):
    """A request the registry refuses (bad state, unknown version); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ==================================================================================================
# Paths and the registry's bootstrap
# ==================================================================================================


def adapters_root() -> Path:
    return Path(settings.TUTOR_MODELS_DIR) / "adapters"


def reward_root() -> Path:
    return Path(settings.TUTOR_MODELS_DIR) / "reward"


def base_model_path() -> str:
    """The local directory of the base model (``TUTOR_BASE_MODEL``; "demo" builds/reuses the demo model)."""
    from rlhf.models import resolve_base_path

    return str(resolve_base_path(settings.TUTOR_BASE_MODEL))


def version_base_path(pv: PolicyVersion) -> str:
    """The base a version's adapter runs on: its own (a quantised, pruned or distilled variant's) or the default."""
    return pv.base_path or base_model_path()


def next_version(subject: str) -> int:
    """One more than any version of ``subject`` in the database or on disk (never reuse a number)."""
    in_db = PolicyVersion.objects.filter(subject=subject).aggregate(m=Max("version"))["m"] or 0
    on_disk = 0
    root = adapters_root() / subject
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("v") and p.name[1:].isdigit():
                on_disk = max(on_disk, int(p.name[1:]))
    return max(in_db, on_disk) + 1


def ensure_initial_versions() -> list[PolicyVersion]:
    """Register v1 of each subject (the SFT adapter the endpoint serves at start) as promoted.

    Idempotent; subjects that already have versions, or no v1 on disk, are left alone.
    """
    from rlhf.manifest import ArtifactError, artifact_sha256, read_manifest

    created = []
    # one query on every studio page load (was one per subject): the subjects that already have versions
    present = set(PolicyVersion.objects.filter(subject__in=SUBJECTS).order_by().values_list("subject", flat=True)
                  .distinct())
    for subject in SUBJECTS:
        if subject in present:
            continue
        path = adapters_root() / subject / "v1"
        if not (path / "manifest.json").is_file():
            continue
        try:
            sha = artifact_sha256(path)
            manifest = read_manifest(path)
        except ArtifactError as exc:
            log.warning("v1 of %s is not a valid artefact: %s", subject, exc)
            continue
        with transaction.atomic():
            if PolicyVersion.objects.filter(subject=subject).exists():
                continue
            pv = PolicyVersion.objects.create(
                subject=subject, version=1, method=manifest.get("method", "lora"), status=PolicyVersion.Status.PROMOTED,
                path=str(path), sha256=sha, metrics=manifest.get("metrics") or {}, note="initial SFT adapter",
                promoted_at=timezone.now())
            Deployment.objects.create(subject=subject, target=settings.TUTOR_DEPLOY_TARGET,
                                      action=Deployment.Action.BOOTSTRAP, promoted=pv,
                                      status=Deployment.Status.APPLIED, applied_at=timezone.now())
        created.append(pv)
    return created


# ==================================================================================================
# Deployments: DB first, then the deployer until state() agrees
# ==================================================================================================


def get_deployer():
    """The configured ``serving.deploy`` deployer (local endpoint or SageMaker)."""
    from serving.deploy import get_deployer as _get
    from serving.deploy import options_from_settings

    options = options_from_settings(settings)
    if settings.TUTOR_DEPLOY_TARGET == "local" and not options.get("admin_token"):
        from tutor.endpoint import _admin_token  # the token the local endpoint wrote under var/

        options["admin_token"] = _admin_token()
    return _get(settings.TUTOR_DEPLOY_TARGET, **options)


def _agrees(state: dict, dep: Deployment) -> bool:
    s = state.get(dep.subject) or {}
    want_candidate = dep.candidate.version if dep.candidate_id else None
    if s.get("promoted") != dep.promoted.version or s.get("candidate") != want_candidate:
        return False
    return want_candidate is None or abs(float(s.get("share") or 0.0) - dep.candidate_share) < 1e-6


def apply_deployment(dep: Deployment, deployer=None, attempts: int | None = None, backoff: float = 0.5) -> Deployment:
    """Make the target serve what ``dep`` says; retried (idempotent calls) until ``state()`` agrees.

    On failure the deployment stays ``pending`` (the reaper retries it) unless it was superseded.
    """
    attempts = attempts or settings.TRAINING_DEPLOY_ATTEMPTS
    last_error = ""
    for attempt in range(1, attempts + 1):
        dep.attempts += 1
        record: dict[str, Any] = {"attempt": dep.attempts, "at": timezone.now().isoformat()}
        step = "configure"
        try:
            deployer = deployer or get_deployer()
            for pv in (dep.promoted, dep.candidate):
                if pv is not None:
                    step = f"publish_v{pv.version}"
                    extra = {"base_path": pv.base_path} if pv.base_path else {}  # a variant on its own base
                    record[step] = deployer.publish(dep.subject, pv.version, pv.path, pv.sha256, **extra)
            step = "set_traffic"
            record[step] = deployer.set_traffic(
                dep.subject, dep.promoted.version, dep.candidate.version if dep.candidate_id else None,
                dep.candidate_share if dep.candidate_id else 0.0)
            step = "state"
            state = deployer.state()
            record["state"] = state.get(dep.subject)
            if isinstance(getattr(deployer, "calls", None), list):  # SageMaker: the reads behind state()
                record["state_aws_calls"] = list(deployer.calls)
            if _agrees(state, dep):
                dep.status, dep.applied_at, dep.error = Deployment.Status.APPLIED, timezone.now(), ""
                dep.detail = (dep.detail or [])[-9:] + [record]
                dep.save(update_fields=["status", "applied_at", "error", "detail", "attempts"])
                return dep
            last_error = f"target state {state.get(dep.subject)} does not match the deployment yet"
        except Exception as exc:  # DeployError, connection errors: retry, then leave pending
            last_error = f"{type(exc).__name__}: {exc}"
            record["failed_step"] = step
            # the AWS calls of the failed step, up to the one that failed (shown on the job)
            record["aws_calls"] = list((getattr(exc, "details", None) or {}).get("aws_calls") or [])
        record["error"] = last_error
        dep.detail = (dep.detail or [])[-9:] + [record]
        if attempt < attempts:
            time.sleep(backoff * attempt)
    dep.error = last_error
    dep.save(update_fields=["error", "detail", "attempts"])
    return dep


def _lock_version(version: PolicyVersion | int) -> PolicyVersion:
    """Lock a version and its subject's versions (inside a transaction); 404 when it does not exist."""
    pv_id = version.pk if isinstance(version, PolicyVersion) else int(version)
    pv = PolicyVersion.objects.select_for_update().filter(pk=pv_id).first()
    if pv is None:
        raise TrainingError(f"policy version {pv_id} does not exist", 404)
    _lock_subject(pv.subject)
    return pv


def _lock_subject(subject: str) -> list[PolicyVersion]:
    """Lock the subject's versions for the rest of the transaction (PostgreSQL; SQLite is serialised)."""
    return list(PolicyVersion.objects.select_for_update().filter(subject=subject).order_by("version"))


def current_promoted(subject: str) -> PolicyVersion | None:
    return PolicyVersion.objects.filter(subject=subject, status=PolicyVersion.Status.PROMOTED).first()


def _record(subject: str, action: str, promoted: PolicyVersion, candidate: PolicyVersion | None = None,
            share: float = 0.0, user=None, job: Job | None = None) -> Deployment:
    # an older pending deployment of the subject is superseded by this one
    Deployment.objects.filter(subject=subject, status=Deployment.Status.PENDING).update(
        status=Deployment.Status.FAILED, error="superseded by a newer deployment")
    return Deployment.objects.create(subject=subject, target=settings.TUTOR_DEPLOY_TARGET, action=action,
                                     promoted=promoted, candidate=candidate, candidate_share=share,
                                     created_by=user if getattr(user, "pk", None) else None, job=job)


def release_retired_variants(subject: str, deployer=None) -> list[int]:
    """Unload the subject's retired variants that run on a base of their own: each holds an endpoint process
    (~430 MB on the demo model, docs/optimise.md) that nothing routes to any more. A variant the deployer
    confirms unloaded (or never loaded) gets ``released_at`` and is not asked about again (each ask lists the
    endpoint, and retired variants only accumulate); it is cleared when the variant is promoted again. Best
    effort: a failure is logged and retried by the next promote / retire / rollback of the subject."""
    released = []
    for pv in PolicyVersion.objects.filter(subject=subject, status=PolicyVersion.Status.RETIRED,
                                           released_at__isnull=True).exclude(base_path=""):
        try:
            deployer = deployer or get_deployer()
            if deployer.unpublish(subject, pv.version).get("action") == "unloaded":
                released.append(pv.version)
        except Exception as exc:  # DeployError, connection errors: the routing change itself stands
            log.warning("could not unload retired variant %s: %s", pv, exc)
            continue
        # only while still retired: a promote that raced this call loaded it again
        PolicyVersion.objects.filter(pk=pv.pk, status=PolicyVersion.Status.RETIRED).update(
            released_at=timezone.now())
    return released


def _passed_gate(pv: PolicyVersion) -> bool:
    report = pv.evaluations.order_by("-id").first()
    return bool(report and report.passed)


def promote(version: PolicyVersion | int, user=None, job: Job | None = None, deployer=None,
            require_gate: bool = True, canary_reason: str = "") -> Deployment:
    """Make ``version`` the subject's promoted version (100 % of traffic) in one transaction (which also closes
    the subject's canary bake: ``canary_reason`` from the watch, else "promoted by an admin")."""
    from training import canary

    with transaction.atomic():
        pv = _lock_version(version)
        if pv.status == PolicyVersion.Status.PROMOTED:
            raise TrainingError(f"{pv} is already promoted", 409)
        if pv.status in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.FAILED):
            raise TrainingError(f"{pv} is {pv.status}: only a trained version can be promoted", 409)
        if pv.status in (PolicyVersion.Status.CANDIDATE, PolicyVersion.Status.CANARY) and require_gate \
                and not _passed_gate(pv):
            raise TrainingError(f"{pv} has not passed the evaluation gate", 409)
        if pv.status == PolicyVersion.Status.RETIRED and pv.promoted_at is None:
            raise TrainingError(f"{pv} was retired without ever being promoted; evaluate it again first", 409)
        now = timezone.now()
        PolicyVersion.objects.filter(subject=pv.subject, status__in=[PolicyVersion.Status.PROMOTED,
                                                                     PolicyVersion.Status.CANARY]).exclude(
            pk=pv.pk).update(status=PolicyVersion.Status.RETIRED)
        pv.status, pv.promoted_at, pv.released_at = PolicyVersion.Status.PROMOTED, now, None
        pv.save(update_fields=["status", "promoted_at", "released_at"])
        canary.end_watches(pv.subject, "promoted", canary_reason or f"{pv} promoted by an admin", user=user,
                           candidate=pv)
        canary.end_watches(pv.subject, "ended", f"{pv} was promoted instead", user=user)
        dep = _record(pv.subject, Deployment.Action.PROMOTE, pv, user=user, job=job)
    dep = apply_deployment(dep, deployer)
    if dep.status == Deployment.Status.APPLIED:
        release_retired_variants(dep.subject, deployer)
    return dep


def start_canary(version: PolicyVersion | int, share: float | None = None, user=None, job: Job | None = None,
                 deployer=None, bake: dict | None = None, auto_promote: bool | None = None) -> Deployment:
    """Serve a gate-passing candidate to ``share`` of the subject's traffic (sticky per conversation), and start
    its bake (``training.canary``): the canary watch promotes or rolls it back when the bake ends."""
    from training import canary

    share = settings.TRAINING_CANARY_SHARE if share is None else float(share)
    if not 0.0 < share < 1.0:
        raise TrainingError(f"canary share must be between 0 and 1 (exclusive), got {share}")
    try:
        bake_cfg = canary.BakeConfig.from_dict(bake)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid canary bake: {exc}") from None
    with transaction.atomic():
        pv = _lock_version(version)
        if pv.status not in (PolicyVersion.Status.CANDIDATE, PolicyVersion.Status.CANARY):
            raise TrainingError(f"{pv} is {pv.status}: only a candidate can go to canary", 409)
        if not _passed_gate(pv):
            raise TrainingError(f"{pv} has not passed the evaluation gate", 409)
        promoted = current_promoted(pv.subject)
        if promoted is None:
            raise TrainingError(f"{pv.subject} has no promoted version to share traffic with; promote instead", 409)
        PolicyVersion.objects.filter(subject=pv.subject, status=PolicyVersion.Status.CANARY).exclude(
            pk=pv.pk).update(status=PolicyVersion.Status.RETIRED)
        pv.status = PolicyVersion.Status.CANARY
        pv.save(update_fields=["status"])
        canary.open_watch(pv, promoted, share, bake_cfg, auto_promote=auto_promote, job=job,
                          pipeline=job.parent if job is not None and job.parent_id else None)
        dep = _record(pv.subject, Deployment.Action.CANARY, promoted, pv, share, user=user, job=job)
    return apply_deployment(dep, deployer)


def retire(version: PolicyVersion | int, user=None, note: str = "", deployer=None,
           canary_reason: str = "") -> PolicyVersion:
    """Take a candidate or canary out of the running (a canary's traffic returns to the promoted version; its
    bake closes as rolled back, with ``canary_reason`` from the watch or the admin's note)."""
    from training import canary

    dep = None
    with transaction.atomic():
        pv = _lock_version(version)
        if pv.status not in (PolicyVersion.Status.CANDIDATE, PolicyVersion.Status.CANARY):
            raise TrainingError(f"{pv} is {pv.status}: only a candidate or canary can be retired", 409)
        was_canary = pv.status == PolicyVersion.Status.CANARY
        pv.status = PolicyVersion.Status.RETIRED
        pv.note = (note or pv.note)[:300]
        pv.save(update_fields=["status", "note"])
        if was_canary:
            canary.end_watches(pv.subject, "rolled_back", canary_reason or note or "rolled back by an admin",
                               user=user, candidate=pv)
        promoted = current_promoted(pv.subject)
        if was_canary and promoted is not None:
            dep = _record(pv.subject, Deployment.Action.RETIRE, promoted, user=user)
    if dep is not None:
        dep = apply_deployment(dep, deployer)
    if dep is None or dep.status == Deployment.Status.APPLIED:
        release_retired_variants(pv.subject, deployer)
    return pv


def rollback_target(subject: str) -> PolicyVersion | None:
    """The version promoted before the current one (the most recently promoted retired version)."""
    current = current_promoted(subject)
    qs = PolicyVersion.objects.filter(subject=subject, status=PolicyVersion.Status.RETIRED,
                                      promoted_at__isnull=False)
    if current is not None:
        qs = qs.exclude(pk=current.pk)
    return qs.order_by("-promoted_at", "-version").first()


def rollback(subject: str, user=None, deployer=None) -> Deployment:
    """One click: the previous promoted version serves 100 % again; the current one (and any canary) retire."""
    from training import canary

    if subject not in SUBJECTS:
        raise TrainingError(f"unknown subject {subject!r}")
    with transaction.atomic():
        _lock_subject(subject)
        current = current_promoted(subject)
        target = rollback_target(subject)
        if current is None or target is None:
            raise TrainingError(f"{subject} has no earlier promoted version to roll back to", 409)
        canary.end_watches(subject, "rolled_back", f"{subject} rolled back to v{target.version} by an admin",
                           user=user)
        PolicyVersion.objects.filter(subject=subject, status__in=[PolicyVersion.Status.PROMOTED,
                                                                  PolicyVersion.Status.CANARY]).update(
            status=PolicyVersion.Status.RETIRED)
        PolicyVersion.objects.filter(pk=current.pk).update(note=f"rolled back to v{target.version}")
        # the rolled-back version must not be the next rollback target: clear its promotion time
        PolicyVersion.objects.filter(pk=current.pk).update(promoted_at=None)
        target.status, target.promoted_at, target.released_at = PolicyVersion.Status.PROMOTED, timezone.now(), None
        target.save(update_fields=["status", "promoted_at", "released_at"])
        dep = _record(subject, Deployment.Action.ROLLBACK, target, user=user)
    dep = apply_deployment(dep, deployer)
    if dep.status == Deployment.Status.APPLIED:
        release_retired_variants(subject, deployer)
    return dep


def reconcile_deployments(deployer=None) -> dict[str, str]:
    """Re-apply each subject's latest deployment when it is pending or the target drifted (e.g. a restart)."""
    out: dict[str, str] = {}
    latest: dict[str, Deployment] = {}
    for dep in Deployment.objects.exclude(status=Deployment.Status.FAILED).select_related("promoted", "candidate"):
        latest.setdefault(dep.subject, dep)
    if not latest:
        return out
    try:
        deployer = deployer or get_deployer()
        state = deployer.state()
    except Exception as exc:
        return {s: f"target unreachable: {exc}" for s in latest}
    for subject, dep in latest.items():
        if dep.status == Deployment.Status.APPLIED and _agrees(state, dep):
            out[subject] = "ok"
            continue
        if dep.action == Deployment.Action.BOOTSTRAP and not (state.get(subject) or {}).get("loaded"):
            out[subject] = "endpoint has no adapter for the subject yet"
            continue
        apply_deployment(dep, deployer, attempts=1)
        out[subject] = dep.status
    return out


# ==================================================================================================
# Jobs: creation, cancellation, the runner, heartbeat, reaper
# ==================================================================================================


def create_job(kind: str, config: dict | None = None, *, subject: str = "", parent: Job | None = None,
               user=None, enqueue: bool = True) -> Job:
    """Record a job and (after the commit) send its Celery task."""
    if kind not in Job.Kind.values:
        raise TrainingError(f"unknown job kind {kind!r}")
    if subject and subject not in SUBJECTS:
        raise TrainingError(f"unknown subject {subject!r}")
    job = Job.objects.create(kind=kind, config=config or {}, subject=subject, parent=parent,
                             launched_by=user if getattr(user, "pk", None) else None)
    if enqueue and kind != Job.Kind.PIPELINE:
        transaction.on_commit(lambda: _enqueue(job.pk))
    return job


INLINE = threading.local()  # set by pipeline.run_inline: children run in this process, not via the broker


def _enqueue(job_id: int) -> None:
    if getattr(INLINE, "active", False):
        return
    from training.tasks import run_job

    result = run_job.delay(job_id)
    Job.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id or "")


def request_cancel(job: Job | int) -> Job:
    """Ask a job (and a pipeline's children) to stop; a queued job is cancelled at once."""
    job_id = job.pk if isinstance(job, Job) else int(job)
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            raise TrainingError(f"job {job_id} does not exist", 404)
        if job.is_terminal:
            raise TrainingError(f"{job} has already finished", 409)
        ids = [job.pk] + list(Job.objects.filter(parent=job).exclude(status__in=Job.TERMINAL).values_list("pk", flat=True))
        Job.objects.filter(pk__in=ids).update(cancel_requested=True)
        now = timezone.now()
        Job.objects.filter(pk__in=ids, status=Job.Status.QUEUED).update(
            status=Job.Status.CANCELLED, finished_at=now, message="cancelled before it started")
        if job.kind == Job.Kind.PIPELINE:
            Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED, finished_at=now,
                                                 message="cancelled by an admin")
        _fail_versions_of(ids, PolicyVersion.Status.FAILED, "job cancelled", only_queued=True)
    job.refresh_from_db()
    return job


def _fail_versions_of(job_ids: list[int], status: str, note: str, only_queued: bool = False) -> None:
    qs_jobs = Job.objects.filter(pk__in=job_ids)
    if only_queued:
        qs_jobs = qs_jobs.filter(status=Job.Status.CANCELLED)
    ids = list(qs_jobs.values_list("pk", flat=True))
    PolicyVersion.objects.filter(job_id__in=ids, status=PolicyVersion.Status.TRAINING).update(status=status, note=note)
    RewardModelVersion.objects.filter(job_id__in=ids, status=RewardModelVersion.Status.TRAINING).update(
        status=RewardModelVersion.Status.FAILED)


class JobCancelled(Exception):  # noqa: N818 - a control-flow signal, like rlhf's Cancelled
    pass


class JobReporter:
    """The callback a trainer gets: throttled progress/metrics writes, heartbeat, cancellation.

    Every event's metrics are kept (the curves need every step); the database write happens at most
    every ``interval`` seconds, and always for the last step. ``Cancelled`` is raised from the callback
    when an admin asked to cancel, so the trainer stops between steps and removes partial output.
    """

    def __init__(self, job: Job, interval: float = 1.0, offset: float = 0.0, scale: float = 1.0,
                 prefix: str = ""):
        self.job_id = job.pk
        self.interval = interval
        self.offset, self.scale, self.prefix = offset, scale, prefix
        self.pending: list[dict] = []
        self.last_write = float("-inf")  # the first event is written at once
        self.progress = job.progress
        self.message = job.message

    def __call__(self, event: dict[str, Any]) -> None:
        from rlhf.callbacks import Cancelled

        self.progress = min(1.0, self.offset + self.scale * float(event.get("progress") or 0.0))
        self.message = (self.prefix + str(event.get("message") or ""))[:300]
        metrics = event.get("metrics") or {}
        if metrics:
            row = {"step": event.get("step"), "phase": self.prefix.strip(": ") or None, **{
                k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool) or v is None}}
            self.pending.append(row)
        now = time.monotonic()
        last = event.get("total") and event.get("step") == event.get("total")
        if now - self.last_write >= self.interval or last:
            self.flush()
        if Job.objects.filter(pk=self.job_id, cancel_requested=True).exists():
            self.flush()
            raise Cancelled(f"job {self.job_id} cancelled by an admin")

    def flush(self) -> None:
        job = Job.objects.only("metrics", "log").get(pk=self.job_id)
        series = list(job.metrics or []) + self.pending
        line = f"[{timezone.now():%H:%M:%S}] {self.message}"
        log_tail = ((job.log + "\n" if job.log else "") + line)[-LOG_TAIL_CHARS:]
        Job.objects.filter(pk=self.job_id).update(progress=round(self.progress, 4), message=self.message,
                                                  metrics=series[-2000:], log=log_tail, heartbeat_at=timezone.now())
        self.pending = []
        self.last_write = time.monotonic()

    def log(self, text: str) -> None:
        job = Job.objects.only("log").get(pk=self.job_id)
        line = f"[{timezone.now():%H:%M:%S}] {text}"
        Job.objects.filter(pk=self.job_id).update(log=((job.log + "\n" if job.log else "") + line)[-LOG_TAIL_CHARS:])


class Heartbeat:
    """A thread that stamps ``heartbeat_at`` while a job runs (model loading sends no events)."""

    def __init__(self, job_id: int, interval: float):
        self.job_id, self.interval = job_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def claim_job(job_id: int, worker: str = "") -> Job | None:
    """queued → running, exactly once. A redelivered message for a job that runs, ran or was reaped is a no-op."""
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=settings.TRAINING_JOB_STALE_SECONDS)
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_terminal:
            return None
        if job.status == Job.Status.RUNNING and job.heartbeat_at and job.heartbeat_at > stale:
            return None  # alive elsewhere
        if job.status == Job.Status.RUNNING:  # re-claimed after its worker died: that attempt's output is void
            _fail_dead_attempt(job, "its job's previous attempt died with its worker")
        if job.cancel_requested:
            Job.objects.filter(pk=job_id).update(status=Job.Status.CANCELLED, finished_at=now)
            return None
        job.status, job.started_at, job.heartbeat_at = Job.Status.RUNNING, now, now
        job.worker, job.attempts, job.error = worker[:200], job.attempts + 1, ""
        job.save(update_fields=["status", "started_at", "heartbeat_at", "worker", "attempts", "error"])
    return job


def finish_job(job: Job, status: str, *, result: dict | None = None, error: str = "", message: str = "") -> None:
    """Move a running job to a terminal state (never overwrite one the reaper already set)."""
    fields: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "heartbeat_at": timezone.now()}
    if result is not None:
        fields["result"] = result
    if error:
        fields["error"] = error[-4000:]
    if message:
        fields["message"] = message[:300]
    if status == Job.Status.SUCCEEDED:
        fields["progress"] = 1.0
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(**fields)
    if status != Job.Status.SUCCEEDED:
        PolicyVersion.objects.filter(job=job, status=PolicyVersion.Status.TRAINING).update(
            status=PolicyVersion.Status.FAILED, note=(message or error or status)[:300])
        RewardModelVersion.objects.filter(job=job, status=RewardModelVersion.Status.TRAINING).update(
            status=RewardModelVersion.Status.FAILED)


def execute_job(job_id: int, worker: str = "") -> str:
    """Run one job to a terminal state (called by the Celery task); then advance its pipeline."""
    from rlhf.callbacks import Cancelled
    from training import pipeline

    job = claim_job(job_id, worker)
    if job is None:
        return "skipped"
    reporter = JobReporter(job, interval=settings.TRAINING_PROGRESS_INTERVAL)
    status = Job.Status.FAILED
    try:
        with Heartbeat(job.pk, settings.TRAINING_HEARTBEAT_SECONDS):
            step: Callable[[Job, JobReporter], dict] = pipeline.STEPS[job.kind]
            reporter.log(f"{job.kind} started on {worker or 'this process'}")
            result = step(job, reporter)
            reporter.flush()
            reporter.log(f"{job.kind} succeeded")
            finish_job(job, Job.Status.SUCCEEDED, result=result, message="done")
            status = Job.Status.SUCCEEDED
    except (Cancelled, JobCancelled) as exc:
        reporter.log(f"cancelled: {exc}")
        finish_job(job, Job.Status.CANCELLED, message="cancelled")
        status = Job.Status.CANCELLED
    except Exception as exc:
        log.exception("job %s failed", job.pk)
        reporter.log(f"failed: {type(exc).__name__}: {exc}")
        finish_job(job, Job.Status.FAILED, error=f"{type(exc).__name__}: {exc}", message=f"failed: {exc}"[:300])
    finally:
        close_old_connections()
    if job.parent_id:
        pipeline.advance(job.parent_id)
    return status


def partial_output_dirs(job: Job, pv: PolicyVersion) -> list[Path]:
    """Where a job that died mid-step may have left `pv`'s half-made artefacts (under the models dir only)."""
    root = Path(settings.TUTOR_MODELS_DIR).resolve()
    dirs = [Path(pv.path)] if pv.path else []
    if job.kind == Job.Kind.OPTIMISE:
        from training.optimise import variant_dir

        dirs.append(variant_dir(pv.subject, pv.version, str(job.config.get("method", ""))))
    return [d for d in dirs if d.resolve() != root and root in d.resolve().parents]


def _fail_dead_attempt(job: Job, note: str) -> None:
    """Fail the versions a dead attempt of `job` was making, and remove what it half-wrote: a SIGKILLed worker
    runs no cleanup (`removing_partial` covers exceptions and cancels only)."""
    for pv in PolicyVersion.objects.filter(job=job, status=PolicyVersion.Status.TRAINING):
        for d in partial_output_dirs(job, pv):
            shutil.rmtree(d, ignore_errors=True)
    PolicyVersion.objects.filter(job=job, status=PolicyVersion.Status.TRAINING).update(
        status=PolicyVersion.Status.FAILED, note=note)
    RewardModelVersion.objects.filter(job=job, status=RewardModelVersion.Status.TRAINING).update(
        status=RewardModelVersion.Status.FAILED)


def reap_dead_jobs() -> list[int]:
    """Fail running jobs whose heartbeat stopped (their worker died), and their versions; advance pipelines."""
    from training import pipeline

    stale = timezone.now() - timezone.timedelta(seconds=settings.TRAINING_JOB_STALE_SECONDS)
    dead = list(Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=stale)
                .exclude(kind=Job.Kind.PIPELINE))
    reaped = []
    for job in dead:
        with transaction.atomic():
            n = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, heartbeat_at__lt=stale).update(
                status=Job.Status.FAILED, finished_at=timezone.now(),
                error="worker lost: no heartbeat since " + job.heartbeat_at.isoformat(),
                message="failed: the worker running this job died")
            if n:
                _fail_dead_attempt(job, "its job's worker died")
                reaped.append(job.pk)
    for job in dead:
        if job.pk in reaped and job.parent_id:
            pipeline.advance(job.parent_id)
    return reaped


# ==================================================================================================
# Pipelines and the schedule
# ==================================================================================================


@dataclass
class TriggerResult:
    started: Job | None
    reason: str


def running_pipeline() -> Job | None:
    return Job.objects.filter(kind=Job.Kind.PIPELINE).exclude(status__in=Job.TERMINAL).first()


def start_pipeline(config: dict | None = None, user=None) -> Job:
    """Start the whole loop (snapshot → reward model → PPO per subject → evaluate → deploy)."""
    from training import pipeline

    config = pipeline.validate_pipeline_config(config or {})
    schedule_task()
    with transaction.atomic():
        # the schedule's row is the mutex: two triggers at once cannot both see "none running" (PostgreSQL)
        from django_celery_beat.models import PeriodicTask

        PeriodicTask.objects.select_for_update().filter(name=SCHEDULE_NAME).first()
        if running_pipeline() is not None:
            raise TrainingError(f"{running_pipeline()} is still running; cancel it or wait", 409)
        job = create_job(Job.Kind.PIPELINE, config, user=user)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now(),
                                             heartbeat_at=timezone.now(), message="starting")
    pipeline.advance(job.pk)
    job.refresh_from_db()
    return job


def maybe_trigger_pipeline(min_new_pairs: int | None = None, config: dict | None = None) -> TriggerResult:
    """The schedule's body: start a pipeline when ≥ N new pairs exist and none is running.

    New pairs: the labelers' since the last snapshot, plus the students' implicit pairs (thumbs,
    regenerations) newer than its watermark, each counted at its (lower) training weight.
    """
    from feedback.selectors import latest_snapshot, new_implicit_pairs, new_pairs_count

    threshold = settings.TRAINING_MIN_NEW_PAIRS if min_new_pairs is None else int(min_new_pairs)
    if running_pipeline() is not None:
        return TriggerResult(None, "a pipeline is already running")
    last = latest_snapshot()
    since = last.last_ranking_id if last is not None else None
    labeled = new_pairs_count(since)
    implicit, weight = new_implicit_pairs(last)
    n = labeled + weight
    what = f"{n:g} new pairs" + (f" ({labeled} from labelers, {implicit} from students' feedback weighing "
                                 f"{weight:g})" if implicit else "")
    if n < threshold:
        return TriggerResult(None, f"{what} < {threshold}")
    try:
        job = start_pipeline(config)
    except TrainingError as exc:
        return TriggerResult(None, str(exc))
    return TriggerResult(job, f"{what} >= {threshold}")


# ==================================================================================================
# The schedule (a django-celery-beat PeriodicTask admins edit in the studio)
# ==================================================================================================

SCHEDULE_NAME = "training: retraining schedule"
REAPER_NAME = "training: reaper"


def schedule_task():
    """The pipeline trigger's PeriodicTask (created if a database predates the data migration)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    task = PeriodicTask.objects.filter(name=SCHEDULE_NAME).first()
    if task is None:
        every, _ = IntervalSchedule.objects.get_or_create(every=settings.TRAINING_SCHEDULE_SECONDS,
                                                          period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.create(name=SCHEDULE_NAME, task="training.trigger_pipeline", interval=every,
                                           kwargs="{}", enabled=True)
    return task


def update_schedule(*, enabled: bool, every_seconds: int, min_new_pairs: int | None = None,
                    config: dict | None = None):
    """Edit the trigger: on/off, how often beat checks, the new-pairs threshold, the pipeline config."""
    import json

    from django_celery_beat.models import IntervalSchedule

    if int(every_seconds) < 1:
        raise TrainingError("the interval must be at least 1 second")
    if min_new_pairs is not None and int(min_new_pairs) < 1:
        raise TrainingError("the threshold must be at least 1 pair")
    if config:
        from training.pipeline import validate_pipeline_config

        validate_pipeline_config(config)  # refuse a bad config now, not at 3 a.m.
    with transaction.atomic():
        task = schedule_task()
        every, _ = IntervalSchedule.objects.get_or_create(every=int(every_seconds), period=IntervalSchedule.SECONDS)
        kwargs: dict[str, Any] = {}
        if min_new_pairs is not None:
            kwargs["min_new_pairs"] = int(min_new_pairs)
        if config:
            kwargs["config"] = config
        task.interval, task.crontab, task.enabled, task.kwargs = every, None, bool(enabled), json.dumps(kwargs)
        # a trigger that waited longer than one interval (workers busy training) is dropped, not piled up
        task.expire_seconds = max(int(every_seconds), 5)
        task.save()  # the model's signal bumps PeriodicTasks so a running beat reloads
    return task


def retry_job(job: Job | int, user=None) -> Job:
    """Run a failed or cancelled step again as a new job with the same config (a new version number)."""
    job = job if isinstance(job, Job) else Job.objects.get(pk=int(job))
    if job.kind == Job.Kind.PIPELINE:
        return start_pipeline({k: v for k, v in job.config.items()}, user=user)
    if job.status not in (Job.Status.FAILED, Job.Status.CANCELLED):
        raise TrainingError(f"{job} has not failed; only failed or cancelled jobs are retried", 409)
    return create_job(job.kind, job.config, subject=job.subject, user=user)


def launch_step(kind: str, *, subject: str = "", config: dict | None = None, user=None) -> Job:
    """Launch one step by hand (studio forms, API): validated against its dataclass before it is queued."""
    from training import pipeline

    config = dict(config or {})
    if kind == Job.Kind.PIPELINE:
        return start_pipeline(config, user=user)
    needs = {Job.Kind.REWARD_MODEL: ["snapshot_id"], Job.Kind.PPO: ["reward_model_id"],
             Job.Kind.EVALUATE: ["policy_version_id"], Job.Kind.DEPLOY: ["policy_version_id"],
             Job.Kind.BENCHMARKS: ["policy_version_id"]}.get(kind, [])
    missing = [k for k in needs if not config.get(k)]
    if missing:
        raise TrainingError(f"a {kind} job needs {', '.join(missing)}")
    if kind == Job.Kind.PPO and not subject:
        raise TrainingError("a PPO job needs a subject")
    base = pipeline.default_pipeline_config()
    sections = {k: v for k, v in config.items() if k in base}
    ids = {k: v for k, v in config.items() if k not in base}
    full = pipeline.validate_pipeline_config(sections)
    if kind in (Job.Kind.EVALUATE, Job.Kind.DEPLOY, Job.Kind.BENCHMARKS):
        pv = PolicyVersion.objects.filter(pk=ids["policy_version_id"]).first()
        if pv is None:
            raise TrainingError(f"policy version {ids['policy_version_id']} does not exist", 404)
        subject = pv.subject
    with transaction.atomic():
        job = create_job(kind, {**full, **ids}, subject=subject, user=user)
    return job


def launch_report_card(version: PolicyVersion | int, *, suites: Any = "all", limit: Any = None, seed: Any = 0,
                       user=None) -> Job:
    """Run the report card (``rlhf.evals``) of any version on demand as a ``benchmarks`` job (checked first)."""
    from training.benchmarks import launch_report_card as _launch

    return _launch(version, suites=suites, limit=limit, seed=seed, user=user)

"""The canary that watches: a bake period in which the canary's live signals are compared with the promoted
version's on the same subject, then promote or roll back (docs/studio.md, "The canary's bake").

Signals, per version, over the tutor answers written since the canary started (``Message.adapter_version``
records which version wrote each answer):

* thumbs-down rate — answers with a student's thumbs-down / answers;
* regeneration rate — answers the student replaced by regenerating / answers;
* error rate — answers saved with an endpoint error (the stream broke off) / answers;
* latency — the median of ``Message.latency_ms`` (endpoint call to the whole answer).

The verdict, once the bake has lasted ``min_seconds`` *and* the canary wrote ``min_answers`` answers (or
``max_seconds`` passed, when set): roll back when any rate is worse than the promoted version's by more than
its margin, or the median latency by more than ``latency`` × the promoted one's; promote otherwise. Nothing
is decided before the bake ends. Decisions go through ``services.promote`` / ``services.retire`` (one
transaction each, which also closes this watch), and the pipeline that started the canary is advanced.

Time is an argument (``now``) everywhere, so tests drive the clock without sleeping.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import CanaryWatch, PolicyVersion

log = logging.getLogger(__name__)

WATCH_TASK_NAME = "training: canary watch"
RATE_SIGNALS = ("thumbs_down", "regeneration", "errors")


@dataclass(frozen=True)
class BakeConfig:
    """How long a canary bakes and how much worse than the promoted version it may be."""

    min_seconds: float = 300.0
    min_answers: int = 20
    max_seconds: float = 600.0  # 0: wait for min_answers for ever
    margins: dict[str, float] = field(default_factory=lambda: {
        "thumbs_down": 0.05, "regeneration": 0.05, "errors": 0.02, "latency": 0.5})

    @classmethod
    def defaults(cls) -> BakeConfig:
        return cls(min_seconds=settings.TRAINING_CANARY_MIN_SECONDS, min_answers=settings.TRAINING_CANARY_MIN_ANSWERS,
                   max_seconds=settings.TRAINING_CANARY_MAX_SECONDS, margins={
                       "thumbs_down": settings.TRAINING_CANARY_MARGIN_THUMBS_DOWN,
                       "regeneration": settings.TRAINING_CANARY_MARGIN_REGENERATION,
                       "errors": settings.TRAINING_CANARY_MARGIN_ERRORS,
                       "latency": settings.TRAINING_CANARY_MARGIN_LATENCY})

    @classmethod
    def from_dict(cls, data: dict | None) -> BakeConfig:
        """Defaults overlaid with ``data``; ``ValueError`` on unknown fields or out-of-range values."""
        base = cls.defaults()
        data = dict(data or {})
        unknown = set(data) - {"min_seconds", "min_answers", "max_seconds", "margins"}
        if unknown:
            raise ValueError(f"unknown canary field(s) {', '.join(sorted(unknown))}")
        margins = dict(base.margins)
        extra = set(data.get("margins") or {}) - set(margins)
        if extra:
            raise ValueError(f"unknown canary margin(s) {', '.join(sorted(extra))}; "
                             f"expected some of {', '.join(margins)}")
        margins.update({k: float(v) for k, v in (data.get("margins") or {}).items()})
        cfg = cls(min_seconds=float(data.get("min_seconds", base.min_seconds)),
                  min_answers=int(data.get("min_answers", base.min_answers)),
                  max_seconds=float(data.get("max_seconds", base.max_seconds)), margins=margins)
        if cfg.min_seconds < 0 or cfg.min_answers < 0 or cfg.max_seconds < 0:
            raise ValueError("canary min_seconds, min_answers and max_seconds must be >= 0")
        if cfg.max_seconds and cfg.max_seconds < cfg.min_seconds:
            raise ValueError("canary max_seconds must be 0 (no limit) or >= min_seconds")
        if any(v < 0 for v in margins.values()):
            raise ValueError("canary margins must be >= 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the signals ---------------------------------------------------------------------------------------------


def signals(subject: str, version: int, since: datetime, until: datetime) -> dict[str, Any]:
    """One version's live signals on ``subject`` over answers written in [since, until]."""
    from django.db.models import Exists, OuterRef

    from tutor.models import Message

    answers = Message.objects.filter(role=Message.Role.ASSISTANT, adapter_subject=subject, adapter_version=version,
                                     created_at__gte=since, created_at__lte=until)
    later = Message.objects.filter(reply_to=OuterRef("reply_to"), role=Message.Role.ASSISTANT, id__gt=OuterRef("id"))
    rows = list(answers.annotate(replaced=Exists(later)).values_list("error", "latency_ms", "rating__value", "replaced"))
    n = len(rows)
    down = sum(1 for _, _, r, _ in rows if r == -1)
    rated = sum(1 for _, _, r, _ in rows if r is not None)
    regen = sum(1 for *_, replaced in rows if replaced)
    errors = sum(1 for e, *_ in rows if e)
    latencies = [lat for e, lat, _, _ in rows if lat is not None and not e]
    return {"version": version, "answers": n, "rated": rated, "thumbs_down": down, "regenerated": regen,
            "errors": errors, "rates": {"thumbs_down": down / n if n else 0.0, "regeneration": regen / n if n else 0.0,
                                        "errors": errors / n if n else 0.0},
            "latency_ms_p50": statistics.median(latencies) if latencies else None, "latency_n": len(latencies)}


def compare(watch: CanaryWatch, now: datetime | None = None) -> dict[str, Any]:
    """Both versions' signals and, per signal, whether the canary is worse beyond its margin."""
    now = now or timezone.now()
    cfg = BakeConfig.from_dict(watch.config)
    canary = signals(watch.subject, watch.candidate.version, watch.started_at, now)
    promoted = signals(watch.subject, watch.baseline.version, watch.started_at, now)
    rows = []
    for name in RATE_SIGNALS:
        c, p, margin = canary["rates"][name], promoted["rates"][name], cfg.margins[name]
        rows.append({"signal": name, "canary": c, "promoted": p, "margin": margin, "limit": p + margin,
                     "worse": canary["answers"] > 0 and c > p + margin + 1e-12})
    c_lat, p_lat, margin = canary["latency_ms_p50"], promoted["latency_ms_p50"], cfg.margins["latency"]
    rows.append({"signal": "latency_ms_p50", "canary": c_lat, "promoted": p_lat, "margin": margin,
                 "limit": p_lat * (1 + margin) if p_lat is not None else None,
                 # judged only when both versions have timed answers
                 "worse": c_lat is not None and p_lat is not None and c_lat > p_lat * (1 + margin) + 1e-9})
    elapsed = (now - watch.started_at).total_seconds()
    return {"at": now.isoformat(), "elapsed_s": round(elapsed, 3), "canary": canary, "promoted": promoted,
            "signals": rows, "config": cfg.to_dict()}


def verdict(watch: CanaryWatch, comparison: dict[str, Any]) -> tuple[str | None, str]:
    """(None | "promote" | "rollback", why). None while the bake lasts."""
    cfg = BakeConfig.from_dict(watch.config)
    elapsed, n = comparison["elapsed_s"], comparison["canary"]["answers"]
    timed_out = bool(cfg.max_seconds) and elapsed >= cfg.max_seconds
    if not timed_out and (elapsed < cfg.min_seconds or n < cfg.min_answers):
        return None, (f"baking: {elapsed:.0f}/{cfg.min_seconds:.0f} s, {n}/{cfg.min_answers} canary answers")
    worse = [r for r in comparison["signals"] if r["worse"]]
    basis = (f"after {elapsed:.0f} s, {n} canary / {comparison['promoted']['answers']} promoted answers"
             + (" (bake time limit reached)" if timed_out and n < cfg.min_answers else ""))
    if worse:
        return "rollback", basis + ": worse than the promoted version on " + "; ".join(_describe(r) for r in worse)
    return "promote", basis + ": not worse than the promoted version beyond the margins"


def _describe(row: dict) -> str:
    if row["signal"] == "latency_ms_p50":
        return (f"median latency {row['canary']:.0f} ms > {row['promoted']:.0f} ms × {1 + row['margin']:.2f}")
    return (f"{row['signal'].replace('_', '-')} rate {row['canary']:.3f} > {row['promoted']:.3f} + margin "
            f"{row['margin']:.3f}")


# ---- lifecycle: start (inside start_canary's transaction), end (inside promote/retire/rollback), check ----------


def open_watch(pv: PolicyVersion, baseline: PolicyVersion, share: float, bake: BakeConfig | dict | None = None,
               *, auto_promote: bool | None = None, pipeline=None, job=None, now: datetime | None = None) -> CanaryWatch:
    """Record a canary's bake (called inside ``start_canary``'s transaction); earlier bakes of the subject end."""
    cfg = bake if isinstance(bake, BakeConfig) else BakeConfig.from_dict(bake)
    now = now or timezone.now()
    CanaryWatch.objects.filter(subject=pv.subject, status__in=[CanaryWatch.Status.BAKING, CanaryWatch.Status.PASSED]
                               ).update(status=CanaryWatch.Status.ENDED, decided_at=now,
                                        reason=f"superseded by the canary of {pv}")
    watch = CanaryWatch.objects.create(
        subject=pv.subject, candidate=pv, baseline=baseline, share=share, config=cfg.to_dict(),
        auto_promote=settings.TRAINING_AUTO_PROMOTE if auto_promote is None else bool(auto_promote),
        pipeline=pipeline, job=job, started_at=now)
    transaction.on_commit(ensure_watch_task)
    return watch


def end_watches(subject: str, status: str, reason: str, user=None, candidate: PolicyVersion | None = None) -> None:
    """Close the subject's open bake (inside promote/retire/rollback's transaction) and, after the commit,
    advance the pipeline that waits for it."""
    qs = CanaryWatch.objects.select_for_update().filter(
        subject=subject, status__in=[CanaryWatch.Status.BAKING, CanaryWatch.Status.PASSED])
    if candidate is not None:
        qs = qs.filter(candidate=candidate)
    pipelines = set()
    for watch in qs:
        watch.status, watch.reason, watch.decided_at = status, reason[:2000], timezone.now()
        watch.decided_by = user if getattr(user, "pk", None) else None
        watch.save(update_fields=["status", "reason", "decided_at", "decided_by"])
        if watch.pipeline_id:
            pipelines.add(watch.pipeline_id)
    for pid in pipelines:
        transaction.on_commit(lambda pid=pid: _advance(pid))


def _advance(pipeline_id: int) -> None:
    from training.pipeline import advance

    try:
        advance(pipeline_id)
    except Exception:  # the next check or the reaper retries; the decision itself is committed
        log.exception("advancing pipeline %s after its canary failed", pipeline_id)


def check_canaries(now: datetime | None = None, deployer=None) -> dict[str, str]:
    """The beat task's body: refresh every baking canary's comparison; decide those whose bake is over."""
    from training.services import TrainingError, promote, retire

    out: dict[str, str] = {}
    for watch in CanaryWatch.objects.filter(status=CanaryWatch.Status.BAKING).select_related("candidate", "baseline"):
        at = now or timezone.now()
        comparison = compare(watch, at)
        action, why = verdict(watch, comparison)
        CanaryWatch.objects.filter(pk=watch.pk).update(comparison=comparison, checked_at=at)
        key = str(watch.candidate)
        if action is None:
            out[key] = why
            continue
        try:
            if action == "rollback":
                retire(watch.candidate, note=f"canary rolled back: {why}"[:300], deployer=deployer,
                       canary_reason=f"rolled back {why}")
                out[key] = f"rolled back: {why}"
            elif watch.auto_promote:
                promote(watch.candidate, job=watch.job, deployer=deployer, canary_reason=f"promoted {why}")
                out[key] = f"promoted: {why}"
            else:
                with transaction.atomic():
                    CanaryWatch.objects.filter(pk=watch.pk, status=CanaryWatch.Status.BAKING).update(
                        status=CanaryWatch.Status.PASSED, decided_at=at, reason=f"passed {why}; auto-promote is off")
                if watch.pipeline_id:
                    _advance(watch.pipeline_id)
                out[key] = f"passed (awaiting an admin): {why}"
        except TrainingError as exc:  # an admin acted in between (promoted, retired, rolled back)
            out[key] = f"no action: {exc}"
    return out


def ensure_watch_task():
    """The beat entry that runs ``training.watch_canaries`` every TRAINING_CANARY_CHECK_SECONDS (idempotent)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=settings.TRAINING_CANARY_CHECK_SECONDS,
                                                      period=IntervalSchedule.SECONDS)
    task, created = PeriodicTask.objects.get_or_create(
        name=WATCH_TASK_NAME, defaults={"task": "training.watch_canaries", "interval": every, "enabled": True,
                                        "expire_seconds": max(settings.TRAINING_CANARY_CHECK_SECONDS, 5)})
    if not created and (task.interval_id != every.pk or not task.enabled):
        task.interval, task.enabled = every, True
        task.save()
    return task


def live(now: datetime | None = None) -> list[dict[str, Any]]:
    """The studio's view of every baking (or passed) canary: a fresh comparison and the bake's progress."""
    out = []
    for watch in (CanaryWatch.objects.filter(status__in=[CanaryWatch.Status.BAKING, CanaryWatch.Status.PASSED])
                  .select_related("candidate", "baseline").order_by("subject")):
        at = now or timezone.now()
        comparison = compare(watch, at)
        _, why = verdict(watch, comparison)
        out.append({"watch": {"id": watch.pk, "subject": watch.subject, "candidate_id": watch.candidate_id,
                              "candidate_version": watch.candidate.version, "baseline_version": watch.baseline.version,
                              "share": watch.share, "status": watch.status, "status_display": watch.get_status_display(),
                              "started_at": watch.started_at.isoformat()},
                    "comparison": comparison, "state": why if watch.status == "baking" else watch.reason})
    return out  # plain data: the overview API serialises it as JSON

"""Read side of the studio: overview figures, jobs as JSON, lineage, comparisons, the schedule."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db.models import Count, Max, Q, Subquery, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from training.models import Deployment, EvaluationReport, Job, PolicyVersion, RewardModelVersion

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")


def pipeline_progress(job: Job) -> float:
    """A running pipeline's progress: finished stages plus the mean progress of the current stage's jobs."""
    from training.pipeline import STAGES

    if job.is_terminal or job.stage not in STAGES:
        return float(job.progress or 0.0)
    children = list(job.children.filter(kind=job.stage).values_list("progress", "status"))
    if not children:
        return float(job.progress or 0.0)
    frac = sum(1.0 if st in Job.TERMINAL else float(p or 0.0) for p, st in children) / len(children)
    return max(float(job.progress or 0.0), (STAGES.index(job.stage) + frac) / len(STAGES))


def job_summary(job: Job) -> dict[str, Any]:
    """What the jobs list and its live progress bars poll."""
    progress = pipeline_progress(job) if job.kind == Job.Kind.PIPELINE else float(job.progress or 0.0)
    return {
        "id": job.pk, "kind": job.kind, "subject": job.subject, "status": job.status, "stage": job.stage,
        "progress": round(progress, 4), "message": job.message, "parent": job.parent_id,
        "launched_by": job.launched_by.username if job.launched_by_id and job.launched_by else None,
        "created_at": job.created_at.isoformat(), "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration": job.duration_seconds, "cancel_requested": job.cancel_requested, "error": job.error[-500:],
    }


def job_detail(job: Job, since_point: int = 0) -> dict[str, Any]:
    """Summary + curves (metrics from ``since_point`` on) + the log tail + children."""
    series = list(job.metrics or [])
    return {
        **job_summary(job),
        "config": job.config, "result": job.result, "log": job.log, "worker": job.worker,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "metrics": series[since_point:], "metrics_total": len(series),
        "children": [job_summary(c) for c in job.children.order_by("id")],
    }


def jobs(limit: int = 50, status: str | None = None, kind: str | None = None, top_level: bool = False):
    qs = Job.objects.select_related("launched_by").order_by("-id")
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    if top_level:
        qs = qs.filter(parent__isnull=True)
    return list(qs[:limit])


def live_versions() -> dict[str, dict[str, Any]]:
    """Per subject: the promoted version, the canary (if any) and its share, from the latest deployment.

    Two queries whatever the number of subjects, versions or deployments (was three per subject): the
    promoted and canary rows of every subject (at most one each: unique constraints), and each subject's
    newest not-failed deployment (a subquery picks its id).
    """
    live: dict[tuple[str, str], PolicyVersion] = {
        (pv.subject, pv.status): pv for pv in PolicyVersion.objects.filter(
            subject__in=SUBJECTS, status__in=[PolicyVersion.Status.PROMOTED, PolicyVersion.Status.CANARY]
        ).only("id", "subject", "version", "status")}
    newest = (Deployment.objects.filter(subject__in=SUBJECTS).exclude(status=Deployment.Status.FAILED)
              .order_by().values("subject").annotate(last=Max("id")).values("last"))
    deps = {d["subject"]: d for d in Deployment.objects.filter(id__in=Subquery(newest))
            .values("subject", "status", "candidate_id", "candidate_share")}
    out: dict[str, dict[str, Any]] = {}
    for s in SUBJECTS:
        promoted = live.get((s, PolicyVersion.Status.PROMOTED))
        canary = live.get((s, PolicyVersion.Status.CANARY))
        dep = deps.get(s)
        share = dep["candidate_share"] if dep and dep["candidate_id"] else 0.0
        out[s] = {"promoted": promoted.version if promoted else None, "promoted_id": promoted.pk if promoted else None,
                  "canary": canary.version if canary else None, "canary_id": canary.pk if canary else None,
                  "canary_share": share, "deployment_status": dep["status"] if dep else None,
                  "split": _split_text(promoted, canary, share)}
    return out


def _split_text(promoted, canary, share: float) -> str:
    if promoted is None:
        return "base model"
    if canary is None:
        return f"v{promoted.version} 100 %"
    return f"v{promoted.version} {100 - 100 * share:.0f} % / v{canary.version} {100 * share:.0f} %"


def overview() -> dict[str, Any]:
    """The studio's front page: data flowing in, and what is live.

    A fixed number of queries (docs/web-tier.md, "Hot paths"; pinned in tests/training/test_overview_queries.py):
    the ranking figures in one aggregate (one scan instead of five), the snapshots read once for the
    last snapshot and the per-source counts, the live versions in two.
    """
    from feedback.models import DatasetSnapshot, Ranking

    now = timezone.now()
    week_ago = now - timedelta(days=7)
    per_day = (Ranking.objects.filter(created_at__gte=week_ago).annotate(day=TruncDate("created_at"))
               .values("day").annotate(n=Count("id")).order_by("day"))
    snaps = list(DatasetSnapshot.objects.order_by("-id").only(
        "id", "sha256", "train_rows", "test_rows", "last_ranking_id", "source_counts", "ranking_pairs",
        "imported_pairs"))
    last = snaps[0] if snaps else None
    since = last.last_ranking_id if last else None
    # feedback.selectors.new_pairs_count's rule (gold tasks give no pairs), for everything and since the snapshot
    not_gold = Q(task__is_gold=False)
    figures = Ranking.objects.aggregate(
        today=Count("id", filter=Q(created_at__date=now.date())), total=Count("id"),
        pairs_total=Sum("pair_count", filter=not_gold),
        pairs_new=Sum("pair_count", filter=not_gold & Q(id__gt=since)) if since is not None
        else Sum("pair_count", filter=not_gold),
        labelers=Count("labeler", distinct=True, filter=Q(created_at__gte=now - timedelta(days=1))))
    return {
        "rankings_per_day": [{"day": r["day"].isoformat(), "rankings": r["n"]} for r in per_day],
        "rankings_today": figures["today"],
        "rankings_total": figures["total"],
        "pairs_total": figures["pairs_total"] or 0,
        "pairs_new": figures["pairs_new"] or 0,
        "labelers_active": figures["labelers"],
        "versions": live_versions(),
        "running_jobs": Job.objects.filter(status__in=[Job.Status.RUNNING, Job.Status.QUEUED]).count(),
        "last_snapshot": {"id": last.pk, "sha256": last.sha256, "rows": last.rows} if last else None,
        "sources": feedback_sources([(s.source_counts, s.ranking_pairs, s.imported_pairs) for s in snaps]),
        "canaries": canary_live(),
    }


def canary_live() -> list[dict[str, Any]]:
    """Every canary that bakes (or passed, awaiting an admin): its live comparison with the promoted version."""
    from training.canary import live

    return live()


def feedback_sources(snaps: list[tuple[dict, int, int]] | None = None) -> list[dict[str, Any]]:
    """Per source of preference pairs: on/off (setting and the admin's switch) and the pairs it gave snapshots.

    ``snaps``: every snapshot's (source_counts, ranking_pairs, imported_pairs), newest first, when the
    caller already read them (the overview does); else they are read here.
    """
    from django.conf import settings

    from feedback.models import DatasetSnapshot, FeedbackSource

    off = set(FeedbackSource.objects.filter(enabled=False).values_list("slug", flat=True))
    if snaps is None:
        snaps = list(DatasetSnapshot.objects.order_by("-id").values_list("source_counts", "ranking_pairs",
                                                                          "imported_pairs"))
    rows = []
    for slug, label in FeedbackSource.Slug.choices:
        def count(sc: dict, ranking: int, imported: int, slug: str = slug) -> int:
            if slug in (sc or {}):  # snapshots from before the per-source counts: labeler/imported columns
                return int(sc[slug])
            return {"labeler": ranking, "imported": imported}.get(slug, 0)

        rows.append({"slug": slug, "label": label, "setting_on": slug in settings.FEEDBACK_SOURCES,
                     "switch_on": slug not in off, "enabled": slug in settings.FEEDBACK_SOURCES and slug not in off,
                     "last_snapshot": count(*snaps[0]) if snaps else 0,
                     "all_snapshots": sum(count(*row) for row in snaps)})
    return rows


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"ppo": {"learning_rate": 1e-4}}`` → ``{"ppo.learning_rate": 1e-4}`` (one line per setting on a page)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def lineage(pv: PolicyVersion) -> list[dict[str, Any]]:
    """version → parent → … → v1, each with its snapshot (and ranking range) and reward model."""
    chain = []
    seen = set()
    node: PolicyVersion | None = pv
    while node is not None and node.pk not in seen:
        seen.add(node.pk)
        snap = node.snapshot
        rm = node.reward_model
        chain.append({
            "id": node.pk, "subject": node.subject, "version": node.version, "status": node.status,
            "sha256": node.sha256, "path": node.path, "method": node.method,
            # how it was trained: ppo | rloo | grpo | dpo (rows from before the choice existed were PPO)
            "algorithm": (node.metrics or {}).get("algorithm") or ("ppo" if node.snapshot_id else None),
            # this subject's own policy-step settings over the pipeline's global sections (per_subject)
            "subject_overrides": _flat((node.metrics or {}).get("subject_overrides") or {}),
            "snapshot": {"id": snap.pk, "sha256": snap.sha256, "rows": snap.rows,
                         "first_ranking_id": snap.first_ranking_id, "last_ranking_id": snap.last_ranking_id,
                         "since_ranking_id": snap.since_ranking_id,
                         "source_counts": snap.source_counts or {}} if snap else None,
            "reward_model": {"id": rm.pk, "accuracy": rm.accuracy, "sha256": rm.sha256,
                             "snapshot_id": rm.snapshot_id} if rm else None,
            "job": node.job_id,
        })
        node = node.parent
    return chain


def lineage_complete(pv: PolicyVersion) -> bool:
    """True when every trained ancestor names its parent, snapshot (with ranking range) and reward model."""
    for entry in lineage(pv):
        if entry["version"] == 1 and entry["snapshot"] is None:
            continue  # the SFT adapter: trained on the corpus, not on rankings
        if entry["snapshot"] is None or entry["reward_model"] is None or not entry["sha256"]:
            return False
    return True


def versions(subject: str | None = None) -> list[PolicyVersion]:
    qs = PolicyVersion.objects.select_related("parent", "snapshot", "reward_model")
    if subject:
        qs = qs.filter(subject=subject)
    return list(qs.order_by("subject", "-version"))


def latest_report(pv: PolicyVersion) -> EvaluationReport | None:
    return pv.evaluations.order_by("-id").first()


def compare(a: PolicyVersion, b: PolicyVersion) -> dict[str, Any]:
    """Gate metrics and answers of two versions side by side (from the report that compared them, if any)."""
    report = (EvaluationReport.objects.filter(candidate=a, baseline=b).first()
              or EvaluationReport.objects.filter(candidate=b, baseline=a).first())
    flip = report is not None and report.candidate_id == b.pk
    rows, samples = [], []
    if report is not None:
        for name, r in report.suites.items():
            left, right = (r.get("baseline"), r.get("candidate")) if flip else (r.get("candidate"), r.get("baseline"))
            rows.append({"suite": name, "a": left, "b": right, "threshold": r.get("threshold"),
                         "passed": r.get("passed")})
        for s in report.samples:
            ca, cb = ("baseline", "candidate") if flip else ("candidate", "baseline")
            samples.append({"question": s["question"], "key": s["key"], "a": s[ca], "b": s[cb],
                            "a_correct": s[f"{ca}_correct"], "b_correct": s[f"{cb}_correct"]})
    else:
        for name, ra, rb in _own_reports(a, b):
            rows.append({"suite": name, "a": ra, "b": rb, "threshold": None, "passed": None})
    return {"a": a, "b": b, "report": report, "rows": rows, "samples": samples}


def _own_reports(a: PolicyVersion, b: PolicyVersion):
    ra, rb = latest_report(a), latest_report(b)
    names = sorted(set((ra.suites if ra else {}).keys()) | set((rb.suites if rb else {}).keys()))
    for n in names:
        yield n, (ra.suites.get(n, {}).get("candidate") if ra else None), \
            (rb.suites.get(n, {}).get("candidate") if rb else None)


def schedule() -> dict[str, Any]:
    from training.services import schedule_task

    task = schedule_task()
    kwargs = json.loads(task.kwargs or "{}")
    every = task.interval.every if task.interval else None
    if task.interval and task.interval.period != "seconds":
        mult = {"minutes": 60, "hours": 3600, "days": 86400, "microseconds": 1e-6}.get(task.interval.period, 1)
        every = int(every * mult)
    from django.conf import settings

    return {"task": task, "enabled": task.enabled, "every_seconds": every,
            "min_new_pairs": kwargs.get("min_new_pairs"), "config": kwargs.get("config") or {},
            "default_threshold": settings.TRAINING_MIN_NEW_PAIRS, "last_run_at": task.last_run_at,
            "total_run_count": task.total_run_count}


def reward_models(limit: int = 20) -> list[RewardModelVersion]:
    return list(RewardModelVersion.objects.select_related("snapshot").order_by("-id")[:limit])


def deployments(limit: int = 30, *, version: PolicyVersion | None = None, job: Job | None = None) -> list[Deployment]:
    """Deployments, newest first (all, a version's, or a job's), each with ``call_log`` for the studio."""
    qs = Deployment.objects.select_related("promoted", "candidate", "created_by")
    if version is not None:
        qs = qs.filter(Q(promoted=version) | Q(candidate=version))
    if job is not None:
        qs = qs.filter(job=job)
    out = list(qs.order_by("-id")[:limit])
    for dep in out:
        dep.call_log = deployment_calls(dep)
    return out


def _call_row(step: str, call: dict[str, Any]) -> dict[str, Any]:
    ok = bool(call.get("ok"))
    outcome = (call.get("result") or "ok") if ok else (call.get("error") or "failed")
    return {"step": step, "call": call.get("call", "?"), "resource": call.get("resource", ""), "ok": ok,
            "outcome": outcome, "message": "" if ok else call.get("message", ""), "ms": call.get("ms")}


def deployment_calls(dep: Deployment) -> list[dict[str, Any]]:
    """Each attempt of a deployment with every AWS call it made, in order, and its outcome.

    Why: an admin deploying to SageMaker must see which call failed (throttling, a missing role or
    bucket) on the job, not a traceback. Reads the ``aws_calls`` the SageMaker deployer returns per
    step (``Deployment.detail``); a local-endpoint deployment has none.
    """
    attempts = []
    for record in dep.detail or []:
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        for key, value in record.items():
            if isinstance(value, dict) and isinstance(value.get("aws_calls"), list):
                rows += [_call_row(key, c) for c in value["aws_calls"]]
                if value.get("message"):
                    notes.append(f"{key}: {value['message']}")
                notes += [f"{key}: {w}" for w in value.get("warnings") or []]
            elif key == "state_aws_calls":
                rows += [_call_row("state", c) for c in value or []]
            elif key == "aws_calls":
                rows += [_call_row(record.get("failed_step") or "?", c) for c in value or []]
        attempts.append({"attempt": record.get("attempt"), "at": record.get("at", ""), "error": record.get("error", ""),
                         "failed_step": record.get("failed_step", ""), "calls": rows, "notes": notes})
    return attempts


# ==================================================================================================
# Report cards (the Benchmarks page and its API)
# ==================================================================================================


def report_cards(subject: str | None = None, version_id: int | None = None) -> list:
    """Every stored report card, newest first, with its version (one query)."""
    from training.models import BenchmarkReport

    qs = BenchmarkReport.objects.select_related("policy_version").order_by("-id")
    if subject:
        qs = qs.filter(policy_version__subject=subject)
    if version_id:
        qs = qs.filter(policy_version_id=version_id)
    return list(qs)


def report_card_json(r) -> dict[str, Any]:
    pv = r.policy_version
    return {"id": r.pk, "policy_version": {"id": pv.pk, "subject": pv.subject, "version": pv.version,
                                           "status": pv.status},
            "job": r.job_id, "source": r.source, "created_at": r.created_at.isoformat(), "seconds": r.seconds,
            "model": r.model, "config": r.config, "suites": r.suites}


def _significance(a: dict, b: dict, metric: str, seed: int = 0) -> tuple[bool | None, str]:
    """Is ``a``'s metric different from ``b``'s (the promoted version's)? (significant, method).

    A paired bootstrap of the per-item scores when both runs stored them (``details.per_item[metric]``) on the
    same data; else the 95 % intervals must not overlap (conservative: it misses some real differences).
    """
    if a.get("data_hash") and b.get("data_hash") and a["data_hash"] != b["data_hash"]:
        return None, "different data"
    ia = ((a.get("details") or {}).get("per_item") or {}).get(metric)
    ib = ((b.get("details") or {}).get("per_item") or {}).get(metric)
    if isinstance(ia, list) and isinstance(ib, list) and ia and len(ia) == len(ib):
        try:
            from rlhf.evals.stats import paired_bootstrap

            res = paired_bootstrap(ia, ib, seed=seed)
            return bool(res["ci_low"] > 0 or res["ci_high"] < 0), "paired bootstrap"
        except (ImportError, ValueError, TypeError):
            pass
    ma, mb = (a.get("metrics") or {}).get(metric) or {}, (b.get("metrics") or {}).get(metric) or {}
    lo_a, hi_a, lo_b, hi_b = ma.get("ci_low"), ma.get("ci_high"), mb.get("ci_low"), mb.get("ci_high")
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None, "no interval"
    return bool(hi_a < lo_b or hi_b < lo_a), "CI overlap"


def benchmark_board(subject: str | None = None) -> list[dict[str, Any]]:
    """Per subject: the versions with a report card side by side, suite by suite and metric by metric.

    Each version shows, per suite, the latest stored run of that suite (a report card or a gate run);
    deltas are against the subject's promoted version. Two queries whatever the number of versions.
    """
    from training.charts import suite_chart

    cards = report_cards(subject)
    promoted = {pv.subject: pv for pv in PolicyVersion.objects.filter(status=PolicyVersion.Status.PROMOTED)}
    # subject → version id → suite → (result, report)
    latest: dict[str, dict[int, dict[str, tuple[dict, Any]]]] = {}
    versions: dict[int, PolicyVersion] = {}
    for r in cards:  # newest first: the first seen run of a suite is the latest
        pv = r.policy_version
        versions[pv.pk] = pv
        per = latest.setdefault(pv.subject, {}).setdefault(pv.pk, {})
        for name, res in (r.suites or {}).items():
            if isinstance(res, dict):
                per.setdefault(name, (res, r))
    board = []
    for subj in SUBJECTS:
        if subj not in latest:
            continue
        prom = promoted.get(subj)
        cols = sorted((versions[i] for i in latest[subj]), key=lambda v: v.version)
        base_id = prom.pk if prom is not None and prom.pk in latest[subj] else None
        suite_names = sorted({s for per in latest[subj].values() for s in per})
        suites = []
        for name in suite_names:
            cells = {pv.pk: latest[subj][pv.pk].get(name) for pv in cols}
            base = cells.get(base_id) if base_id else None
            metric_names: list[str] = []
            for cell in cells.values():
                if cell and cell[0].get("status") == "ok":
                    metric_names += [m for m in (cell[0].get("metrics") or {}) if m not in metric_names]
            rows = []
            for m in metric_names:
                row_cells = []
                for pv in cols:
                    cell = cells[pv.pk]
                    res = cell[0] if cell else None
                    entry: dict[str, Any] = {"pv": pv, "is_promoted": pv.pk == base_id}
                    if res is None:
                        entry["missing"] = "no run"
                    elif res.get("status") != "ok":
                        entry["missing"] = f"{'not run' if res.get('status') == 'not_run' else 'error'}"
                    else:
                        met = (res.get("metrics") or {}).get(m)
                        if not isinstance(met, dict) or met.get("value") is None:
                            entry["missing"] = "—"
                        else:
                            entry.update(value=met["value"], ci_low=met.get("ci_low"), ci_high=met.get("ci_high"),
                                         n=met.get("n"))
                            bres = base[0] if base else None
                            bmet = ((bres or {}).get("metrics") or {}).get(m) if bres and \
                                bres.get("status") == "ok" else None
                            if bmet and bmet.get("value") is not None and pv.pk != base_id:
                                entry["delta"] = met["value"] - bmet["value"]
                                entry["delta_text"] = f"{entry['delta']:+.3f}"
                                entry["significant"], entry["method"] = _significance(res, bres, m)
                    row_cells.append(entry)
                rows.append({"metric": m, "group": "/" in m, "cells": row_cells})
            status = [{"pv": pv, "status": (cells[pv.pk][0].get("status") if cells[pv.pk] else None),
                       "reason": (cells[pv.pk][0].get("reason") if cells[pv.pk] else ""),
                       "n": (cells[pv.pk][0].get("n") if cells[pv.pk] else None),
                       "seconds": (cells[pv.pk][0].get("seconds") if cells[pv.pk] else None),
                       "data_hash": (cells[pv.pk][0].get("data_hash") or "" if cells[pv.pk] else ""),
                       "report": cells[pv.pk][1] if cells[pv.pk] else None} for pv in cols]
            top = [r for r in rows if not r["group"]]
            suites.append({"name": name, "rows": top, "groups": [r for r in rows if r["group"]], "status": status,
                           "any_ok": any(s["status"] == "ok" for s in status),
                           "chart": suite_chart(name, [(pv, latest[subj][pv.pk].get(name)) for pv in cols],
                                                [r["metric"] for r in top][:4])})
        board.append({"subject": subj, "promoted": prom, "has_promoted_card": base_id is not None,
                      "versions": cols, "suites": suites})
    return board


# ==================================================================================================
# Optimised variants (the comparison page)
# ==================================================================================================

MEASURED_KEYS = ("size_bytes", "base_bytes", "adapter_bytes", "rss_mb", "tokens_per_s", "p50_ms", "p95_ms",
                 "accuracy", "n_questions", "concurrency", "new_tokens", "measured_at")
# (label, measured key, how the variant is set against its source): "x" a ratio, "delta" a difference
VARIANT_RATIOS = (("size", "size_bytes", "x"), ("memory", "rss_mb", "x"), ("tok/s", "tokens_per_s", "x"),
                  ("p95", "p95_ms", "x"), ("accuracy", "accuracy", "delta"))


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def measured(pv: PolicyVersion) -> dict[str, Any]:
    """``pv.metrics["measured"]`` restricted to the known keys ({} when it was never measured)."""
    m = (pv.metrics or {}).get("measured")
    return {k: m[k] for k in MEASURED_KEYS if k in m and m[k] is not None} if isinstance(m, dict) else {}


def _measure_text(key: str, value: Any) -> str:
    """A measurement as the table shows it ("—" when missing)."""
    v = _number(value)
    if value is None or (v is None and key != "measured_at"):
        return "—"
    if key.endswith("_bytes"):
        return f"{v / 2**20:,.1f} MiB" if v >= 2**20 else f"{v / 1024:,.1f} KiB"
    if key == "accuracy":
        return f"{v:.3f}"
    if key in ("n_questions", "concurrency", "new_tokens"):
        return f"{v:.0f}"
    if key == "measured_at":
        return str(value)[:19].replace("T", " ")
    return f"{v:,.1f}"


def _against(variant: dict[str, Any], source: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per ratio label: the variant's value set against the source's (None where either is missing)."""
    out = {}
    for label, key, how in VARIANT_RATIOS:
        v, s = _number(variant.get(key)), _number(source.get(key))
        if v is None or s is None or (how == "x" and s == 0):
            out[label] = {"value": None, "text": "—", "how": how}
        elif how == "x":
            out[label] = {"value": v / s, "text": f"{v / s:.2f}×", "how": how}
        else:
            out[label] = {"value": v - s, "text": f"{v - s:+.3f}", "how": how}
    return out


def _gate_check(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """One row of a gate report, its numbers as text (bytes and tokens/s are not 0-1 figures)."""
    def text(v: Any) -> str:
        n = _number(v)
        return "—" if n is None else (f"{n:,.0f}" if abs(n) >= 1000 else f"{n:.3f}")

    ratio = _number(r.get("ratio"))
    return {"name": name, "passed": r.get("passed"), "candidate": text(r.get("candidate")),
            "baseline": text(r.get("baseline")), "threshold": text(r.get("threshold")),
            "ratio": "" if ratio is None else f"{ratio:.2f}×"}


def _latest_cards(ids: list[int]) -> dict[int, Any]:
    """Per version id: its newest report card (one query)."""
    from training.models import BenchmarkReport

    out: dict[int, Any] = {}
    for r in BenchmarkReport.objects.filter(policy_version_id__in=ids).order_by("-id"):
        out.setdefault(r.policy_version_id, r)
    return out


def variant_comparison(source: PolicyVersion) -> dict[str, Any]:
    """A source version and each of its optimised variants: measurements, ratios to the source, gate verdicts.

    Why one dict: the page shows one table (source first) and one chart of the same numbers, so an admin
    reads off what a variant costs in quality for what it saves in size and speed, then canaries or rejects
    it. Missing measurements are kept as missing (shown "—"), never as zero. Four queries in all.
    """
    from rlhf.optimise.gate import report_card_quality
    from training.charts import variant_chart

    variants = list(source.variants.order_by("version"))
    ids = [source.pk] + [v.pk for v in variants]
    gates: dict[int, EvaluationReport] = {}
    for r in EvaluationReport.objects.filter(candidate_id__in=ids).order_by("-id"):
        gates.setdefault(r.candidate_id, r)
    cards = _latest_cards(ids)
    quality = {i: report_card_quality({"suites": c.suites or {}}) for i, c in cards.items()}
    base_m = measured(source)
    base_q = quality.get(source.pk, {})
    suites = sorted({s for q in quality.values() for s in q})
    rows = []
    for pv in [source, *variants]:
        m = measured(pv)
        gate = gates.get(pv.pk)
        q = quality.get(pv.pk, {})
        rows.append({
            "pv": pv, "is_source": pv.pk == source.pk, "measured": m, "is_measured": bool(m),
            "text": {k: _measure_text(k, m.get(k)) for k in MEASURED_KEYS},
            "conditions": " · ".join(x for x in (
                f"concurrency {_measure_text('concurrency', m['concurrency'])}" if "concurrency" in m else "",
                f"{_measure_text('new_tokens', m['new_tokens'])} new tokens" if "new_tokens" in m else "",
                _measure_text("measured_at", m["measured_at"]) if "measured_at" in m else "") if x),
            "against": None if pv.pk == source.pk else _against(m, base_m),
            "gate": None if gate is None else {
                "report": gate, "passed": gate.passed, "failures": list(gate.failures or []),
                "suites": [_gate_check(n, r) for n, r in (gate.suites or {}).items() if isinstance(r, dict)]},
            "card": cards.get(pv.pk),
            "quality": [{"suite": s, "value": q.get(s),
                         "delta": (q[s] - base_q[s]) if s in q and s in base_q and pv.pk != source.pk else None}
                        for s in suites],
        })
    return {"source": source, "variants": variants, "rows": rows, "suites": suites,
            "measured_keys": MEASURED_KEYS, "ratio_labels": [label for label, _, _ in VARIANT_RATIOS],
            "chart": variant_chart(f"v{source.version}", [
                (f"v{r['pv'].version}", r["against"]) for r in rows if not r["is_source"]])}


def optimise_refusal(pv: PolicyVersion) -> str:
    """Why `pv` cannot be optimised ("" when it can): what the page says instead of showing the form.

    The same rules `training.optimise.launch_optimise` enforces on a launch (it stays the authority).
    """
    if pv.kind != PolicyVersion.Kind.ADAPTER:
        return f"{pv} is already an optimised variant ({pv.kind}); optimise its source instead."
    if pv.status in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.FAILED):
        return f"{pv} is {pv.status}; only a finished version can be optimised."
    return ""

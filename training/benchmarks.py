"""The report card on the Django side: config checks, the ``benchmarks`` job step, gate suites.

Why here and not in ``rlhf/``: the harness (``rlhf.evals``) scores one model on named suites and
knows nothing of versions; this module decides *which* versions get a report card (after promotion,
or on demand), stores each run as a ``BenchmarkReport`` row, and lets the pipeline's gate require a
suite's metric of the candidate to be no worse than the promoted version's. The harness is called
with plain arguments only (paths, names, numbers): ``rlhf.evals.run_report_card``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from training.models import BenchmarkReport, Job, PolicyVersion, RewardModelVersion
from training.services import (
    JobReporter,
    TrainingError,
    base_model_path,
    create_job,
    current_promoted,
    version_base_path,
)

# metric keys the harness reports (docs/evaluation.md); "<metric>/<group>" breakdowns use a tutor subject or a
# source subject as group. A metric is also known when the suite has reported it before (a stored report card).
COMMON_METRICS = frozenset({
    "acc", "acc_norm", "acc_macro", "acc_norm_macro", "acc_worst", "acc_drop", "exact_match", "em", "f1", "f1a",
    "mcc", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "ece", "mean_confidence", "key_match",
    "final_correct", "step_accuracy", "first_wrong_step", "consistency", "win_rate", "tie_rate", "loss_rate",
    "person_rate_ambiguous", "acc_ambiguous", "acc_disambiguated", "toxicity_rate", "toxicity_max",
    "toxicity_mean", "tokens_per_s", "tokens_per_s_single", "latency_p50", "latency_p95", "ms_per_token_p50",
    "accuracy_turn1", "accuracy_turn2", "chain_correct", "flip_rate", "has_answer", "has_steps", "key_consistency",
})
# for these, smaller is better (a gate entry may say so itself with "higher_is_better")
LOWER_IS_BETTER = frozenset({"ece", "acc_drop", "person_rate_ambiguous", "toxicity_rate", "toxicity_max",
                             "toxicity_mean", "latency_p50", "latency_p95", "ms_per_token_p50", "loss_rate",
                             "flip_rate"})
REPORT_CARD_FIELDS = ("enabled", "suites", "limit", "seed", "baseline", "judge")
GATE_SUITE_FIELDS = ("suite", "metric", "tolerance", "limit", "higher_is_better")


# ==================================================================================================
# Configuration
# ==================================================================================================


def report_card_defaults() -> dict[str, Any]:
    """The pipeline's ``report_card`` section: on after promotion, every suite, a small limit (minutes on CPU)."""
    suites = list(settings.TRAINING_REPORT_CARD_SUITES)
    return {"enabled": settings.TRAINING_REPORT_CARD_ENABLED,
            "suites": "all" if suites in ([], ["all"]) else suites,
            "limit": settings.TRAINING_REPORT_CARD_LIMIT, "seed": 0,
            # also score the version it replaced when that one has no report card yet (the side-by-side needs both)
            "baseline": True,
            "judge": ""}  # a local causal LM for compare_judge ("" = that suite is not run)


def _harness():
    try:
        import rlhf.evals as evals
    except ImportError as exc:  # the harness is part of the project; a broken install says so
        raise TrainingError(f"the evaluation harness (rlhf.evals) cannot be imported: {exc}", 500) from None
    return evals


def suite_names() -> list[str]:
    """Every registered suite of the harness, sorted."""
    evals = _harness()
    load = getattr(evals, "load_suites", None)
    if load is not None:
        load()
    return sorted(evals.SUITES)


def check_suites(names: Any) -> list[str] | str:
    """``"all"`` or a list of known suite names (TrainingError naming the known ones otherwise)."""
    if names == "all":
        return "all"
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TrainingError("suites must be \"all\" or a non-empty list of suite names")
    evals = _harness()
    try:  # the harness's own resolution: names, "all", "tag:<t>"
        evals.resolve_suites(names)
    except ValueError as exc:
        raise TrainingError(f"unknown benchmark suites: {exc}") from None
    return "all" if "all" in names else list(dict.fromkeys(names))


def _limit(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TrainingError(f"{what} must be a positive integer or null")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise TrainingError(f"{what} must be a positive integer or null, got {value!r}") from None
    if n < 1 or n != float(value):
        raise TrainingError(f"{what} must be a positive integer or null, got {value!r}")
    return n


def validate_report_card(section: dict | None) -> dict[str, Any]:
    """Defaults overlaid with ``section``; unknown fields, suites or a bad limit → TrainingError (400)."""
    section = section or {}
    if not isinstance(section, dict):
        raise TrainingError("report_card must be a JSON object")
    unknown = sorted(set(section) - set(REPORT_CARD_FIELDS))
    if unknown:
        raise TrainingError(f"unknown report_card fields {unknown}; expected some of {', '.join(REPORT_CARD_FIELDS)}")
    out = {**report_card_defaults(), **section}
    out["enabled"] = bool(out["enabled"])
    out["baseline"] = bool(out["baseline"])
    out["limit"] = _limit(out["limit"], "report_card.limit")
    try:
        out["seed"] = int(out["seed"])
    except (TypeError, ValueError):
        raise TrainingError("report_card.seed must be an integer") from None
    out["judge"] = str(out.get("judge") or "")
    # the suites are checked whether enabled or not: a typo in a disabled section surfaces when it is turned on
    out["suites"] = check_suites(out["suites"])
    return out


def _known_metric(suite: str, metric: str) -> bool:
    evals = _harness()
    declared = getattr(evals.SUITES.get(suite), "metrics", None)
    head, _, group = metric.partition("/")
    if declared:
        return metric in declared or head in declared
    if head in COMMON_METRICS and (not group or group.replace("_", "").replace("-", "").isalnum()):
        return True
    # a metric this suite has reported before (report cards stored in this registry)
    return BenchmarkReport.objects.filter(**{f"suites__{suite}__metrics__has_key": metric}).exists()


def validate_gate_suites(entries: Any) -> list[dict[str, Any]]:
    """The gate's ``suites``: ``[{"suite", "metric", "tolerance", "limit"?, "higher_is_better"?}]``, checked
    before any work (unknown suite or metric, negative tolerance → TrainingError 400)."""
    if entries in (None, []):
        return []
    if not isinstance(entries, list):
        raise TrainingError("gate.suites must be a list of {\"suite\", \"metric\", \"tolerance\"} objects")
    known = suite_names()
    out = []
    for i, e in enumerate(entries):
        where = f"gate.suites[{i}]"
        if not isinstance(e, dict):
            raise TrainingError(f"{where} must be an object with suite, metric and tolerance")
        unknown = sorted(set(e) - set(GATE_SUITE_FIELDS))
        if unknown:
            raise TrainingError(f"{where}: unknown fields {unknown}; expected some of {', '.join(GATE_SUITE_FIELDS)}")
        suite, metric = e.get("suite"), e.get("metric")
        if suite not in known:
            raise TrainingError(f"{where}: unknown suite {suite!r}; known: {', '.join(known)}")
        if getattr(_harness().SUITES[suite], "kind", "") == "comparison":
            raise TrainingError(f"{where}: {suite!r} compares two versions itself; the gate compares one score of "
                                "each version, so require a multiple-choice or generation suite")
        if not isinstance(metric, str) or not metric:
            raise TrainingError(f"{where}: metric is required (e.g. \"acc\")")
        if not _known_metric(suite, metric):
            raise TrainingError(f"{where}: unknown metric {metric!r} for suite {suite!r}; metrics are lowercase "
                                f"keys such as {', '.join(sorted(COMMON_METRICS)[:8])}, … or \"<metric>/<subject>\"")
        try:
            tol = float(e.get("tolerance", 0.0))
        except (TypeError, ValueError):
            raise TrainingError(f"{where}: tolerance must be a number") from None
        if not tol >= 0.0:
            raise TrainingError(f"{where}: tolerance must be >= 0, got {e.get('tolerance')!r}")
        hib = e.get("higher_is_better")
        if hib is not None and not isinstance(hib, bool):
            raise TrainingError(f"{where}: higher_is_better must be true or false")
        out.append({"suite": suite, "metric": metric, "tolerance": tol,
                    "limit": _limit(e.get("limit", settings.TRAINING_GATE_SUITE_LIMIT), f"{where}.limit"),
                    "higher_is_better": (metric.partition("/")[0] not in LOWER_IS_BETTER) if hib is None else hib})
    return out


# ==================================================================================================
# Running a report card for a version
# ==================================================================================================


class _Progress:
    """Harness progress events → the job's reporter (progress, message, a log line per suite).

    ``Cancelled`` raised by the reporter propagates out of ``run_suites`` (its progress calls sit
    between suites); ``cancelled`` is kept too, so a harness that swallowed it cannot store a report.
    """

    def __init__(self, rep: JobReporter, label: str):
        self.rep, self.label, self.cancelled = rep, label, False
        self.done = self.not_run = 0

    def __call__(self, event: dict[str, Any]) -> None:
        from rlhf.callbacks import Cancelled

        total = int(event.get("total") or 1)
        index = int(event.get("index") or 0)
        result = event.get("result")
        if isinstance(result, dict):
            self.done += 1
            self.not_run += result.get("status") != "ok"
            self.rep.log(f"{self.label}{_summary(event.get('suite', '?'), result)}")
        try:
            self.rep({"step": index, "total": total, "progress": index / total,
                      "message": f"{self.label}{event.get('message') or event.get('suite', '')}",
                      "metrics": {"suites_done": self.done, "suites_not_ok": self.not_run} if result else {}})
        except Cancelled:
            self.cancelled = True
            raise


def _summary(suite: str, r: dict) -> str:
    if r.get("status") != "ok":
        return f"{suite}: {r.get('status')} ({r.get('reason', '')[:200]})"
    heads = [f"{k}={v['value']:.3f}" for k, v in (r.get("metrics") or {}).items()
             if "/" not in k and isinstance(v, dict) and isinstance(v.get("value"), int | float)][:4]
    return f"{suite}: {', '.join(heads) or 'ok'} (n={r.get('n')}, {r.get('seconds', 0):.1f} s)"


def _reward_model_for(pv: PolicyVersion) -> str | None:
    rm = pv.reward_model if pv.reward_model_id else None
    if rm is None or rm.status != RewardModelVersion.Status.READY:
        rm = RewardModelVersion.objects.filter(status=RewardModelVersion.Status.READY).order_by("-id").first()
    # a registry row whose files are gone must not refuse the whole card: the reward-model suite says "not run"
    return rm.path if rm and Path(rm.path).is_dir() else None


def _compare_with(pv: PolicyVersion) -> PolicyVersion | None:
    """The version a comparison suite pits ``pv`` against: the promoted one, or (for the promoted) its parent."""
    promoted = current_promoted(pv.subject)
    other = promoted if promoted is not None and promoted.pk != pv.pk else pv.parent
    return other if other is not None and Path(other.path).is_dir() else None


def run_card(pv: PolicyVersion | None, suites: list[str] | str, limit: int | None, seed: int, rep: JobReporter,
             *, label: str = "", compare: PolicyVersion | None = None, judge: str = "",
             subject: str = "") -> dict[str, Any]:
    """``rlhf.evals.run_report_card`` on a version (``None``: the bare base model); raises ``Cancelled``."""
    from rlhf.callbacks import Cancelled

    evals = _harness()
    progress = _Progress(rep, label)
    options = {"subject": pv.subject if pv else subject}
    try:
        card = evals.run_report_card(
            version_base_path(pv) if pv else base_model_path(), pv.path if pv else None, suites=suites, limit=limit,
            seed=seed, progress=progress,
            reward_model=_reward_model_for(pv) if pv else None, compare_adapter=compare.path if compare else None,
            judge=judge or None, options=options)
    except ValueError as exc:  # EvalInputError: nothing ran
        raise TrainingError(f"report card refused: {exc}") from None
    if progress.cancelled:
        raise Cancelled(f"job {rep.job_id} cancelled by an admin")
    return card


def store_card(pv: PolicyVersion, job: Job | None, card: dict[str, Any], source: str, config: dict) -> BenchmarkReport:
    return BenchmarkReport.objects.create(policy_version=pv, job=job, source=source, suites=card.get("suites") or {},
                                          model=card.get("model") or {}, config=config,
                                          seconds=float(card.get("seconds") or 0.0))


def step_benchmarks(job: Job, rep: JobReporter) -> dict[str, Any]:
    """The ``benchmarks`` job: the report card of one version, stored as a ``BenchmarkReport``."""
    pv = PolicyVersion.objects.select_related("reward_model", "parent").filter(
        pk=job.config.get("policy_version_id")).first()
    if pv is None:
        raise TrainingError(f"policy version {job.config.get('policy_version_id')} does not exist", 404)
    rc = validate_report_card(job.config.get("report_card"))
    rep({"step": 0, "total": 1, "progress": 0.0,
         "message": f"report card of {pv}: {rc['suites'] if rc['suites'] == 'all' else ', '.join(rc['suites'])}"
                    f" (limit {rc['limit']})"})
    card = run_card(pv, rc["suites"], rc["limit"], rc["seed"], rep, compare=_compare_with(pv), judge=rc["judge"])
    report = store_card(pv, job, card, "report_card", {"suites": rc["suites"], "limit": rc["limit"],
                                                       "seed": rc["seed"], **(card.get("config") or {})})
    statuses = {name: r.get("status") for name, r in report.suites.items()}
    rep.log(f"report card {report.pk} of {pv}: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    return {"benchmark_report_id": report.pk, "policy_version_id": pv.pk, "version": pv.version,
            "suites": statuses, "seconds": report.seconds}


def launch_report_card(version: PolicyVersion | int, *, suites: Any = "all", limit: Any = None, seed: Any = 0,
                       user=None, pipeline: Job | None = None) -> Job:
    """Queue a ``benchmarks`` job for a version (studio, API, the pipeline after promotion); checked first."""
    pv_id = version.pk if isinstance(version, PolicyVersion) else version
    try:
        pv = PolicyVersion.objects.filter(pk=int(pv_id)).first()
    except (TypeError, ValueError):
        raise TrainingError(f"policy version must be an id, got {pv_id!r}") from None
    if pv is None:
        raise TrainingError(f"policy version {pv_id} does not exist", 404)
    if pv.status in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.FAILED):
        raise TrainingError(f"{pv} is {pv.status}: it has no adapter to score", 409)
    rc = validate_report_card({"suites": suites, "limit": limit, "seed": seed})
    config = {"policy_version_id": pv.pk, "report_card": {k: rc[k] for k in ("suites", "limit", "seed", "judge")}}
    with transaction.atomic():
        # after a pipeline: its child (shown among its steps, run by `run_pipeline --inline` too), but no stage:
        # the pipeline's verdict is already recorded and does not wait on it
        return create_job(Job.Kind.BENCHMARKS, config, subject=pv.subject, user=user, parent=pipeline)


def queue_after_deploy(pipeline: Job, deployed_ids: list[int]) -> list[Job]:
    """After a pipeline deployed versions: their report cards (and the replaced version's, if it has none)."""
    rc = validate_report_card((pipeline.config or {}).get("report_card"))
    if not rc["enabled"]:
        return []
    jobs: list[Job] = []
    wanted: list[PolicyVersion] = []
    for pv in PolicyVersion.objects.select_related("parent").filter(pk__in=deployed_ids).order_by("subject"):
        if rc["baseline"] and pv.parent_id and not pv.parent.benchmark_reports.filter(
                source="report_card").exists():
            wanted.append(pv.parent)
        wanted.append(pv)
    for pv in wanted:
        jobs.append(launch_report_card(pv, suites=rc["suites"], limit=rc["limit"], seed=rc["seed"],
                                       user=pipeline.launched_by, pipeline=pipeline))
    return jobs


# ==================================================================================================
# The gate: required suites, candidate vs the promoted version
# ==================================================================================================


def gate_check(job: Job, rep: JobReporter, pv: PolicyVersion, baseline: PolicyVersion | None,
               entries: list[dict[str, Any]], seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Run the required suites on both versions (same data: same limit and seed); compare each entry.

    Returns (suites for the ``EvaluationReport``, keyed ``"<suite>:<metric>"``; failures). A required suite
    that did not run (missing data, error) fails the gate: the gate cannot vouch for what it did not see.
    Both runs are stored as ``BenchmarkReport`` rows (source ``gate``) beside the job.
    """
    # each suite runs once per version, at the largest limit any entry asks of it (None: all items)
    suite_limit: dict[str, int | None] = {}
    for e in entries:
        old = suite_limit.get(e["suite"], 0)
        suite_limit[e["suite"]] = None if None in (old, e["limit"]) else max(old, e["limit"])
    by_limit: dict[int | None, list[str]] = {}
    for name, limit in suite_limit.items():
        by_limit.setdefault(limit, []).append(name)
    results: dict[str, dict[str, dict]] = {"candidate": {}, "baseline": {}}
    for which, version in (("candidate", pv), ("baseline", baseline)):
        merged: dict[str, Any] = {"suites": {}, "model": {}, "seconds": 0.0}
        for limit, names in by_limit.items():
            compare = baseline if which == "candidate" and baseline and Path(baseline.path).is_dir() else None
            card = run_card(version, names, limit, seed, rep, label=f"gate suites, {which}: ", compare=compare,
                            subject=pv.subject)
            merged["suites"].update(card.get("suites") or {})
            merged["model"] = card.get("model") or merged["model"]
            merged["seconds"] += float(card.get("seconds") or 0.0)
        if version is not None:  # one row per version and run
            store_card(version, job, merged, "gate", {"suites": suite_limit, "seed": seed})
        for name in suite_limit:
            results[which][name] = merged["suites"].get(name) or {"status": "error",
                                                                  "reason": "missing from the report card"}
    suites: dict[str, Any] = {}
    failures: list[str] = []
    for e in entries:
        row = compare_entry({**e, "limit": suite_limit[e["suite"]]}, results["candidate"][e["suite"]],
                            results["baseline"][e["suite"]])
        name = f"{e['suite']}:{e['metric']}"
        suites[name] = row
        if not row["passed"]:
            failures.append(f"{name}: {row['why']}")
    return suites, failures


def _value(r: dict, metric: str) -> float | None:
    m = (r.get("metrics") or {}).get(metric)
    v = m.get("value") if isinstance(m, dict) else None
    return float(v) if isinstance(v, int | float) else None


def compare_entry(e: dict[str, Any], cand: dict, base: dict) -> dict[str, Any]:
    """One gate entry on two SuiteResult dicts: candidate no worse than the baseline beyond ``tolerance``."""
    row: dict[str, Any] = {"kind": "benchmark", "suite": e["suite"], "metric": e["metric"],
                           "threshold": e["tolerance"], "higher_is_better": e["higher_is_better"],
                           "candidate": None, "baseline": None, "passed": False, "limit": e["limit"]}
    for which, r in (("candidate", cand), ("baseline", base)):
        if r.get("status") != "ok":
            row["why"] = f"not run on the {which}: {r.get('status')}: {r.get('reason', '')}"[:500]
            return row
    c, b = _value(cand, e["metric"]), _value(base, e["metric"])
    row.update(candidate=c, baseline=b, n=(cand.get("metrics") or {}).get(e["metric"], {}).get("n"),
               same_data=cand.get("data_hash") == base.get("data_hash"))
    if c is None or b is None:
        row["why"] = f"metric {e['metric']!r} missing from the suite's result (it reports " \
                     f"{', '.join(sorted(cand.get('metrics') or {})[:10])})"
        return row
    delta = c - b
    row["delta"] = delta
    row["passed"] = delta >= -e["tolerance"] if e["higher_is_better"] else delta <= e["tolerance"]
    direction = "higher" if e["higher_is_better"] else "lower"
    row["why"] = f"{c:.4f} vs {b:.4f} ({direction} is better, tolerance {e['tolerance']})"
    return row

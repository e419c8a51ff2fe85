"""The retraining pipeline: the step functions each job kind runs, and the stage machine that chains them.

snapshot → reward model → PPO (one job per subject, parallel on several workers) → evaluate (the gate)
→ deploy (canary, then promote when allowed). Each step is a function ``step(job, reporter) -> result``
that calls one ``rlhf``/``feedback``/``serving`` function with plain arguments; ``advance`` runs after
every child job ends (in the worker that ran it) and, in one transaction on the locked pipeline row,
decides the next stage, so a stage is entered exactly once however many children finish together.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.benchmarks import step_benchmarks
from training.models import EvaluationReport, Job, PolicyVersion, RewardModelVersion
from training.services import (
    SUBJECTS,
    JobReporter,
    TrainingError,
    adapters_root,
    base_model_path,
    create_job,
    current_promoted,
    ensure_initial_versions,
    next_version,
    promote,
    retire,
    reward_root,
    start_canary,
    version_base_path,
)

if TYPE_CHECKING:
    from rlhf.alternatives import AltConfig

log = logging.getLogger(__name__)

# "canary": no job of its own; the pipeline waits there while its canaries bake (training.canary)
STAGES = ("snapshot", "reward_model", "ppo", "evaluate", "deploy", "canary")

# the policy-optimisation step ("ppo" stage/job kind) runs one of these: our PPO, or TRL's alternatives
ALGORITHMS = ("ppo", "rloo", "grpo", "dpo")
# the sections a subject may override (``per_subject``): one subject needs a gentler policy step than another
SUBJECT_SECTIONS = ("ppo", "alt", "ppo_prompts")


# ==================================================================================================
# Configuration (what the launch forms and the schedule's kwargs carry)
# ==================================================================================================


def gate_thresholds(overrides: dict | None = None) -> dict[str, float]:
    th = {
        "min_win_rate": settings.TRAINING_GATE_MIN_WIN_RATE,
        "accuracy_tolerance": settings.TRAINING_GATE_ACCURACY_TOLERANCE,
        "accuracy_z": settings.TRAINING_GATE_ACCURACY_Z,
        "max_kl": settings.TRAINING_GATE_MAX_KL,
        "max_length_drift": settings.TRAINING_GATE_MAX_LENGTH_DRIFT,
        "max_unsafe_rate": settings.TRAINING_GATE_MAX_UNSAFE_RATE,
    }
    th.update(overrides or {})
    return th


def default_pipeline_config() -> dict[str, Any]:
    """Defaults shown in the launch form: every trainer's config dataclass, plus the gate and deploy."""
    from rlhf.evaluation import EvalConfig
    from rlhf.ppo import PPOConfig
    from rlhf.reward import RewardConfig
    from training.benchmarks import report_card_defaults

    return {
        "snapshot": {"scope": "new", "include_imported": True},
        "reward": RewardConfig.for_backbone(settings.TRAINING_REWARD_BACKBONE).to_dict(),
        "algorithm": "ppo",
        "ppo": PPOConfig().to_dict(),
        "alt": alt_defaults(),
        "ppo_prompts": 128,
        "subjects": [],
        # per-subject overrides of the policy step, merged over the sections above, e.g.
        # {"language": {"ppo": {"learning_rate": 1e-4}}} (SUBJECT_SECTIONS; see subject_config)
        "per_subject": {},
        "eval": {**EvalConfig().to_dict(), "n_prompts": settings.TRAINING_GATE_PROMPTS,
                 "temperature": settings.TRAINING_GATE_TEMPERATURE, "samples_per_prompt": settings.TRAINING_GATE_SAMPLES,
                 "suites": list(settings.TRAINING_GATE_SUITES)},
        # "suites": benchmark suites the candidate must not lose on, e.g. [{"suite": "mmlu", "metric": "acc",
        # "tolerance": 0.02}] (training.benchmarks.validate_gate_suites); empty by default: the gate stays fast
        "gate": {**gate_thresholds(), "suites": []},
        "report_card": report_card_defaults(),
        "canary_share": settings.TRAINING_CANARY_SHARE,
        # the canary's bake before it is promoted or rolled back (training.canary.BakeConfig)
        "canary": canary_defaults(),
        "auto_promote": settings.TRAINING_AUTO_PROMOTE,
    }


def canary_defaults() -> dict[str, Any]:
    from training.canary import BakeConfig

    return BakeConfig.defaults().to_dict()


def alt_defaults() -> dict[str, Any]:
    """``AltConfig``'s defaults without ``algo``: the top-level ``algorithm`` picks it (one source of truth)."""
    from rlhf.alternatives import AltConfig

    return {k: v for k, v in AltConfig().to_dict().items() if k != "algo"}


def alt_config(config: dict) -> AltConfig:
    """The ``AltConfig`` a RLOO/GRPO/DPO step runs with (``ValueError`` on bad fields)."""
    from rlhf.alternatives import AltConfig

    algorithm = config.get("algorithm", "ppo")
    # PPO does not read the section; it is still checked (as DPO, the least constrained) so typos surface
    return AltConfig.from_dict({**alt_defaults(), **(config.get("alt") or {}),
                                "algo": algorithm if algorithm != "ppo" else "dpo"})


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise TrainingError(f"unknown config field {path + k!r}")
        out[k] = _merge(base[k], v, f"{path}{k}.") if isinstance(base[k], dict) and isinstance(v, dict) else v
    return out


def subject_config(config: dict, subject: str) -> dict:
    """``config`` with ``per_subject[subject]`` merged over its policy-step sections (the global ones stay the base)."""
    over = (config.get("per_subject") or {}).get(subject) or {}
    out = dict(config)
    for section, value in over.items():
        base = out.get(section)
        out[section] = _merge(base, value, f"per_subject.{subject}.{section}.") \
            if isinstance(base, dict) and isinstance(value, dict) else value
    return out


def _normalise_subjects(config: dict) -> dict:
    """``"subjects": {subject: overrides}`` is shorthand for those subjects plus ``per_subject`` overrides."""
    subjects = config.get("subjects")
    if not isinstance(subjects, dict):
        return config
    per_subject = config.get("per_subject") or {}
    if not isinstance(per_subject, dict):
        raise TrainingError("per_subject must be a JSON object: {subject: {section: overrides}}")
    clash = sorted(set(subjects) & set(per_subject))
    if clash:
        raise TrainingError(f"overrides for {clash} given both in 'subjects' and in 'per_subject'")
    return {**config, "subjects": list(subjects),
            "per_subject": {**per_subject, **{s: o for s, o in subjects.items() if o}}}


def _validate_per_subject(full: dict) -> None:
    """Every subject's merged sections must be a valid PPOConfig / AltConfig (bad input → TrainingError)."""
    from rlhf.ppo import PPOConfig

    per_subject = full["per_subject"]
    if not isinstance(per_subject, dict):
        raise TrainingError("per_subject must be a JSON object: {subject: {section: overrides}}")
    for subject, over in per_subject.items():
        if subject not in SUBJECTS:
            raise TrainingError(f"per_subject: unknown subject {subject!r}; expected one of {', '.join(SUBJECTS)}")
        if not isinstance(over, dict):
            raise TrainingError(f"per_subject.{subject} must be a JSON object of sections")
        bad = sorted(set(over) - set(SUBJECT_SECTIONS))
        if bad:
            raise TrainingError(f"per_subject.{subject}: {bad} cannot differ per subject "
                                f"(allowed: {', '.join(SUBJECT_SECTIONS)})")
        if isinstance(over.get("alt"), dict) and "algo" in over["alt"]:
            raise TrainingError(f"per_subject.{subject}.alt.algo is not a field: the top-level 'algorithm' chooses")
        merged = subject_config(full, subject)
        try:
            PPOConfig.from_dict(merged["ppo"])
            alt_config(merged)
            if int(merged["ppo_prompts"]) < 1:
                raise ValueError("ppo_prompts must be >= 1")
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"invalid per_subject.{subject} config: {exc}") from None


def validate_pipeline_config(config: dict) -> dict:
    """Defaults overlaid with ``config``; every section is checked by its dataclass (bad input → TrainingError)."""
    from rlhf.evaluation import EvalConfig, GateThresholds
    from rlhf.ppo import PPOConfig
    from rlhf.reward import RewardConfig

    if not isinstance(config, dict):
        raise TrainingError("config must be a JSON object")
    config = _normalise_subjects(config)
    per_subject = config.get("per_subject", {})
    per_subject = {} if per_subject is None else per_subject
    config = {k: v for k, v in config.items() if k != "per_subject"}  # free-form keys: checked below
    if isinstance(config.get("alt"), dict) and "algo" in config["alt"]:
        raise TrainingError("alt.algo is not a field: choose the algorithm with the top-level 'algorithm'")
    defaults = default_pipeline_config()
    reward = config.get("reward")
    if isinstance(reward, dict) and isinstance(reward.get("backbone"), str):
        # another backbone brings its own recommended settings (RewardConfig.for_backbone: an encoder needs a
        # fine-tuning learning rate); what the admin gave still wins
        defaults["reward"] = RewardConfig.for_backbone(reward["backbone"]).to_dict()
    full = _merge(defaults, config)
    full["per_subject"] = per_subject
    if full["algorithm"] not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {full['algorithm']!r}; expected one of {', '.join(ALGORITHMS)}")
    try:
        RewardConfig.from_dict(full["reward"])
        PPOConfig.from_dict(full["ppo"])
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid config: {exc}") from None
    try:
        alt_config(full)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid alt config for {full['algorithm']}: {exc}") from None
    try:
        EvalConfig.from_dict(full["eval"])
        GateThresholds.from_dict({k: v for k, v in full["gate"].items() if k != "suites"})
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid config: {exc}") from None
    from training.benchmarks import validate_gate_suites, validate_report_card

    full["gate"]["suites"] = validate_gate_suites(full["gate"].get("suites"))
    full["report_card"] = validate_report_card(full["report_card"])
    unknown = [s for s in full["subjects"] if s not in SUBJECTS]
    if unknown:
        raise TrainingError(f"unknown subjects {unknown}; expected some of {', '.join(SUBJECTS)}")
    if full["snapshot"].get("scope") not in ("new", "all"):
        raise TrainingError("snapshot.scope must be 'new' or 'all'")
    share = float(full["canary_share"])
    if not 0.0 <= share < 1.0:
        raise TrainingError("canary_share must be in [0, 1)")
    from training.canary import BakeConfig

    try:
        full["canary"] = BakeConfig.from_dict(full["canary"]).to_dict()
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid canary config: {exc}") from None
    if int(full["ppo_prompts"]) < 1:
        raise TrainingError("ppo_prompts must be >= 1")
    _validate_per_subject(full)
    return full


# ==================================================================================================
# Steps
# ==================================================================================================


def step_snapshot(job: Job, rep: JobReporter) -> dict:
    """Freeze the preference pairs since the last snapshot (``scope="all"``: every pair)."""
    from feedback.selectors import latest_snapshot
    from feedback.services import create_snapshot

    cfg = job.config.get("snapshot") or {}
    last = latest_snapshot()
    new_only = last is not None and cfg.get("scope", "new") == "new"
    since = last.last_ranking_id if new_only else None
    # students' implicit pairs: only evidence newer than the last snapshot's (message, rating) watermark
    implicit_since = {"message_id": last.last_message_id, "rating_id": last.last_rating_id} if new_only else None
    rep({"step": 0, "total": 1, "progress": 0.1, "message": f"snapshot of pairs after ranking {since}"})
    snap = create_snapshot(since_ranking_id=since, include_imported=cfg.get("include_imported", True),
                           implicit_since=implicit_since)
    if snap.rows == 0:
        raise TrainingError("the snapshot has no preference pairs: rank some tasks first")
    rep({"step": 1, "total": 1, "progress": 1.0, "message": f"snapshot {snap.sha256[:12]}: {snap.rows} pairs",
         "metrics": {"pairs": snap.rows, "train": snap.train_rows, "test": snap.test_rows}})
    return {"snapshot_id": snap.pk, "sha256": snap.sha256, "rows": snap.rows, "counts": snap.counts,
            "source_counts": snap.source_counts}


def gold_reward_model_wanted(config: dict) -> bool:
    """Whether a run's policy step (any subject's) watches the alarm with a second, gold reward model."""
    section = "ppo" if config.get("algorithm", "ppo") == "ppo" else "alt"
    if config.get("algorithm") == "dpo":
        return False  # DPO has no rollouts for the alarm to score
    sections = [config.get(section) or {}] + [
        {**(config.get(section) or {}), **((over or {}).get(section) or {})}
        for over in (config.get("per_subject") or {}).values()]
    return any(int(s.get("alarm_every") or 0) > 0 and s.get("alarm_gold") == "reward_model" for s in sections)


def step_reward_model(job: Job, rep: JobReporter) -> dict:
    """Train a reward model on the snapshot; record its held-out accuracy.

    When a run's alarm asks for a gold reward model (``alarm_gold="reward_model"``), the snapshot's train pairs
    are split by prompt: the proxy trains on one half, the gold model on the other (both scored on the test
    split); the gold one is recorded in the proxy's ``metrics["gold"]``.
    """
    from feedback.models import DatasetSnapshot
    from rlhf.manifest import artifact_sha256
    from rlhf.reward import RewardConfig, train_reward_model

    snap = DatasetSnapshot.objects.get(pk=job.config["snapshot_id"])
    cfg = RewardConfig.from_dict(job.config.get("reward") or {})
    rm = RewardModelVersion.objects.create(snapshot=snap, job=job, config=cfg.to_dict(), path="")
    out = reward_root() / f"rm-{rm.pk}"
    RewardModelVersion.objects.filter(pk=rm.pk).update(path=str(out))
    backbone = base_model_path() if cfg.backbone == "demo" else None
    data, gold = snap.path, None
    if gold_reward_model_wanted(job.config):
        from rlhf.overopt import split_for_gold

        try:
            data, gold_data, halves = split_for_gold(snap.path, reward_root() / f"rm-{rm.pk}-data")
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        rep.log(f"gold reward model asked for: proxy trains on {halves['proxy']} pairs, gold on {halves['gold']} "
                "(prompt-disjoint halves of the snapshot)")
        gold_out = reward_root() / f"rm-{rm.pk}-gold"
        # the first half of the job's progress; its curve rows carry phase "gold"
        half = rep.scale / 2
        gold_rep = JobReporter(job, offset=rep.offset, scale=half, prefix="gold: ")
        gold_metrics = train_reward_model(gold_data, gold_out, cfg, gold_rep, base_model=backbone, overwrite=True)
        gold_rep.flush()
        rep = JobReporter(job, offset=rep.offset + half, scale=half, prefix=rep.prefix)
        gold = {"path": str(gold_out), "sha256": artifact_sha256(gold_out), "accuracy": gold_metrics.get("accuracy"),
                "train_pairs": gold_metrics.get("train_pairs")}
    metrics = train_reward_model(data, out, cfg, rep, base_model=backbone, overwrite=True)
    if gold is not None:
        metrics = {**metrics, "gold": gold}
    RewardModelVersion.objects.filter(pk=rm.pk).update(
        status=RewardModelVersion.Status.READY, sha256=artifact_sha256(out), metrics=metrics,
        accuracy=metrics.get("accuracy"))
    return {"reward_model_id": rm.pk, "accuracy": metrics.get("accuracy"), "train_pairs": metrics.get("train_pairs"),
            **({"gold_accuracy": gold["accuracy"]} if gold else {})}


def gold_reward_path(rm: RewardModelVersion, subject: str, cfg: Any) -> str | None:
    """The gold reward model a policy step's alarm scores with (None: the answer key, or the alarm is off)."""
    if not cfg.alarm_every or cfg.alarm_gold != "reward_model":
        return None
    gold = (rm.metrics or {}).get("gold") or {}
    if not gold.get("path"):
        raise TrainingError(f"{subject}: alarm_gold='reward_model' but reward model {rm.pk} has no gold model "
                            "(its run did not ask for one)")
    return gold["path"]


def ppo_prompts(snapshot_path: str, subject: str, n: int, seed: int = 0) -> list[Any]:
    """The subject's prompts from the snapshot (with their context), topped up from the corpus seed prompts."""
    import random

    from rlhf.corpus import seed_prompts
    from rlhf.overopt import snapshot_prompts

    prompts = snapshot_prompts(snapshot_path, subject, "train")
    random.Random(seed).shuffle(prompts)
    if len(prompts) < n:
        prompts += [it.question for it in seed_prompts(subject, n - len(prompts), seed)]
    return prompts[:n]


def step_ppo(job: Job, rep: JobReporter) -> dict:
    """Policy optimisation on the subject's promoted adapter → a new candidate version (``training`` while it runs).

    ``config["algorithm"]`` picks our PPO (default) or TRL's RLOO/GRPO (same prompts and reward model) or DPO
    (the snapshot's pairs of this subject). The job kind stays ``ppo``: it is the pipeline's policy step.
    """
    from feedback.models import DatasetSnapshot
    from rlhf.manifest import artifact_sha256

    subject = job.subject
    overrides = (job.config.get("per_subject") or {}).get(subject) or {}
    if overrides:  # this subject's own policy-step settings over the global sections (recorded in the lineage)
        job.config = subject_config(job.config, subject)
    algorithm = job.config.get("algorithm", "ppo")
    if algorithm not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    rm = RewardModelVersion.objects.get(pk=job.config["reward_model_id"], status=RewardModelVersion.Status.READY)
    snap = DatasetSnapshot.objects.get(pk=job.config["snapshot_id"]) if job.config.get("snapshot_id") else rm.snapshot
    parent = PolicyVersion.objects.get(pk=job.config["parent_id"]) if job.config.get("parent_id") \
        else current_promoted(subject)
    if parent is not None and parent.kind != PolicyVersion.Kind.ADAPTER and parent.source_id:
        # an optimised variant is a deployment of its source: training goes on from the full-precision source
        # (an int8 / pruned / distilled base is not what the trainers fine-tune); optimise the result again
        rep.log(f"v{parent.version} is a {parent.kind} variant of v{parent.source.version}: training from "
                f"v{parent.source.version} on its base")
        parent = parent.source
    if parent is None:
        raise TrainingError(f"{subject} has no promoted version to start {algorithm.upper()} from")
    with transaction.atomic():
        version = next_version(subject)
        out = adapters_root() / subject / f"v{version}"
        pv = PolicyVersion.objects.create(subject=subject, version=version, method=parent.method, parent=parent,
                                          snapshot=snap, reward_model=rm, job=job, path=str(out),
                                          metrics={"algorithm": algorithm},
                                          note=f"trained with {algorithm.upper()}")
    rep.log(f"training {pv} from v{parent.version} with {algorithm.upper()} (reward model {rm.pk})"
            + (f"; {subject} overrides {json.dumps(overrides, sort_keys=True)}" if overrides else ""))
    if algorithm == "ppo":
        metrics = _train_ppo(job, rep, parent, rm, snap, out, subject)
    else:
        metrics = _train_alternative(job, rep, algorithm, parent, rm, snap, out, subject)
    summary = {"algorithm": algorithm, **{k: v for k, v in metrics.items() if k != "history"}}
    if overrides:
        summary["subject_overrides"] = overrides
    alarm = summary.get("overoptimisation") or {}
    note = pv.note
    if alarm.get("fired"):  # the version carries the flag; the gate and version pages show it
        note = (f"{pv.note}; over-optimisation alarm at step {alarm['fired_at_step']}: "
                + (f"kept step {alarm['best_step']} (best by {alarm['gold']})" if alarm.get("stopped_early")
                   else "flagged"))
        rep.log(note)
    PolicyVersion.objects.filter(pk=pv.pk, status=PolicyVersion.Status.TRAINING).update(
        status=PolicyVersion.Status.CANDIDATE, sha256=artifact_sha256(out), metrics=summary, note=note[:300])
    return {"policy_version_id": pv.pk, "version": version, "algorithm": algorithm,
            "final_reward": summary.get("final_reward"), "final_kl": summary.get("final_kl"),
            "overoptimisation_alarm": bool(alarm.get("fired"))}


def _train_ppo(job: Job, rep: JobReporter, parent: PolicyVersion, rm: RewardModelVersion, snap, out,
               subject: str) -> dict:
    from rlhf.ppo import PPOConfig, train_ppo

    cfg = PPOConfig.from_dict(job.config.get("ppo") or {})
    prompts = ppo_prompts(snap.path, subject, int(job.config.get("ppo_prompts", 128)), cfg.seed)
    return train_ppo(version_base_path(parent), parent.path, rm.path, prompts, out, cfg, rep, subject=subject,
                     **_gold_kwargs(rm, snap, subject, cfg))


def _gold_kwargs(rm: RewardModelVersion, snap, subject: str, cfg: Any) -> dict[str, Any]:
    """The alarm's gold reward model and its held-out prompts (the snapshot's test split), when one is asked for."""
    from rlhf.overopt import held_out_prompts

    gold = gold_reward_path(rm, subject, cfg)
    if gold is None:
        return {}
    return {"gold_reward_model_path": gold,
            "alarm_prompts": held_out_prompts(snap.path, subject, cfg.alarm_prompts, cfg.seed)}


def _train_alternative(job: Job, rep: JobReporter, algorithm: str, parent: PolicyVersion, rm: RewardModelVersion,
                       snap, out, subject: str) -> dict:
    """RLOO/GRPO/DPO through ``rlhf.alternatives``; progress and cancellation go through the same reporter."""
    from rlhf.alternatives import train_alternative

    try:
        cfg = alt_config(job.config)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid alt config for {algorithm}: {exc}") from None

    def report(event: dict[str, Any]) -> None:  # TRL's steps arrive as bare "<algo>": say which step
        if event.get("message") == algorithm:
            event = {**event, "message": f"{algorithm} step {event.get('step')}/{event.get('total')}"}
        rep(event)

    # a first event: the job says what it runs, and a cancel requested while it was queued stops it here
    report({"step": 0, "total": cfg.steps, "progress": 0.0, "message": f"{algorithm}: starting",
            "metrics": {"algorithm": algorithm}})
    if algorithm == "dpo":
        # DPO learns from this subject's pairs of the snapshot; the reward model only judges it at the gate
        metrics = train_alternative(version_base_path(parent), parent.path, out, cfg, report, subject=subject,
                                    dataset_path=snap.path)
    else:
        prompts = ppo_prompts(snap.path, subject, int(job.config.get("ppo_prompts", 128)), cfg.seed)
        metrics = train_alternative(version_base_path(parent), parent.path, out, cfg, report, subject=subject,
                                    prompts=prompts, reward_model_path=rm.path, **_gold_kwargs(rm, snap, subject, cfg))
    last = (metrics.get("history") or [{}])[-1]
    final = {"final_loss": last.get("loss"), "final_reward": last.get("reward"), "final_kl": last.get("kl")}
    finite = {k: float(v) for k, v in final.items() if isinstance(v, int | float) and math.isfinite(v)}
    return {**finite, **metrics, "config": cfg.to_dict()}


def step_evaluate(job: Job, rep: JobReporter) -> dict:
    """The gate: candidate vs the promoted version; a failing candidate is retired (the endpoint is untouched)."""
    from rlhf.evaluation import evaluate
    from training import benchmarks

    pv = PolicyVersion.objects.select_related("reward_model").get(pk=job.config["policy_version_id"])
    if job.config.get("variant") or pv.kind != PolicyVersion.Kind.ADAPTER:
        from training.optimise import step_gate_variant  # judged against its source, not the promoted version

        return step_gate_variant(job, rep)
    baseline = current_promoted(pv.subject)
    if baseline is not None and baseline.kind != PolicyVersion.Kind.ADAPTER and baseline.source_id:
        rep.log(f"the promoted v{baseline.version} is a {baseline.kind} variant: the gate compares with its "
                f"source v{baseline.source.version}, on the same base as the candidate")
        baseline = baseline.source
    rm = pv.reward_model
    if job.config.get("reward_model_id"):
        rm = RewardModelVersion.objects.get(pk=job.config["reward_model_id"])
    gate = dict(job.config.get("gate") or gate_thresholds())
    # benchmark suites the gate requires (checked before any model is loaded)
    required = benchmarks.validate_gate_suites(gate.pop("suites", None))
    if required:  # the fast gate fills the first 60 % of the bar, the required suites the rest
        rep.scale = 0.6
    report = evaluate(version_base_path(pv), pv.path, baseline.path if baseline else None, pv.subject,
                      reward_model_path=rm.path if rm else None, thresholds=gate,
                      config=job.config.get("eval") or {}, callback=rep)
    if required:
        rep.offset, rep.scale = 0.6, 0.4
        rows, failures = benchmarks.gate_check(job, rep, pv, baseline, required,
                                               seed=int((job.config.get("eval") or {}).get("seed", 0)))
        report["suites"].update(rows)
        report["failures"] = list(report["failures"]) + failures
        report["passed"] = bool(report["passed"]) and not failures
        report["thresholds"] = {**report["thresholds"], "suites": required}
    er = EvaluationReport.objects.create(candidate=pv, baseline=baseline, reward_model=rm, job=job,
                                         passed=report["passed"], suites=report["suites"],
                                         thresholds=report["thresholds"], failures=report["failures"],
                                         samples=report["samples"])
    if not report["passed"] and pv.status in (PolicyVersion.Status.CANDIDATE, PolicyVersion.Status.CANARY):
        retire(pv, note="failed the gate: " + "; ".join(report["failures"])[:250])
        rep.log(f"{pv} failed the gate and was retired: {report['failures']}")
    return {"report_id": er.pk, "passed": report["passed"], "policy_version_id": pv.pk,
            "suites": {k: {"candidate": v.get("candidate"), "baseline": v.get("baseline"), "passed": v.get("passed")}
                       for k, v in report["suites"].items()}}


def step_deploy(job: Job, rep: JobReporter) -> dict:
    """Canary share first (if configured) and its bake; without a canary, promotion when auto-promote is on.

    A canary is not promoted here: the canary watch (``training.canary``, a beat task) promotes it or rolls it
    back when its bake ends, and the pipeline waits in its ``canary`` stage. A zero-length bake (no minimum time
    or answers) is judged at once, here.
    """
    from training import canary

    pv = PolicyVersion.objects.get(pk=job.config["policy_version_id"])
    share = float(job.config.get("canary_share", settings.TRAINING_CANARY_SHARE))
    auto = bool(job.config.get("auto_promote", settings.TRAINING_AUTO_PROMOTE))
    out: dict[str, Any] = {"policy_version_id": pv.pk, "subject": pv.subject, "version": pv.version}
    if share > 0 and current_promoted(pv.subject) is not None:
        bake = canary.BakeConfig.from_dict(job.config.get("canary"))
        rep({"step": 0, "total": 2, "progress": 0.2, "message": f"canary: {pv} at {share:.0%}"})
        dep = start_canary(pv, share, user=job.launched_by, job=job, bake=bake.to_dict(), auto_promote=auto)
        out["canary"] = {"deployment_id": dep.pk, "status": dep.status, "baking": True,
                         "watch_id": pv.canary_watches.order_by("-id").values_list("id", flat=True).first()}
        if dep.status != dep.Status.APPLIED:
            raise TrainingError(f"the canary of {pv} was recorded but the endpoint did not confirm it: {dep.error}")
        if not bake.min_seconds and not bake.min_answers:
            from training.models import Deployment

            result = canary.check_canaries()
            out["canary"].update(baking=False, decision=result.get(str(pv), ""))
            promoted = Deployment.objects.filter(job=job, action=Deployment.Action.PROMOTE, promoted=pv).first()
            if promoted is not None:
                out["promote"] = {"deployment_id": promoted.pk, "status": promoted.status}
                if promoted.status != promoted.Status.APPLIED:
                    raise TrainingError(f"{pv} is promoted in the registry but the endpoint did not confirm it yet "
                                        f"(the reaper keeps retrying): {promoted.error}")
        rep({"step": 2, "total": 2, "progress": 1.0, "message": f"canary of {pv} baking" if out["canary"]["baking"]
             else f"canary of {pv}: {out['canary']['decision']}"})
        return out
    if auto:
        rep({"step": 1, "total": 2, "progress": 0.6, "message": f"promoting {pv}"})
        dep = promote(pv, user=job.launched_by, job=job)
        out["promote"] = {"deployment_id": dep.pk, "status": dep.status}
        if dep.status != dep.Status.APPLIED:
            raise TrainingError(f"{pv} is promoted in the registry but the endpoint did not confirm it yet "
                                f"(the reaper keeps retrying): {dep.error}")
    rep({"step": 2, "total": 2, "progress": 1.0, "message": "deployed"})
    return out


STEPS = {
    Job.Kind.SNAPSHOT: step_snapshot,
    Job.Kind.REWARD_MODEL: step_reward_model,
    Job.Kind.PPO: step_ppo,
    Job.Kind.EVALUATE: step_evaluate,
    Job.Kind.DEPLOY: step_deploy,
    # the report card of one version: not a pipeline stage, queued after deploy (training.benchmarks)
    Job.Kind.BENCHMARKS: step_benchmarks,
}


# ==================================================================================================
# The stage machine
# ==================================================================================================


def _child_config(p: Job, **extra: Any) -> dict:
    keep = ("reward", "algorithm", "ppo", "alt", "ppo_prompts", "per_subject", "eval", "gate", "canary_share",
            "auto_promote", "snapshot", "report_card", "canary")
    return {**{k: p.config[k] for k in keep if k in p.config}, **extra}


def _subjects_for(p: Job, counts: dict) -> list[str]:
    wanted = p.config.get("subjects") or list(SUBJECTS)
    out = []
    for s in wanted:
        c = counts.get(s) or {}
        if int(c.get("train", 0)) + int(c.get("test", 0)) >= settings.TRAINING_MIN_SUBJECT_PAIRS \
                and current_promoted(s) is not None:
            out.append(s)
    return out


def _finish_pipeline(p: Job, status: str, message: str, result: dict | None = None) -> None:
    Job.objects.filter(pk=p.pk).update(status=status, finished_at=timezone.now(), message=message[:300],
                                       progress=1.0 if status == Job.Status.SUCCEEDED else p.progress,
                                       result={**(p.result or {}), **(result or {})},
                                       error="" if status == Job.Status.SUCCEEDED else message)


def advance(pipeline_id: int) -> str:
    """Move a pipeline to its next stage when every job of the current stage has ended."""
    with transaction.atomic():
        p = Job.objects.select_for_update().filter(pk=pipeline_id, kind=Job.Kind.PIPELINE).first()
        if p is None or p.is_terminal:
            return "done"
        stage = p.stage
        current = list(p.children.filter(kind=stage)) if stage else []
        n_done = sum(1 for c in current if c.is_terminal)
        idx = STAGES.index(stage) if stage else -1
        if current and n_done < len(current):
            frac = sum(c.progress if not c.is_terminal else 1.0 for c in current) / len(current)
            Job.objects.filter(pk=p.pk).update(progress=round((idx + frac) / len(STAGES), 4),
                                               heartbeat_at=timezone.now())
            return "waiting"
        if p.cancel_requested:
            _finish_pipeline(p, Job.Status.CANCELLED, "cancelled by an admin")
            return "cancelled"
        ok = [c for c in current if c.status == Job.Status.SUCCEEDED]
        new_jobs: list[Job] = []
        message = ""
        if not stage:
            ensure_initial_versions()
            new_jobs.append(create_job(Job.Kind.SNAPSHOT, _child_config(p), parent=p, user=p.launched_by))
            nxt, message = "snapshot", "freezing the new preference pairs"
        elif stage == "canary":
            return _after_canaries(p)
        elif not ok:
            why = "; ".join(f"{c.kind}{' ' + c.subject if c.subject else ''}: {c.error or c.status}" for c in current)
            _finish_pipeline(p, Job.Status.FAILED, f"{stage} failed: {why}"[:2000])
            return "failed"
        elif stage == "snapshot":
            res = ok[0].result
            new_jobs.append(create_job(Job.Kind.REWARD_MODEL, _child_config(p, snapshot_id=res["snapshot_id"]),
                                       parent=p, user=p.launched_by))
            nxt, message = "reward_model", f"training the reward model on {res['rows']} pairs"
            p.result = {**(p.result or {}), "snapshot_id": res["snapshot_id"], "counts": res.get("counts")}
        elif stage == "reward_model":
            res = ok[0].result
            counts = (p.result or {}).get("counts") or {}
            subjects = _subjects_for(p, counts)
            if not subjects:
                _finish_pipeline(p, Job.Status.FAILED, "no subject has enough new pairs and a promoted version "
                                 f"(need {settings.TRAINING_MIN_SUBJECT_PAIRS}; counts {counts})")
                return "failed"
            for s in subjects:
                new_jobs.append(create_job(Job.Kind.PPO, _child_config(
                    p, snapshot_id=p.result.get("snapshot_id"), reward_model_id=res["reward_model_id"]),
                    subject=s, parent=p, user=p.launched_by))
            nxt, message = "ppo", f"{p.config.get('algorithm', 'ppo').upper()} on {', '.join(subjects)}"
            p.result = {**(p.result or {}), "reward_model_id": res["reward_model_id"],
                        "reward_model_accuracy": res.get("accuracy")}
        elif stage == "ppo":
            alarms = [c.subject for c in ok if c.result.get("overoptimisation_alarm")]
            if alarms:  # recorded on the pipeline too: which subjects' runs were stopped by the alarm
                p.result = {**(p.result or {}), "overoptimisation_alarms": alarms}
            for c in ok:
                new_jobs.append(create_job(Job.Kind.EVALUATE, _child_config(
                    p, policy_version_id=c.result["policy_version_id"]), subject=c.subject, parent=p,
                    user=p.launched_by))
            nxt, message = "evaluate", "evaluating " + ", ".join(f"{c.subject} v{c.result['version']}" for c in ok)
        elif stage == "evaluate":
            passed = [c for c in ok if c.result.get("passed")]
            p.result = {**(p.result or {}), "gate": {c.subject: c.result.get("passed") for c in ok}}
            if not passed:
                Job.objects.filter(pk=p.pk).update(result=p.result)
                _finish_pipeline(p, Job.Status.SUCCEEDED, "no candidate passed the gate; nothing was deployed")
                return "succeeded"
            for c in passed:
                new_jobs.append(create_job(Job.Kind.DEPLOY, _child_config(
                    p, policy_version_id=c.result["policy_version_id"]), subject=c.subject, parent=p,
                    user=p.launched_by))
            nxt, message = "deploy", "deploying " + ", ".join(c.subject for c in passed)
        elif any(c.result.get("canary") for c in ok):  # deploy started canaries: wait for their verdicts
            p.result = {**(p.result or {}), "deployed": {c.subject: c.result for c in ok}}
            p.stage = "canary"
            Job.objects.filter(pk=p.pk).update(
                stage="canary", result=p.result, heartbeat_at=timezone.now(),
                progress=round(STAGES.index("canary") / len(STAGES), 4),
                message=("canary baking: " + ", ".join(f"{c.subject} v{c.result['version']}" for c in ok))[:300])
            return _after_canaries(p)
        else:  # deploy
            from training.benchmarks import queue_after_deploy

            deployed = {c.subject: c.result for c in ok}
            # the full report card: its own jobs (not a stage), so the pipeline's verdict does not wait on it
            cards = queue_after_deploy(p, [r["policy_version_id"] for r in deployed.values()])
            _finish_pipeline(p, Job.Status.SUCCEEDED, "deployed " + ", ".join(
                f"{s} v{r['version']}" for s, r in deployed.items()), {
                "deployed": deployed, "report_card_jobs": [j.pk for j in cards]})
            return "succeeded"
        Job.objects.filter(pk=p.pk).update(stage=nxt, message=message[:300], result=p.result or {},
                                           progress=round((STAGES.index(nxt)) / len(STAGES), 4),
                                           heartbeat_at=timezone.now())
    return nxt


def _after_canaries(p: Job) -> str:
    """The ``canary`` stage: finish once every canary this pipeline started is decided (inside ``advance``)."""
    from training.benchmarks import queue_after_deploy
    from training.models import CanaryWatch

    watches = list(CanaryWatch.objects.filter(pipeline=p).select_related("candidate"))
    if any(w.status == CanaryWatch.Status.BAKING for w in watches):
        Job.objects.filter(pk=p.pk).update(heartbeat_at=timezone.now())
        return "waiting"
    outcome = {w.subject: {"version": w.candidate.version, "status": w.status, "reason": w.reason} for w in watches}
    promoted = [w.candidate for w in watches if w.status == CanaryWatch.Status.PROMOTED]
    cards = queue_after_deploy(p, [pv.pk for pv in promoted]) if promoted else []
    _finish_pipeline(p, Job.Status.SUCCEEDED, "; ".join(
        f"{s} v{o['version']}: canary {o['status'].replace('_', ' ')}" for s, o in outcome.items()) or "no canary",
        {"canary": outcome, "report_card_jobs": [j.pk for j in cards]})
    return "succeeded"


def run_inline(config: dict | None = None, user=None, on_stage=None) -> Job:
    """Run a whole pipeline in this process (management command, benchmark): same steps, no broker."""
    from training import services

    config = validate_pipeline_config(config or {})
    with transaction.atomic():
        if services.running_pipeline() is not None:
            raise TrainingError(f"{services.running_pipeline()} is still running")
        p = Job.objects.create(kind=Job.Kind.PIPELINE, config=config, status=Job.Status.RUNNING,
                               started_at=timezone.now(), launched_by=user if getattr(user, "pk", None) else None)
    _drive_inline(p.pk, on_stage)
    p.refresh_from_db()
    return p


def _drive_inline(pipeline_id: int, on_stage=None) -> None:
    from training import services

    # inline, children are not sent to the broker: this loop runs them itself
    services.INLINE.active = True
    try:
        advance(pipeline_id)
        while True:
            queued = list(Job.objects.filter(parent_id=pipeline_id, status=Job.Status.QUEUED).order_by("id"))
            if not queued:
                break
            for child in queued:
                if on_stage:
                    on_stage(child, "start")
                services.execute_job(child.pk, worker="inline")
                if on_stage:
                    child.refresh_from_db()
                    on_stage(child, "end")
    finally:
        services.INLINE.active = False


def describe_stage_durations(pipeline: Job) -> list[dict[str, Any]]:
    """Wall time per stage (the earliest start to the latest end of its jobs) for tables and the benchmark."""
    rows = []
    for stage in STAGES:
        jobs = list(pipeline.children.filter(kind=stage))
        if not jobs:
            continue
        starts = [j.started_at for j in jobs if j.started_at]
        ends = [j.finished_at for j in jobs if j.finished_at]
        secs = (max(ends) - min(starts)).total_seconds() if starts and ends else None
        rows.append({"stage": stage, "jobs": len(jobs), "seconds": secs,
                     "status": ",".join(sorted({j.status for j in jobs}))})
    return rows


__all__ = ["ALGORITHMS", "STAGES", "STEPS", "alt_config", "alt_defaults", "advance", "default_pipeline_config",
           "validate_pipeline_config", "run_inline",
           "describe_stage_durations", "gate_thresholds", "ppo_prompts"]

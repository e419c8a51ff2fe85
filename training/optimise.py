"""Optimise jobs on the Django side: distil / quantise / prune a version into a candidate variant.

Why here: `rlhf.optimise` makes artefacts from paths and knows nothing of versions; this module checks the
launch (the config is parsed by the technique's own dataclass, so a bad one is refused before a job is
queued), runs the ``optimise`` job step and records the result as a new PolicyVersion of kind
distilled / quantised / pruned with its ``source`` version. The step is registered in
``training.pipeline.STEPS`` when the app loads (``training.apps``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from training.models import EvaluationReport, Job, PolicyVersion
from training.services import JobReporter, TrainingError, create_job, next_version, retire, version_base_path

METHODS = {"quantise": PolicyVersion.Kind.QUANTISED, "prune": PolicyVersion.Kind.PRUNED,
           "distil": PolicyVersion.Kind.DISTILLED}


def parse_config(method: str, config: dict[str, Any] | None) -> Any:
    """The technique's config dataclass (raises TrainingError 400 with the reason)."""
    from rlhf.optimise import OptimiseError
    from rlhf.optimise.distil import DistilConfig
    from rlhf.optimise.prune import PruneConfig
    from rlhf.optimise.quantise import QuantiseConfig

    cls = {"quantise": QuantiseConfig, "prune": PruneConfig, "distil": DistilConfig}.get(method)
    if cls is None:
        raise TrainingError(f"unknown optimisation {method!r}; expected one of {', '.join(METHODS)}")
    if config is not None and not isinstance(config, dict):
        raise TrainingError("the optimisation config must be a JSON object")
    try:
        parsed = cls.from_dict(config or {})
        if method == "quantise":
            parsed.check_runtime()  # bitsandbytes without CUDA is refused here, before a job exists
    except (OptimiseError, TypeError) as exc:
        raise TrainingError(f"bad {method} config: {exc}") from exc
    return parsed


def parse_gate(gate: Any) -> dict[str, Any] | None:
    """The variant gate's settings (``rlhf.optimise.gate.VariantGate`` fields plus ``measure``), or None for
    "no gate" (``gate: false``); 400 with the reason on a bad one."""
    from rlhf.optimise import OptimiseError
    from rlhf.optimise.gate import VariantGate
    from rlhf.optimise.measure import MeasureSpec

    if gate is False:
        return None
    if gate is None or gate is True:
        gate = {}
    if not isinstance(gate, dict):
        raise TrainingError("the gate must be a JSON object (or false for none)")
    gate = {"quality_tolerance": settings.TRAINING_VARIANT_QUALITY_TOLERANCE,
            "speed_factor": settings.TRAINING_VARIANT_SPEED_FACTOR,
            "size_factor": settings.TRAINING_VARIANT_SIZE_FACTOR, **gate}
    measure = gate.pop("measure", None) or {}
    if not isinstance(measure, dict) or set(measure) - MEASURE_KEYS:
        raise TrainingError(f"gate.measure takes only {', '.join(sorted(MEASURE_KEYS))}")
    measure = {"n": settings.TRAINING_VARIANT_QUESTIONS, **measure}
    try:
        parsed = VariantGate(**gate)
        MeasureSpec(base="", **measure)
    except (OptimiseError, TypeError) as exc:
        raise TrainingError(f"bad gate: {exc}") from exc
    return parsed.to_dict() | {"measure": measure}


MEASURE_KEYS = {"n", "concurrency", "new_tokens", "rounds", "threads"}


def launch_optimise(version: PolicyVersion | int, method: str, config: dict[str, Any] | None = None,
                    user=None, gate: Any = None) -> Job:
    """Queue an ``optimise`` job for `version` (checked first: nothing is queued on a bad request)."""
    pv = version if isinstance(version, PolicyVersion) else PolicyVersion.objects.filter(pk=version).first()
    if pv is None:
        raise TrainingError(f"policy version {version} does not exist", 404)
    if pv.kind != PolicyVersion.Kind.ADAPTER:
        raise TrainingError(f"{pv} is already an optimised variant ({pv.kind}); optimise its source instead")
    if pv.status in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.FAILED):
        raise TrainingError(f"{pv} is {pv.status}; only a finished version can be optimised")
    parsed = parse_config(method, config)
    gate_cfg = parse_gate(gate)
    with transaction.atomic():
        return create_job(Job.Kind.OPTIMISE, {"policy_version_id": pv.pk, "method": method,
                                              "config": parsed.to_dict(), "gate": gate_cfg if gate_cfg is not None
                                              else False}, subject=pv.subject, user=user)


def launch_variant_gate(version: PolicyVersion | int, user=None, gate: Any = None) -> Job:
    """Queue the gate of an optimised variant against its source (an ``evaluate`` job; checked first)."""
    pv = version if isinstance(version, PolicyVersion) else PolicyVersion.objects.filter(pk=version).first()
    if pv is None:
        raise TrainingError(f"policy version {version} does not exist", 404)
    if pv.kind == PolicyVersion.Kind.ADAPTER or pv.source_id is None:
        raise TrainingError(f"{pv} is not an optimised variant: its gate is the pipeline's evaluate step")
    if pv.status not in (PolicyVersion.Status.CANDIDATE, PolicyVersion.Status.CANARY):
        raise TrainingError(f"{pv} is {pv.status}; only a candidate (or canary) variant is gated", 409)
    gate_cfg = parse_gate(gate) or parse_gate({})
    with transaction.atomic():
        return create_job(Job.Kind.EVALUATE, {"policy_version_id": pv.pk, "variant": True, "gate": gate_cfg},
                          subject=pv.subject, user=user)


def variants_root() -> Path:
    return Path(settings.TUTOR_MODELS_DIR) / "optimised"


def variant_dir(subject: str, version: int, method: str) -> Path:
    """Where the variant `version` of `subject` made by `method` lives (its base and adapters)."""
    return variants_root() / subject / f"v{version}-{method}"


def step_optimise(job: Job, rep: JobReporter) -> dict[str, Any]:
    """Build the variant, then record it as a candidate version of the source's subject."""
    from rlhf.manifest import artifact_sha256, read_manifest
    from rlhf.optimise.distil import distil
    from rlhf.optimise.prune import prune
    from rlhf.optimise.quantise import quantise

    method = job.config["method"]
    config = parse_config(method, job.config.get("config"))
    gate_cfg = job.config.get("gate")
    if gate_cfg:  # building fills the first 70 % of the bar, the gate the rest
        rep.scale = 0.7
    source = PolicyVersion.objects.get(pk=job.config["policy_version_id"])
    with transaction.atomic():
        n = next_version(source.subject)
        pv = PolicyVersion.objects.create(subject=source.subject, version=n, method=source.method,
                                          kind=METHODS[method], source=source, parent=source, job=job,
                                          status=PolicyVersion.Status.TRAINING, path="",
                                          note=f"{method} of v{source.version}")
    root = variant_dir(source.subject, n, method)
    base_dir, adapter_dir = root / "base", root / "adapters"
    try:
        if method == "distil":
            out = distil(version_base_path(source), source.path, base_dir if config.mode == "layers" else
                         adapter_dir / source.subject / f"v{n}", config, rep, version=n)
            metrics = out["metrics"]
            path = out["path"]
            base = out["path"] if out["kind"] == "base_model" else ""
        else:
            fn = quantise if method == "quantise" else prune
            out = fn(version_base_path(source), base_dir, config, rep, adapters={source.subject: source.path},
                     adapters_out=adapter_dir, adapter_version=n)
            metrics = out["metrics"] | {f"adapter_{k}": v for k, v in
                                        (out.get("adapter_metrics") or {}).get(source.subject, {}).items()}
            path, base = out["adapters"][source.subject], out["base"]
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    safe = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool | list) or v is None}
    PolicyVersion.objects.filter(pk=pv.pk).update(
        path=str(path), base_path=str(base), sha256=artifact_sha256(path), metrics=safe,
        status=PolicyVersion.Status.CANDIDATE)
    gate_result = None
    if gate_cfg:
        rep.offset, rep.scale = 0.7, 0.3
        gate_result = gate_variant(PolicyVersion.objects.get(pk=pv.pk), gate_cfg, rep, job)
    return {"gate": gate_result,"policy_version_id": pv.pk, "version": n, "kind": METHODS[method], "path": str(path), "base_path": base,
            "optimise": read_manifest(base or path).get("optimise", {}), "size_bytes": metrics.get("size_bytes")}


def _variant_spec(pv: PolicyVersion, measure: dict[str, Any]):
    from rlhf.optimise.measure import MeasureSpec

    base = version_base_path(pv)
    bare = pv.base_path and Path(pv.path).resolve() == Path(pv.base_path).resolve()  # a distilled base, no adapter
    return MeasureSpec(base=base, adapters={} if bare else {pv.subject: pv.path}, subjects=[pv.subject],
                       name=str(pv), **measure)


def _card_quality(pv: PolicyVersion) -> dict[str, float]:
    """{suite: main metric} of the version's latest report card (empty when it has none)."""
    from rlhf.optimise.gate import report_card_quality
    from training.models import BenchmarkReport

    card = BenchmarkReport.objects.filter(policy_version=pv).order_by("-id").first()
    return report_card_quality({"suites": card.suites}) if card is not None else {}


def gate_variant(pv: PolicyVersion, gate_cfg: dict[str, Any], rep: JobReporter, job: Job | None = None
                 ) -> dict[str, Any]:
    """Measure the variant and its source the same way (each in a fresh process), judge the variant against
    the source (``rlhf.optimise.gate.judge_variant``) and record the verdict as the variant's gate report.

    Quality: answer-key accuracy on held-out questions, plus every report-card suite both versions have run.
    A failing variant is retired, as a failing pipeline candidate is; the endpoint is untouched either way.
    """
    from django.utils import timezone

    from rlhf.optimise.gate import VariantGate, judge_variant
    from rlhf.optimise.measure import measure

    gate_cfg = dict(gate_cfg)
    measure_cfg = gate_cfg.pop("measure", None) or {}
    gate = VariantGate(**gate_cfg)
    source = pv.source
    rows = {}
    for i, (role, version) in enumerate((("source", source), ("variant", pv))):
        rep({"progress": i / 2, "message": f"measuring the {role} {version} (size, memory, speed, accuracy)"})
        rows[role] = measure(_variant_spec(version, measure_cfg)) | {"measured_at": timezone.now().isoformat()}
        merged = {**(version.metrics or {}), "measured": rows[role]}
        PolicyVersion.objects.filter(pk=version.pk).update(metrics=merged)
    quality = {role: {"answer_key_accuracy": rows[role]["accuracy"]} for role in rows}
    for role, version in (("source", source), ("variant", pv)):
        quality[role] |= {f"card:{k}": v for k, v in _card_quality(version).items()}
    verdict = judge_variant({"quality": quality["source"], **rows["source"]},
                            {"quality": quality["variant"], **rows["variant"]}, gate)
    # threshold: the largest drop allowed (quality), the ratio to reach (tokens/s: at least; size: at most)
    suites = {c["suite"]: {"candidate": c["variant"], "baseline": c["source"], "threshold": c["tolerance"],
                           "delta": c["delta"], "passed": c["passed"]} for c in verdict["checks"]}
    g = verdict["gains"]
    suites["tokens_per_s"] = {"candidate": rows["variant"]["tokens_per_s"], "baseline": rows["source"]["tokens_per_s"],
                              "threshold": gate.speed_factor, "ratio": g["speed_ratio"], "passed": g["faster"]}
    suites["size_bytes"] = {"candidate": rows["variant"]["size_bytes"], "baseline": rows["source"]["size_bytes"],
                            "threshold": gate.size_factor, "ratio": g["size_ratio"], "passed": g["smaller"]}
    report = EvaluationReport.objects.create(
        candidate=pv, baseline=source, job=job, passed=verdict["passed"], suites=suites,
        thresholds={**verdict["gate"], "measure": measure_cfg, "rule": "every quality suite within its tolerance, "
                    "and faster by speed_factor or smaller by size_factor"},
        failures=verdict["reasons"] if not verdict["passed"] else [])
    if not verdict["passed"]:
        retire(pv, note="failed the variant gate: " + "; ".join(verdict["reasons"])[:230])
        rep.log(f"{pv} failed the variant gate and was retired: {verdict['reasons']}")
    rep({"progress": 1.0, "message": f"variant gate {'passed' if verdict['passed'] else 'failed'}"})
    return {"report_id": report.pk, "passed": verdict["passed"], "policy_version_id": pv.pk,
            "speed_ratio": g["speed_ratio"], "size_ratio": g["size_ratio"], "reasons": verdict["reasons"],
            "accuracy": {"source": rows["source"]["accuracy"], "variant": rows["variant"]["accuracy"]}}


def step_gate_variant(job: Job, rep: JobReporter) -> dict[str, Any]:
    """The ``evaluate`` job for an optimised variant (``launch_variant_gate``)."""
    pv = PolicyVersion.objects.select_related("source").get(pk=job.config["policy_version_id"])
    return gate_variant(pv, parse_gate(job.config.get("gate")) or parse_gate({}), rep, job)


def register() -> None:
    """Add the step to the job runner's table (called from ``TrainingConfig.ready``)."""
    from training import pipeline

    pipeline.STEPS.setdefault(Job.Kind.OPTIMISE, step_optimise)


__all__ = ["gate_variant", "launch_optimise", "launch_variant_gate", "parse_config", "parse_gate", "register",
           "step_gate_variant", "step_optimise"]

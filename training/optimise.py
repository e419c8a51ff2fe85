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

from training.models import Job, PolicyVersion
from training.services import JobReporter, TrainingError, create_job, next_version, version_base_path

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


def launch_optimise(version: PolicyVersion | int, method: str, config: dict[str, Any] | None = None,
                    user=None) -> Job:
    """Queue an ``optimise`` job for `version` (checked first: nothing is queued on a bad request)."""
    pv = version if isinstance(version, PolicyVersion) else PolicyVersion.objects.filter(pk=version).first()
    if pv is None:
        raise TrainingError(f"policy version {version} does not exist", 404)
    if pv.kind != PolicyVersion.Kind.ADAPTER:
        raise TrainingError(f"{pv} is already an optimised variant ({pv.kind}); optimise its source instead")
    if pv.status in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.FAILED):
        raise TrainingError(f"{pv} is {pv.status}; only a finished version can be optimised")
    parsed = parse_config(method, config)
    with transaction.atomic():
        return create_job(Job.Kind.OPTIMISE, {"policy_version_id": pv.pk, "method": method,
                                              "config": parsed.to_dict()}, subject=pv.subject, user=user)


def variants_root() -> Path:
    return Path(settings.TUTOR_MODELS_DIR) / "optimised"


def step_optimise(job: Job, rep: JobReporter) -> dict[str, Any]:
    """Build the variant, then record it as a candidate version of the source's subject."""
    from rlhf.manifest import artifact_sha256, read_manifest
    from rlhf.optimise.distil import distil
    from rlhf.optimise.prune import prune
    from rlhf.optimise.quantise import quantise

    method = job.config["method"]
    config = parse_config(method, job.config.get("config"))
    source = PolicyVersion.objects.get(pk=job.config["policy_version_id"])
    with transaction.atomic():
        n = next_version(source.subject)
        pv = PolicyVersion.objects.create(subject=source.subject, version=n, method=source.method,
                                          kind=METHODS[method], source=source, parent=source, job=job,
                                          status=PolicyVersion.Status.TRAINING, path="",
                                          note=f"{method} of v{source.version}")
    root = variants_root() / source.subject / f"v{n}-{method}"
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
    return {"policy_version_id": pv.pk, "version": n, "kind": METHODS[method], "path": str(path), "base_path": base,
            "optimise": read_manifest(base or path).get("optimise", {}), "size_bytes": metrics.get("size_bytes")}


def register() -> None:
    """Add the step to the job runner's table (called from ``TrainingConfig.ready``)."""
    from training import pipeline

    pipeline.STEPS.setdefault(Job.Kind.OPTIMISE, step_optimise)


__all__ = ["launch_optimise", "parse_config", "register", "step_optimise"]

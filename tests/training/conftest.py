"""Fixtures for training/ tests: a models dir per test, v1 adapters installed, an endpoint on them.

``tiny_base_path`` / ``tiny_adapters`` (tests/fixtures/models.py) give the tiny demo model and a v1
LoRA adapter per subject; here they are copied into the registry's layout under a temporary
``TUTOR_MODELS_DIR`` so each test starts from v1 promoted and nothing leaks between tests.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.endpoint import start_endpoint

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")

# sized for seconds on 2 CPU cores with the tiny demo model
TINY_PIPELINE = {
    "reward": {"epochs": 2.0, "batch_size": 8, "logging_steps": 1},
    "ppo": {"steps": 3, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 24},
    "ppo_prompts": 16,
    # greedy: the tests compare fixed answers (the demo default samples at the chat temperature)
    "eval": {"n_prompts": 12, "kl_samples": 6, "max_new_tokens": 24, "temperature": 0.0, "samples_per_prompt": 1},
    "canary_share": 0.0,
    # the full report card after a deploy is its own job (tests/training/test_benchmarks*.py cover it)
    "report_card": {"enabled": False},
}


@pytest.fixture
def models_dir(tmp_path, settings, tiny_base_path, tiny_adapters) -> Path:
    """A fresh TUTOR_MODELS_DIR with v1 of every subject, and TUTOR_BASE_MODEL = the tiny model."""
    root = tmp_path / "models"
    for subject, src in tiny_adapters.items():
        shutil.copytree(src, root / "adapters" / subject / "v1")
    settings.TUTOR_MODELS_DIR = root
    settings.TUTOR_BASE_MODEL = str(tiny_base_path)
    settings.TRAINING_DEPLOY_ATTEMPTS = 3
    return root


@pytest.fixture
def endpoint(models_dir, tiny_base_path, tmp_path, settings) -> Iterator:
    """A real endpoint process serving the v1 adapters of ``models_dir``; settings point at it."""
    token = secrets.token_urlsafe(16)
    with start_endpoint(tiny_base_path, models_dir / "adapters", tmp_path / "endpoint-var", admin_token=token,
                        args=["--threads", "1"]) as server:
        settings.TUTOR_ENDPOINT_URL = server.url
        settings.TUTOR_ENDPOINT_ADMIN_TOKEN = token
        settings.TUTOR_DEPLOY_TARGET = "local"
        yield server


def make_version(pv_parent, version: int, status: str = "candidate"):
    """A registry row for a copy of the parent's artefact as version N (real files, real hash)."""
    from rlhf.manifest import artifact_sha256, read_manifest, write_artifact
    from training.models import PolicyVersion

    src = Path(pv_parent.path)
    dest = src.parent / f"v{version}"
    if not dest.exists():
        parent = read_manifest(src)

        def populate(tmp: Path) -> None:
            for f in src.iterdir():
                if f.is_file() and f.name not in ("manifest.json", "adapter_meta.json"):
                    shutil.copy2(f, tmp / f.name)
            (tmp / "adapter_meta.json").write_text(json.dumps(
                {"subject": pv_parent.subject, "version": version, "method": parent.get("method", "lora")}))

        write_artifact(dest, "adapter", populate, base_model=parent.get("base_model"),
                       base_model_sha256=parent.get("base_model_sha256"), parent=pv_parent.sha256,
                       config=parent.get("config"), extra={"subject": pv_parent.subject, "version": version,
                                                           "method": parent.get("method", "lora")})
    return PolicyVersion.objects.create(subject=pv_parent.subject, version=version, status=status,
                                        parent=pv_parent, path=str(dest), sha256=artifact_sha256(dest))


def built_variant(subject: str, method: str = "quantise", config: dict | None = None, gate=False):
    """(v1 of `subject`, its optimised variant, the job): a real optimise job run here (ungated by default)."""
    from training import services
    from training.models import Job, PolicyVersion
    from training.optimise import launch_optimise

    services.ensure_initial_versions()
    source = PolicyVersion.objects.get(subject=subject, version=1)
    job = launch_optimise(source, method, config or {}, gate=gate)
    assert services.execute_job(job.pk, worker="test") == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    return source, PolicyVersion.objects.get(pk=job.result["policy_version_id"]), job


def pass_gate(pv) -> None:
    from training.models import EvaluationReport

    EvaluationReport.objects.create(candidate=pv, passed=True, suites={"manual": {"passed": True}})


PERMISSIVE_GATE = {"min_win_rate": 0.0, "accuracy_tolerance": 1.0, "max_kl": 1e6, "max_length_drift": 1e3,
                   "max_unsafe_rate": 1.0}


def seed_rankings(subject: str = "mathematics", n_tasks: int = 16, labelers: int = 2) -> int:
    """Rankings stored through the feedback services: tasks whose completions are the reference answer
    and wrong variants, ranked by the simulated labelers' preference. Returns the new pairs."""
    import random

    from feedback.selectors import new_pairs_count
    from feedback.services import add_prompt, create_task, next_task, submit_ranking
    from rlhf.corpus import seed_prompts
    from training.simulation import rank
    from tutor.accounts import create_user

    rng = random.Random(0)
    items = seed_prompts(subject, n_tasks, seed=11)
    for i, it in enumerate(items):
        prompt, _ = add_prompt(subject=subject, text=it.question, source="seed", source_ref=f"test:{i}")
        wrong = [items[(i + j) % len(items)].answer for j in (1, 2, 3)]
        create_task(prompt=prompt, completions=[it.answer, *wrong])
    users = [create_user(username=f"seed-labeler-{subject}-{k}", password="x", role="labeler",
                         validate_password=False) for k in range(labelers)]
    for user in users:
        while (lease := next_task(user)) is not None:
            task = lease.assignment.task
            comps = [{"id": c.pk, "text": c.text} for c in task.completions.all()]
            submit_ranking(user, task.pk, rank(subject, task.prompt.text, comps, 0.0, rng))
    return new_pairs_count(None)

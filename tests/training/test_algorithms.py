"""The pipeline's policy step with a chosen algorithm: PPO (ours) or TRL's RLOO / GRPO / DPO.

Why: the algorithm is picked per pipeline run (``config["algorithm"]``); whichever runs, the candidate
must carry how it was trained (lineage), go through the same gate, and report progress and honour
cancellation through the job like PPO does. The pipeline runs inline (``pipeline.run_inline``: the same
step functions a Celery worker runs) on the tiny model with 2-step settings.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse

from tests.fixtures.processes import wait_until
from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, seed_rankings
from training import pipeline, selectors, services
from training.models import EvaluationReport, Job, PolicyVersion
from training.services import TrainingError
from tutor.accounts import create_user

SUBJECT = "mathematics"
TINY_ALT = {"steps": 2, "batch_size": 4, "num_generations": 2, "max_new_tokens": 8, "max_length": 128}
ALGO_PIPELINE = {
    **TINY_PIPELINE,
    "subjects": [SUBJECT],
    "snapshot": {"scope": "all", "include_imported": False},
    "alt": TINY_ALT,
    "gate": PERMISSIVE_GATE,
    "eval": {"n_prompts": 6, "kl_samples": 4, "max_new_tokens": 16},
    "auto_promote": False,
}


def _admin(client):
    client.force_login(
        create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False)
    )
    return client


# ----------------------------------------------------------------------------------------------------------------
# Validation: a bad algorithm or alt section is refused before anything is created
# ----------------------------------------------------------------------------------------------------------------


def test_defaults_carry_the_algorithm_and_the_alt_section() -> None:
    from rlhf.alternatives import AltConfig

    full = pipeline.validate_pipeline_config({})
    assert full["algorithm"] == "ppo"
    assert full["alt"] == {k: v for k, v in AltConfig().to_dict().items() if k != "algo"}
    rloo = pipeline.validate_pipeline_config({"algorithm": "rloo", "alt": TINY_ALT})
    assert pipeline.alt_config(rloo) == AltConfig(algo="rloo", **TINY_ALT)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"algorithm": "ppo2"}, "unknown algorithm 'ppo2'; expected one of ppo, rloo, grpo, dpo"),
        ({"algorithm": "rloo", "alt": {"batch_size": 6}}, "multiple of num_generations"),
        ({"alt": {"nonsense": 1}}, "unknown config field 'alt.nonsense'"),
        ({"alt": {"algo": "dpo"}}, "top-level 'algorithm'"),
        ({"algorithm": "grpo", "alt": {"steps": 0}}, "invalid alt config for grpo"),
        ({"reward": {"pooling": "mean"}}, "needs a BERT-family encoder"),  # the demo backbone is a decoder
    ],
)
def test_bad_algorithm_config_is_refused_and_creates_nothing(client, models_dir, config, message) -> None:
    with pytest.raises(TrainingError, match=message.replace("(", r"\(")):
        pipeline.validate_pipeline_config(config)
    _admin(client)
    r = client.post(
        reverse("api-studio-jobs"), {"kind": "pipeline", "config": config}, content_type="application/json"
    )
    assert r.status_code == 400 and message in r.json()["detail"], r.content
    r = client.post(
        reverse("api-studio-jobs"),
        {"kind": "ppo", "subject": SUBJECT, "config": {**config, "reward_model_id": 1}},
        content_type="application/json",
    )
    assert r.status_code == 400 and message in r.json()["detail"], r.content
    assert not Job.objects.exists() and not PolicyVersion.objects.filter(version__gt=1).exists()


@pytest.mark.django_db
def test_launch_form_has_the_algorithm_select(client, models_dir) -> None:
    _admin(client)
    page = client.get(reverse("training:launch")).content.decode()
    assert 'name="algorithm"' in page and '<option value="rloo"' in page
    assert '<option value="ppo" selected>' in page and "&quot;alt&quot;" in page  # the JSON has the section
    r = client.post(
        reverse("training:launch"),
        {"kind": "pipeline", "algorithm": "sgd", "config": json.dumps(ALGO_PIPELINE)},
    )
    assert r.status_code == 400 and "unknown algorithm &#x27;sgd&#x27;" in r.content.decode()
    assert not Job.objects.exists()


# ----------------------------------------------------------------------------------------------------------------
# The whole pipeline with RLOO and with DPO
# ----------------------------------------------------------------------------------------------------------------


def _run(algorithm: str) -> tuple[Job, PolicyVersion]:
    seed_rankings(SUBJECT, n_tasks=16)
    p = pipeline.run_inline({**ALGO_PIPELINE, "algorithm": algorithm})
    assert p.status == Job.Status.SUCCEEDED, (p.message, p.error)
    step = p.children.get(kind=Job.Kind.PPO)
    assert step.status == Job.Status.SUCCEEDED and step.result["algorithm"] == algorithm
    assert step.config["algorithm"] == algorithm and step.config["alt"]["steps"] == 2
    pv = PolicyVersion.objects.get(pk=step.result["policy_version_id"])
    return p, pv


def _check_candidate(p: Job, pv: PolicyVersion, algorithm: str) -> None:
    from rlhf.manifest import read_manifest, verify

    assert pv.status == PolicyVersion.Status.CANDIDATE and pv.version == 2 and pv.subject == SUBJECT
    assert pv.metrics["algorithm"] == algorithm and pv.metrics["config"]["steps"] == 2
    assert algorithm.upper() in pv.note
    verify(pv.path)
    assert read_manifest(pv.path)["config"]["algorithm"] == algorithm
    chain = selectors.lineage(pv)
    assert [(n["version"], n["algorithm"]) for n in chain] == [(2, algorithm), (1, None)]
    assert selectors.lineage_complete(pv) and pv.snapshot_id and pv.reward_model_id
    report = EvaluationReport.objects.get(candidate=pv)
    assert report.passed and report.suites and report.baseline.version == 1
    # progress reached the job through the reporter: one row per optimiser step, then "saved"
    step = p.children.get(kind=Job.Kind.PPO)
    steps = [m["step"] for m in step.metrics if m.get("step")]
    assert steps and max(steps) == 2 and step.progress == 1.0
    assert any(m.get("algorithm") == algorithm for m in step.metrics)
    assert f"with {algorithm.upper()}" in step.log and f"{algorithm}: saved" in step.log
    assert p.children.get(kind=Job.Kind.DEPLOY).status == Job.Status.SUCCEEDED


@pytest.mark.ml
@pytest.mark.django_db(transaction=True)
def test_pipeline_with_rloo_trains_gates_and_records_the_algorithm(client, models_dir) -> None:
    p, pv = _run("rloo")
    _check_candidate(p, pv, "rloo")
    history = [m for m in p.children.get(kind=Job.Kind.PPO).metrics if m.get("step")]
    # RLOO's reward and KL to the starting version reached the job's curves
    assert any("kl" in m and "reward" in m for m in history)
    assert "rloo step 2/2" in p.children.get(kind=Job.Kind.PPO).log  # the reporter's messages name it
    page = _admin(client).get(reverse("training:version", args=[pv.pk])).content.decode()
    assert "trained with" in page and "RLOO" in page
    # the gate report says what its numbers are against: the KL's reference, the accuracy's noise margin
    assert "KL to the promoted version" in page and "may trail by" in page


@pytest.mark.ml
@pytest.mark.django_db(transaction=True)
def test_pipeline_with_dpo_trains_from_the_subjects_pairs(models_dir) -> None:
    p, pv = _run("dpo")
    _check_candidate(p, pv, "dpo")
    assert pv.metrics["config"]["algo"] == "dpo"


@pytest.mark.ml
@pytest.mark.django_db(transaction=True)
def test_cancelling_an_rloo_pipeline_stops_between_steps(models_dir) -> None:
    """An admin's cancel reaches TRL's training loop through the reporter; the version is marked failed."""
    seed_rankings(SUBJECT, n_tasks=16)
    errors: list[BaseException] = []

    def cancel_after_first_step(job_id: int, pipeline_id: int) -> None:
        try:
            wait_until(
                lambda: any(m.get("step") for m in Job.objects.get(pk=job_id).metrics),
                120,
                "the first RLOO step",
            )
            services.request_cancel(pipeline_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads: list[threading.Thread] = []

    def on_stage(child: Job, when: str) -> None:
        if child.kind == Job.Kind.PPO and when == "start":
            t = threading.Thread(
                target=cancel_after_first_step, args=(child.pk, child.parent_id), daemon=True
            )
            t.start()
            threads.append(t)

    config = {**ALGO_PIPELINE, "algorithm": "rloo", "alt": {**TINY_ALT, "steps": 500}}
    p = pipeline.run_inline(config, on_stage=on_stage)
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    step = p.children.get(kind=Job.Kind.PPO)
    assert p.status == Job.Status.CANCELLED and step.status == Job.Status.CANCELLED
    done = max(m["step"] for m in step.metrics if m.get("step"))
    assert 1 <= done < 500
    pv = PolicyVersion.objects.get(job=step)
    assert pv.status == PolicyVersion.Status.FAILED and pv.metrics["algorithm"] == "rloo"
    assert not Path(pv.path).exists()  # nothing partial left in the registry
    assert not p.children.filter(kind=Job.Kind.EVALUATE).exists()

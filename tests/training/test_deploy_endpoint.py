"""Promotion, canary, rollback and the gate against a real endpoint process (LocalDeployer)."""

from __future__ import annotations

import pytest

from tests.training.conftest import make_version, pass_gate
from training import pipeline, services
from training.models import EvaluationReport, Job, PolicyVersion

pytestmark = pytest.mark.django_db


def served(endpoint, subject: str) -> dict:
    return services.get_deployer().state()[subject]


def answer_version(endpoint, subject: str, key: str = "conv-1") -> int:
    out = endpoint.client().generate(prompt="What is 2 + 2?", subject=subject, routing_key=key,
                                     max_new_tokens=2)
    return out["outputs"][0]["adapter"]["version"]


@pytest.fixture
def v1(endpoint):
    services.ensure_initial_versions()
    return PolicyVersion.objects.get(subject="mathematics", version=1)


def test_promote_then_rollback_on_the_endpoint_and_in_the_db(endpoint, v1):
    assert served(endpoint, "mathematics")["promoted"] == 1
    v2 = make_version(v1, 2)
    pass_gate(v2)
    dep = services.promote(v2)
    assert dep.status == "applied", dep.error
    assert served(endpoint, "mathematics")["promoted"] == 2
    assert answer_version(endpoint, "mathematics") == 2

    dep = services.rollback("mathematics")
    assert dep.status == "applied", dep.error
    state = served(endpoint, "mathematics")
    assert (state["promoted"], state["candidate"]) == (1, None)
    assert answer_version(endpoint, "mathematics") == 1
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("promoted", "retired")


def test_canary_share_then_retire(endpoint, v1):
    v2 = make_version(v1, 2)
    pass_gate(v2)
    dep = services.start_canary(v2, 0.5)
    assert dep.status == "applied", dep.error
    state = served(endpoint, "mathematics")
    assert (state["promoted"], state["candidate"], state["share"]) == (1, 2, 0.5)
    seen = {answer_version(endpoint, "mathematics", f"conv-{i}") for i in range(12)}
    assert seen == {1, 2}  # sticky per conversation, both arms in use
    services.retire(v2)
    state = served(endpoint, "mathematics")
    assert (state["promoted"], state["candidate"]) == (1, None)


def test_reconcile_reapplies_a_deployment_the_endpoint_lost(endpoint, v1):
    v2 = make_version(v1, 2)
    pass_gate(v2)
    services.promote(v2)
    endpoint.client().set_routing("mathematics", 1, None, 0.0)  # drift, e.g. an endpoint restart
    assert served(endpoint, "mathematics")["promoted"] == 1
    assert services.reconcile_deployments()["mathematics"] == "applied"
    assert served(endpoint, "mathematics")["promoted"] == 2


def test_gate_failure_retires_candidate_and_leaves_the_endpoint_alone(endpoint, v1, tiny_base_path):
    v2 = make_version(v1, 2)
    before = services.get_deployer().state()
    job = Job.objects.create(kind="evaluate", subject="mathematics", status="running", config={
        "policy_version_id": v2.pk, "eval": {"n_prompts": 6, "kl_samples": 4, "max_new_tokens": 16,
                                             "suites": ["answer_key_accuracy", "kl", "length_drift"]},
        # impossible: the candidate's KL to the reference must be below zero
        "gate": {**pipeline.gate_thresholds(), "max_kl": -1.0}})
    result = pipeline.step_evaluate(job, services.JobReporter(job))
    assert result["passed"] is False
    v2.refresh_from_db()
    assert v2.status == "retired" and "failed the gate" in v2.note
    report = EvaluationReport.objects.get(candidate=v2)
    assert not report.passed and report.failures and report.samples
    assert services.get_deployer().state() == before
    with pytest.raises(services.TrainingError):
        services.promote(v2)  # retired without ever being promoted

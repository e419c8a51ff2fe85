"""Optimise jobs: a quantised / pruned variant becomes a candidate version linked to its source; bad configs queue nothing."""

from __future__ import annotations

import pytest

from rlhf.manifest import artifact_sha256, verify
from tests.training.conftest import built_variant
from training import services
from training.models import Job, PolicyVersion
from training.optimise import launch_optimise, launch_variant_gate

pytestmark = pytest.mark.ml


@pytest.mark.django_db(transaction=True)  # execute_job closes the connection like a worker
def test_quantise_job_makes_a_candidate_variant_with_its_lineage(models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    job = launch_optimise(v1, "quantise", {}, gate=False)  # gated: tests/training/test_optimise_deploy.py
    assert job.kind == "optimise" and job.subject == "mathematics"
    assert services.execute_job(job.pk, worker="test") == "succeeded"
    job.refresh_from_db()
    variant = PolicyVersion.objects.get(pk=job.result["policy_version_id"])
    assert (variant.kind, variant.source, variant.status, variant.version) == ("quantised", v1, "candidate", 2)
    manifest = verify(variant.path)
    assert manifest["version"] == 2 and manifest["subject"] == "mathematics"
    assert variant.sha256 == artifact_sha256(variant.path)
    assert manifest["base_model_sha256"] == artifact_sha256(variant.base_path)
    assert verify(variant.base_path)["optimise"]["source_adapter_sha256"] == v1.sha256
    assert variant.metrics["size_ratio"] < 0.6 and job.progress == 1.0


@pytest.mark.django_db(transaction=True)
def test_prune_job_records_the_recovery_curve(models_dir):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    job = launch_optimise(v1, "prune", {"mode": "structured", "sparsity": 0.5, "recovery_steps": 3,
                                        "recovery_examples": 8, "heldout_examples": 4}, gate=False)
    assert services.execute_job(job.pk, worker="test") == "succeeded"
    job.refresh_from_db()
    variant = PolicyVersion.objects.get(pk=job.result["policy_version_id"])
    assert variant.kind == "pruned" and variant.source == v1
    assert [m["recovery_loss"] for m in job.metrics if "recovery_loss" in m]
    assert "adapter_heldout_loss_after_recovery" in variant.metrics


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "config"), [
    ("quantise", {"scheme": "bnb_int4"}), ("prune", {"sparsity": 1.0}), ("distil", {"temperature": 0}),
    ("distil", {"alpha": 2}), ("shrink", {}), ("prune", {"nope": 1}),
])
def test_bad_requests_queue_nothing(models_dir, method, config):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    with pytest.raises(services.TrainingError):
        launch_optimise(v1, method, config)
    assert not Job.objects.filter(kind="optimise").exists()


@pytest.mark.django_db(transaction=True)
def test_management_command_runs_inline_and_refuses_bad_input(models_dir):
    import json

    from django.core.management import CommandError, call_command

    services.ensure_initial_versions()
    with pytest.raises(CommandError, match="sparsity"):
        call_command("optimise", "history", "1", "prune", "--config", '{"sparsity": 2}')
    with pytest.raises(CommandError, match="does not exist"):
        call_command("optimise", "history", "9", "quantise")
    assert not Job.objects.exists()
    from io import StringIO

    out = StringIO()
    call_command("optimise", "language", "1", "quantise", "--inline", "--no-gate", stdout=out)
    result = json.loads(out.getvalue())
    assert result["kind"] == "quantised" and PolicyVersion.objects.get(pk=result["policy_version_id"]).source.version == 1


@pytest.mark.django_db(transaction=True)
def test_a_variants_report_card_runs_on_the_variants_own_base(models_dir):
    from training.benchmarks import launch_report_card
    from training.models import BenchmarkReport

    v1, variant, _ = built_variant("mathematics")
    assert services.version_base_path(variant) == variant.base_path != services.version_base_path(v1)
    for pv in (v1, variant):
        card_job = launch_report_card(pv, suites=["corpus_mc"], limit=2)
        assert services.execute_job(card_job.pk, worker="test") == "succeeded"
    cards = {r.policy_version_id: r for r in BenchmarkReport.objects.all()}
    assert cards[variant.pk].model["base"] == variant.base_path
    assert cards[v1.pk].model["base"] == services.base_model_path()
    # the variant gate then judges every report-card suite both have, beside the answer-key accuracy
    gate = launch_variant_gate(variant, gate={"quality_tolerance": 1.0, "size_factor": 0.9,
                                              "measure": {"n": 2, "concurrency": 1, "new_tokens": 4, "rounds": 1}})
    assert services.execute_job(gate.pk, worker="test") == "succeeded"
    report = variant.evaluations.get()
    assert report.passed and {"answer_key_accuracy", "card:corpus_mc", "size_bytes"} <= set(report.suites)
    assert report.suites["card:corpus_mc"]["baseline"] == cards[v1.pk].suites["corpus_mc"]["metrics"]["acc"]["value"]

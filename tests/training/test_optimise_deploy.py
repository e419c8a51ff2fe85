"""An optimised variant on its own base, end to end on real processes: the optimise job builds it and gates
it against its source, then canary -> promote -> rollback on a real endpoint, which serves the variant from
a child endpoint process of the variant's base (serving.bases)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from serving.client import EndpointError
from serving.deploy.local import LocalDeployer
from tests.training.conftest import built_variant, make_version, pass_gate
from training import services
from training.models import Job, PolicyVersion
from training.optimise import launch_optimise, launch_variant_gate

pytestmark = [pytest.mark.ml, pytest.mark.django_db(transaction=True)]

QUICK = {"n": 4, "concurrency": 2, "new_tokens": 8, "rounds": 1}


def answer_version(endpoint, key: str, subject: str = "mathematics") -> int:
    out = endpoint.client().generate(prompt="What is 2 + 2?", subject=subject, routing_key=key, max_new_tokens=2)
    return out["outputs"][0]["adapter"]["version"]


def served(subject: str = "mathematics") -> dict:
    return services.get_deployer().state()[subject]


def test_quantised_variant_gate_canary_promote_rollback(endpoint):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="mathematics", version=1)
    # int8 is ~0.4x the size: a size gate it passes; quality may not drop at all on the tiny model's 4 questions
    job = launch_optimise(v1, "quantise", {}, gate={"quality_tolerance": 0.5, "size_factor": 0.8, "measure": QUICK})
    assert services.execute_job(job.pk, worker="test") == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    variant = PolicyVersion.objects.get(pk=job.result["policy_version_id"])
    report = variant.evaluations.get()
    assert report.passed, report.failures
    assert report.baseline == v1 and variant.source == v1 and variant.status == "candidate"
    measured, source_measured = variant.metrics["measured"], PolicyVersion.objects.get(pk=v1.pk).metrics["measured"]
    assert measured["size_bytes"] < 0.8 * source_measured["size_bytes"]
    assert report.suites["size_bytes"]["passed"] and "answer_key_accuracy" in report.suites
    assert job.progress == 1.0

    dep = services.start_canary(variant, 0.5)
    assert dep.status == "applied", dep.error
    state = served()
    assert (state["promoted"], state["candidate"], state["share"]) == (1, variant.version, 0.5)
    listing = endpoint.client().list_adapters()
    [child] = listing["other_bases"]
    assert child["alive"] and child["base"] == os.path.realpath(variant.base_path)
    assert {a["version"]: a.get("upstream") is not None for a in listing["adapters"]
            if a["subject"] == "mathematics"} == {1: False, variant.version: True}
    seen = {answer_version(endpoint, f"conv-{i}") for i in range(12)}
    assert seen == {1, variant.version}  # sticky per conversation; the variant's arm answers from its process

    dep = services.promote(variant)
    assert dep.status == "applied", dep.error
    assert answer_version(endpoint, "conv-x") == variant.version
    dep = services.rollback("mathematics")
    assert dep.status == "applied", dep.error
    assert (served()["promoted"], served()["candidate"]) == (1, None)
    assert answer_version(endpoint, "conv-x") == 1
    variant.refresh_from_db()
    assert variant.status == "retired" and PolicyVersion.objects.get(pk=v1.pk).status == "promoted"
    # nothing routes to the retired variant: its base's process is stopped, not left holding memory
    listing = endpoint.client().list_adapters()
    assert listing["other_bases"] == [] and variant.version not in {
        a["version"] for a in listing["adapters"] if a["subject"] == "mathematics"}


class CountingDeployer(LocalDeployer):
    """The real local deployer, remembering which versions it was asked to unpublish."""

    def __init__(self, real: LocalDeployer) -> None:
        super().__init__(endpoint_url=real.endpoint_url, admin_token=real.client.admin_token)
        self.unpublished: list[int] = []

    def unpublish(self, subject: str, version: int) -> dict:
        self.unpublished.append(version)
        return super().unpublish(subject, version)


def test_a_released_variant_is_not_asked_about_again_until_it_serves_again(endpoint):
    """release_retired_variants records the release on the version and skips it on the next promote; a rollback
    that serves it again clears the record, so its next retirement releases it again."""
    v1, variant, _ = built_variant("mathematics")
    pass_gate(variant)
    assert services.promote(variant).status == "applied"
    v_a, v_b = (make_version(v1, variant.version + i) for i in (1, 2))
    deployer = CountingDeployer(services.get_deployer())
    pass_gate(v_a)
    assert services.promote(v_a, deployer=deployer).status == "applied"
    variant.refresh_from_db()
    assert deployer.unpublished == [variant.version] and variant.released_at is not None
    assert endpoint.client().list_adapters()["other_bases"] == []
    deployer.unpublished.clear()
    pass_gate(v_b)
    assert services.promote(v_b, deployer=deployer).status == "applied"
    assert deployer.unpublished == []  # already released: not listed for again
    assert services.rollback("mathematics", deployer=deployer).status == "applied"  # back to v_a
    assert services.rollback("mathematics", deployer=deployer).status == "applied"  # back to the variant
    variant.refresh_from_db()
    assert variant.status == "promoted" and variant.released_at is None and deployer.unpublished == []
    assert answer_version(endpoint, "conv-y") == variant.version
    v_c = make_version(v1, variant.version + 3)
    pass_gate(v_c)
    assert services.promote(v_c, deployer=deployer).status == "applied"
    variant.refresh_from_db()
    assert deployer.unpublished == [variant.version] and variant.released_at is not None
    assert endpoint.client().list_adapters()["other_bases"] == []


def test_a_killed_variant_process_is_restarted_and_the_request_told_to_retry(endpoint):
    _, variant, _ = built_variant("history")
    client = endpoint.client()
    client.load_adapter("history", variant.version, variant.path, base=variant.base_path)
    client.set_routing("history", variant.version)
    assert answer_version(endpoint, "k", "history") == variant.version
    [child] = client.list_adapters()["other_bases"]
    os.kill(child["pid"], signal.SIGKILL)
    body = {"prompt": "Who?", "subject": "history", "parameters": {"max_new_tokens": 2}}
    deadline = time.monotonic() + 120
    statuses = []
    while time.monotonic() < deadline:  # 503 + Retry-After while the child restarts, then answers again
        r = httpx.post(endpoint.url + "/invocations", json=body, timeout=60)
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers.get("retry-after") and "restarted" in r.json()["error"]
        time.sleep(float(r.headers["retry-after"]) / 4)
    assert statuses[0] == 503 and statuses[-1] == 200, statuses
    [child2] = client.list_adapters()["other_bases"]
    assert child2["pid"] != child["pid"] and child2["restarts"] == 1
    client.set_routing("history", 1)
    client.unload_adapter("history", variant.version)
    assert client.list_adapters()["other_bases"] == []  # the base's last version gone: its process stopped
    # a base that fails verification is refused with a reason, and starts nothing
    weights = next(p for p in Path(variant.base_path).iterdir() if p.suffix in (".safetensors", ".pt", ".bin"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(EndpointError) as err:
        client.load_adapter("history", variant.version, variant.path, base=variant.base_path)
    assert err.value.status == 422 and "verification failed" in err.value.message
    assert client.list_adapters()["other_bases"] == []


def test_a_variant_that_fails_its_gate_is_retired_and_never_deployed(endpoint):
    _, variant, _ = built_variant("language")
    before = services.get_deployer().state()  # the variant was built but never published
    gate = launch_variant_gate(variant, gate={"speed_factor": 100.0, "size_factor": 0.01, "measure": QUICK})
    assert services.execute_job(gate.pk, worker="test") == "succeeded"
    variant.refresh_from_db()
    report = variant.evaluations.get()
    assert not report.passed and variant.status == "retired"
    assert any("neither 100.0x faster" in f for f in report.failures)
    with pytest.raises(services.TrainingError, match="retired"):
        services.start_canary(variant, 0.5)
    assert services.get_deployer().state() == before


@pytest.mark.parametrize(("gate", "message"), [
    ({"quality_tolerance": 2}, "tolerances"), ({"speed_factor": 0}, "positive"), ({"measure": {"n": 0}}, "positive"),
    ({"measure": {"subjects": ["x"]}}, "measure takes only"), ("yes", "JSON object"), ({"nope": 1}, "bad gate"),
])
def test_bad_gate_settings_queue_nothing(models_dir, gate, message):
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    with pytest.raises(services.TrainingError, match=message):
        launch_optimise(v1, "quantise", {}, gate=gate)
    assert not Job.objects.exists()


@pytest.mark.timeout(900)  # a whole tiny pipeline (reward model, PPO, gate)
def test_the_next_pipeline_trains_from_a_promoted_variants_source(models_dir):
    from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, seed_rankings
    from training import pipeline

    v1, variant, _ = built_variant("mathematics")
    # as if promoted (no endpoint here): the variant serves, its source is retired
    PolicyVersion.objects.filter(pk=v1.pk).update(status="retired")
    PolicyVersion.objects.filter(pk=variant.pk).update(status="promoted")
    seed_rankings("mathematics", n_tasks=8)
    p = pipeline.run_inline({
        **TINY_PIPELINE, "subjects": ["mathematics"], "snapshot": {"scope": "all", "include_imported": False},
        "gate": PERMISSIVE_GATE, "reward": {**TINY_PIPELINE["reward"], "epochs": 1.0}, "auto_promote": False,
        "ppo": {**TINY_PIPELINE["ppo"], "steps": 1, "max_new_tokens": 8}, "ppo_prompts": 8,
        "eval": {"n_prompts": 2, "kl_samples": 2, "max_new_tokens": 8}})
    assert p.status == Job.Status.SUCCEEDED, (p.message, p.error)
    step = p.children.get(kind=Job.Kind.PPO)
    candidate = PolicyVersion.objects.get(pk=step.result["policy_version_id"])
    assert candidate.parent == v1 and candidate.kind == "adapter" and candidate.base_path == ""
    assert "quantised variant of v1: training from v1" in step.log
    report = candidate.evaluations.get()
    assert report.baseline == v1  # compared on one base: the variant's full-precision source

"""The deploy step and the studio with ``TUTOR_DEPLOY_TARGET=sagemaker`` against a moto server process.

Why: the pipeline and the studio must drive SageMaker exactly as they drive the local endpoint, and an
admin must see each AWS call's outcome on the job. The retraining pipeline runs in a real Celery
worker (the worker gets the mock's URL and the test's dummy credentials through its environment);
the studio actions are POSTed as an admin. AWS state is checked through boto3 describe/head/get calls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from serving.deploy.packaging import archive_name
from tests.deploy.aws import BUCKET, Moto, aws_env, moto, moto_server, sagemaker_env  # noqa: F401  (fixtures)
from tests.fixtures.processes import purge_filesystem_broker, start_celery_worker, subprocess_env, wait_until
from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, make_version, pass_gate, seed_rankings
from training import selectors, services
from training.models import Deployment, Job, PolicyVersion
from tutor.accounts import create_user

SUBJECT = "mathematics"
ENDPOINT = "tutorloop-test"
ADAPTERS = "tutorloop/adapters/"
PIPELINE = {
    **TINY_PIPELINE,
    "subjects": [SUBJECT],
    "gate": PERMISSIVE_GATE,
    "eval": {
        "n_prompts": 6,
        "kl_samples": 4,
        "max_new_tokens": 16,
        "suites": ["reward_win_rate", "answer_key_accuracy", "kl"],
    },
    "canary_share": 0.1,  # the deploy job does both: a 10 % canary, then the promotion
    "canary": {"min_seconds": 0, "min_answers": 0},  # a zero-length bake: judged at once, in the deploy job
    "auto_promote": True,
}


@pytest.fixture
def on_sagemaker(moto: Moto, settings) -> Moto:  # noqa: F811  (the fixture)
    """Settings (this process) pointing the deployer at the emptied mock, bucket created."""
    for name, value in sagemaker_env(moto).items():
        setattr(settings, name, value)
    return moto


def routing(mock: Moto) -> dict[str, Any]:
    s3 = mock.client("s3")
    return json.loads(s3.get_object(Bucket=BUCKET, Key="tutorloop/routing.json")["Body"].read())["subjects"]


def archive_metadata(mock: Moto, pv: PolicyVersion) -> dict[str, str]:
    head = mock.client("s3").head_object(
        Bucket=BUCKET, Key=ADAPTERS + archive_name(pv.subject, pv.version, pv.sha256)
    )
    return head["Metadata"]


def calls_of(dep: Deployment) -> list[tuple[str, str, str]]:
    """(step, call, outcome) of every AWS call of the deployment's last attempt."""
    last = selectors.deployment_calls(dep)[-1]
    return [(c["step"], c["call"], c["outcome"]) for c in last["calls"]]


def admin_client(client):
    client.force_login(
        create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False)
    )
    return client


# ----------------------------------------------------------------------------------------------------------------
# The pipeline, deploy step on SageMaker (moto), run by a real Celery worker
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(600)
def test_pipeline_deploys_to_sagemaker_mock(on_sagemaker, models_dir, tiny_base_path, client):
    mock = on_sagemaker
    services.ensure_initial_versions()
    assert seed_rankings(SUBJECT, 18) >= 100
    purge_filesystem_broker()
    env = subprocess_env(
        TUTOR_MODELS_DIR=str(models_dir),
        TUTOR_BASE_MODEL=str(tiny_base_path),
        TRAINING_HEARTBEAT_SECONDS="1",
        **sagemaker_env(mock),
    )
    assert env["AWS_ACCESS_KEY_ID"] == "testing"  # the dummy credentials set by aws_env, never a real account
    worker = start_celery_worker(env)
    try:
        pipeline = services.start_pipeline(PIPELINE)
        wait_until(lambda: Job.objects.get(pk=pipeline.pk).is_terminal, 400, "the pipeline to finish")
    finally:
        worker.stop()
    pipeline.refresh_from_db()
    steps = {c.kind: (c.status, c.error) for c in pipeline.children.all()}
    assert pipeline.status == "succeeded", (pipeline.message, steps)

    v1 = PolicyVersion.objects.get(subject=SUBJECT, version=1)
    new = PolicyVersion.objects.get(subject=SUBJECT, status="promoted")
    assert new.version >= 2 and v1.status == "retired"

    # S3: both archives, each with the registry's SHA-256 in its metadata; routing.json = the database
    assert archive_metadata(mock, v1)["sha256"] == v1.sha256
    meta = archive_metadata(mock, new)
    assert (meta["sha256"], meta["subject"], meta["version"]) == (new.sha256, SUBJECT, str(new.version))
    entry = routing(mock)[SUBJECT]
    assert (entry["promoted"], entry["candidate"], entry["share"]) == (new.version, None, 0.0)
    assert entry["promoted_model"] == archive_name(SUBJECT, new.version, new.sha256)
    # SageMaker: one multi-model endpoint, InService, tagged with the split
    sm = mock.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    [variant] = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])[
        "ProductionVariants"
    ]
    assert sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["Mode"] == "MultiModel"
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"]}
    assert tags[f"tutorloop:routing:{SUBJECT}"] == f"promoted=v{new.version}"
    assert services.get_deployer().state()[SUBJECT] == {
        "loaded": [1, new.version],
        "promoted": new.version,
        "candidate": None,
        "share": 0.0,
    }

    # the deploy job's Deployment rows: canary then promote, each AWS call's outcome recorded
    deploy_job = pipeline.children.get(kind="deploy")
    canary, promote = deploy_job.deployments.order_by("id")
    assert (canary.action, canary.status, promote.action, promote.status) == (
        "canary",
        "applied",
        "promote",
        "applied",
    )
    assert deploy_job.result["canary"]["status"] == deploy_job.result["promote"]["status"] == "applied"
    first = calls_of(canary)
    assert ("publish_v1", "sagemaker:DescribeEndpoint", "not found") in first
    assert ("publish_v1", "sagemaker:CreateEndpoint", "ok") in first
    assert (f"publish_v{new.version}", "s3:PutObject", "ok") in first
    assert ("set_traffic", "s3:PutObject", "ok") in first and (
        "set_traffic",
        "sagemaker:AddTags",
        "ok",
    ) in first
    assert ("state", "s3:ListObjectsV2", "ok") in first
    then = calls_of(promote)
    assert [c for c in then if c[1].startswith(("sagemaker:Create", "sagemaker:Update"))] == []  # all there
    assert all(outcome in ("ok", "not found") for _, _, outcome in first + then)

    # ... and the studio shows them on the deploy job's page
    page = admin_client(client).get(reverse("training:job", args=[deploy_job.pk])).content.decode()
    assert 'data-call="sagemaker:CreateEndpoint" data-ok="true"' in page
    assert 'data-call="sagemaker:AddTags"' in page and f"s3://{BUCKET}/{ADAPTERS}" in page
    assert "uploaded mathematics v" in page  # the deployer's own summary of each step


# ----------------------------------------------------------------------------------------------------------------
# The studio: canary, promote, roll back from the versions pages, on SageMaker (moto)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_studio_canary_promote_rollback_on_sagemaker_shows_each_call(on_sagemaker, models_dir, client):
    mock = on_sagemaker
    client = admin_client(client)
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject=SUBJECT, version=1)
    v2 = make_version(v1, 2)
    pass_gate(v2)

    r = client.post(reverse("training:version-canary", args=[v2.pk]), {"share": "0.25"}, follow=True)
    assert "applied on sagemaker" in r.content.decode()
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("promoted", "canary")
    entry = routing(mock)[SUBJECT]
    assert (entry["promoted"], entry["candidate"], entry["share"]) == (1, 2, 0.25)
    assert (
        archive_metadata(mock, v1)["sha256"] == v1.sha256
        and archive_metadata(mock, v2)["sha256"] == v2.sha256
    )
    assert mock.client("sagemaker").describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
    page = client.get(reverse("training:version", args=[v2.pk])).content.decode()
    assert 'data-call="sagemaker:CreateEndpoint" data-ok="true"' in page
    assert 'data-call="s3:PutObject" data-ok="true"' in page and "not found" in page  # Describe before Create

    r = client.post(reverse("training:version-promote", args=[v2.pk]), follow=True)
    assert "applied on sagemaker" in r.content.decode()
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("retired", "promoted")
    entry = routing(mock)[SUBJECT]
    assert (entry["promoted"], entry["candidate"]) == (2, None)
    promote = Deployment.objects.filter(action="promote").latest("id")
    assert promote.status == "applied" and ("set_traffic", "sagemaker:AddTags", "ok") in calls_of(promote)
    assert all(c[1] != "sagemaker:CreateEndpoint" for c in calls_of(promote))  # never an endpoint update

    r = client.post(reverse("training:rollback", args=[SUBJECT]), follow=True)
    page = r.content.decode()
    assert "rollback" in page and "applied on sagemaker" in page
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("promoted", "retired")
    assert (routing(mock)[SUBJECT]["promoted"], routing(mock)[SUBJECT]["candidate"]) == (1, None)
    # the versions page (where the actions land) lists each deployment's attempts and calls
    assert (
        page.count("attempts and AWS calls") >= 3 and 'data-call="sagemaker:AddTags" data-ok="true"' in page
    )


@pytest.mark.django_db
def test_studio_shows_the_aws_error_and_keeps_the_promoted_version(
    on_sagemaker, models_dir, client, settings
):
    mock = on_sagemaker
    client = admin_client(client)
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject=SUBJECT, version=1)
    v2, v3 = make_version(v1, 2), make_version(v1, 3)
    pass_gate(v2)
    pass_gate(v3)
    client.post(reverse("training:version-canary", args=[v2.pk]), {"share": "0.25"})
    before = routing(mock)

    # a bucket that does not exist: S3 answers NoSuchBucket on the first call
    settings.TUTOR_S3_BUCKET = "tutorloop-no-such-bucket"
    r = client.post(reverse("training:version-canary", args=[v3.pk]), {"share": "0.5"}, follow=True)
    page = r.content.decode()
    assert (
        "the bucket &#x27;tutorloop-no-such-bucket&#x27; does not exist in us-east-1; create it first" in page
    )
    dep = Deployment.objects.latest("id")
    assert (dep.candidate_id, dep.status, dep.attempts) == (v3.pk, "pending", 3)
    assert calls_of(dep)[-1] == ("publish_v1", "s3:ListObjectsV2", "NoSuchBucket")
    assert PolicyVersion.objects.get(subject=SUBJECT, status="promoted") == v1
    assert routing(mock) == before  # nothing changed in AWS
    page = client.get(reverse("training:version", args=[v3.pk])).content.decode()
    assert (
        'data-call="s3:ListObjectsV2" data-ok="false"' in page
        and "NoSuchBucket: The specified bucket does not exist" in page
    )
    assert "failed at publish_v1" in page

    # a role that is not an IAM role ARN: refused before any AWS call, with what to set
    settings.TUTOR_S3_BUCKET = BUCKET
    settings.TUTOR_SAGEMAKER_ROLE_ARN = "tutorloop-sagemaker"
    r = client.post(reverse("training:version-canary", args=[v3.pk]), {"share": "0.5"}, follow=True)
    assert (
        "TUTOR_SAGEMAKER_ROLE_ARN=&#x27;tutorloop-sagemaker&#x27; is not an IAM role ARN"
        in r.content.decode()
    )
    dep = Deployment.objects.latest("id")
    assert dep.status == "pending" and selectors.deployment_calls(dep)[-1]["calls"] == []
    assert PolicyVersion.objects.get(subject=SUBJECT, status="promoted") == v1
    assert routing(mock) == before

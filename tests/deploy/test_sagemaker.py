"""The SageMaker deployer (multi-model layout) against a moto server process, checked through boto3 describes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from rlhf import SUBJECTS
from serving.deploy import DeployError, get_deployer
from serving.deploy.packaging import archive_name, build_archive, extract_archive, parse_archive_name
from serving.registry import sticky_fraction
from tests.deploy.aws import BUCKET, IMAGE_URI, REGION, ROLE_ARN, make_artifact, sagemaker_options

PREFIX = "tutorloop/adapters/"


def calls(result: dict) -> list[str]:
    return [c["call"] for c in result["aws_calls"]]


def mutating(result: dict) -> list[str]:
    return [c for c in calls(result) if not c.split(":")[1].startswith(("Describe", "List", "Head", "Get"))]


def routing_json(s3) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key="tutorloop/routing.json")["Body"].read())["subjects"]


def keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_deploy_canary_promote_rollback_delete(moto, tmp_path: Path):
    sm, s3 = moto.client("sagemaker"), moto.client("s3")
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    v1 = {s: make_artifact(tmp_path, s, 1) for s in SUBJECTS}

    # -- version 1 of every subject: archives in S3 with their hash, the endpoint created and InService
    for s, (path, sha) in v1.items():
        out = d.publish(s, 1, str(path), sha)
        assert out["action"] == "uploaded" and out["target_model"] == archive_name(s, 1, sha)
        head = s3.head_object(Bucket=BUCKET, Key=PREFIX + out["target_model"])
        assert head["Metadata"]["sha256"] == sha
        assert head["Metadata"]["archive-sha256"] == out["archive_sha256"]
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=BUCKET, Key=PREFIX + out["target_model"])["TagSet"]}
        assert tags == {"project": "tutorloop", "subject": s, "version": "1"}
        d.set_traffic(s, 1, None, 0.0)
    first = d.publish("history", 1, str(v1["history"][0]), v1["history"][1])  # idempotent: nothing created
    assert first["action"] == "unchanged" and mutating(first) == []

    endpoint = sm.describe_endpoint(EndpointName="tutorloop-test")
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    [variant] = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.xlarge" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Mode"] == "MultiModel" and container["Image"] == IMAGE_URI
    assert container["ModelDataUrl"] == f"s3://{BUCKET}/{PREFIX}"
    assert container["Environment"]["TUTOR_MULTI_MODEL"] == "true"
    assert model["ExecutionRoleArn"] == ROLE_ARN
    for arn in (endpoint["EndpointArn"], model["ModelArn"]):
        assert {"Key": "project", "Value": "tutorloop"} in sm.list_tags(ResourceArn=arn)["Tags"]
    assert len(sm.list_endpoints()["Endpoints"]) == 1 and len(sm.list_models()["Models"]) == 1
    assert {s: e["promoted"] for s, e in routing_json(s3).items()} == {s: 1 for s in SUBJECTS}
    assert d.state() == {s: {"loaded": [1], "promoted": 1, "candidate": None, "share": 0.0} for s in SUBJECTS}

    # -- canary: history v2 at 10 %
    p2, sha2 = make_artifact(tmp_path, "history", 2)
    assert d.publish("history", 2, str(p2), sha2)["action"] == "uploaded"
    canary = d.set_traffic("history", 1, 2, 0.1)
    assert canary["action"] == "routed" and calls(canary).count("s3:PutObject") == 1
    entry = routing_json(s3)["history"]
    assert entry == {"promoted": 1, "candidate": 2, "share": 0.1, "promoted_model": archive_name("history", 1, v1["history"][1]),
                     "candidate_model": archive_name("history", 2, sha2)}
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"]}
    assert tags["tutorloop:routing:history"] == "promoted=v1 candidate=v2 share=0.1"
    assert d.state()["history"] == {"loaded": [1, 2], "promoted": 1, "candidate": 2, "share": 0.1}
    assert d.set_traffic("history", 1, 2, 0.1)["action"] == "unchanged"

    # -- promote v2: only the split changes; the endpoint is never updated
    promote = d.set_traffic("history", 2, None, 0.0)
    assert [c for c in mutating(promote) if c.startswith("sagemaker:")] == ["sagemaker:AddTags"]
    assert routing_json(s3)["history"]["promoted"] == 2 and routing_json(s3)["history"]["candidate"] is None
    assert sm.describe_endpoint(EndpointName="tutorloop-test")["EndpointConfigName"] == endpoint["EndpointConfigName"]
    with pytest.raises(DeployError, match="in use"):
        d.unpublish("history", 2)

    # -- roll back to v1, then v2 can go
    d.set_traffic("history", 1, None, 0.0)
    assert d.state()["history"] == {"loaded": [1, 2], "promoted": 1, "candidate": None, "share": 0.0}
    with pytest.raises(DeployError, match="in use"):
        d.unpublish("history", 1)
    gone = d.unpublish("history", 2)
    assert gone["action"] == "deleted" and PREFIX + archive_name("history", 2, sha2) not in keys(s3)
    assert d.unpublish("history", 2)["action"] == "unchanged"
    with pytest.raises(DeployError, match="publish it first"):
        d.set_traffic("history", 1, 2, 0.5)

    # -- delete everything
    down = d.teardown(purge_artifacts=True)
    assert down["action"] == "deleted"
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == [] and keys(s3) == []
    assert d.teardown()["action"] == "unchanged"


def test_identical_redeploy_changes_nothing(moto, tmp_path: Path):
    s3 = moto.client("s3")
    path, sha = make_artifact(tmp_path, "language", 1)
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    d.publish("language", 1, str(path), sha)
    d.set_traffic("language", 1, None, 0.0)
    before = {o["Key"]: (o["ETag"], o["LastModified"]) for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    again = get_deployer("sagemaker", **sagemaker_options(moto))  # a fresh process would do the same
    out = again.publish("language", 1, str(path), sha)
    assert out["action"] == "unchanged" and mutating(out) == []
    assert again.set_traffic("language", 1, None, 0.0)["action"] == "unchanged"
    after = {o["Key"]: (o["ETag"], o["LastModified"]) for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert after == before


def test_tampered_artifact_is_refused_before_upload(moto, tmp_path: Path):
    sm, s3 = moto.client("sagemaker"), moto.client("s3")
    path, sha = make_artifact(tmp_path, "mathematics", 1)
    (path / "adapter_model.safetensors").write_bytes(b"poisoned weights")
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    with pytest.raises(DeployError, match="failed verification"):
        d.publish("mathematics", 1, str(path), sha)
    other, _ = make_artifact(tmp_path / "other", "mathematics", 1, weights=b"different")
    with pytest.raises(DeployError, match="registry recorded"):
        d.publish("mathematics", 1, str(other), sha)  # intact, but not the artefact the registry recorded
    assert keys(s3) == [] and sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_a_version_never_changes_content(moto, tmp_path: Path):
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    path, sha = make_artifact(tmp_path, "history", 3)
    d.publish("history", 3, str(path), sha)
    other, other_sha = make_artifact(tmp_path / "b", "history", 3, weights=b"retrained")
    with pytest.raises(DeployError, match="already published from a different artefact"):
        d.publish("history", 3, str(other), other_sha)


def test_archive_is_deterministic_and_unpacks_to_a_verified_artifact(tmp_path: Path):
    from rlhf.manifest import artifact_sha256

    path, sha = make_artifact(tmp_path, "history", 1)
    first = build_archive(path)
    for p in path.iterdir():
        p.touch()  # new mtimes must not change the bytes
    assert build_archive(path) == first
    out = extract_archive(first, tmp_path / "unpacked")
    assert artifact_sha256(out) == sha
    assert parse_archive_name(f"s3://b/p/{archive_name('history', 1, sha)}") == ("history", 1, sha)


def test_invoke_endpoint_with_target_model(moto, tmp_path: Path):
    """The tutor's runtime client: the split picks the TargetModel (sticky), the answer is the container's JSON."""
    from serving.client import EndpointError
    from serving.sagemaker_runtime import SageMakerEndpointClient

    d = get_deployer("sagemaker", **sagemaker_options(moto))
    (p1, sha1), (p2, sha2) = make_artifact(tmp_path, "history", 1), make_artifact(tmp_path, "history", 2)
    d.publish("history", 1, str(p1), sha1)
    d.publish("history", 2, str(p2), sha2)
    d.set_traffic("history", 1, 2, 0.1)

    client = SageMakerEndpointClient("tutorloop-test", region=REGION, bucket=BUCKET, prefix="tutorloop",
                                     endpoint_url=moto.url)
    sent: list[dict] = []
    client.runtime.meta.events.register(
        "before-send.sagemaker-runtime.InvokeEndpoint",
        lambda request, **_: sent.append({"target": request.headers.get("X-Amzn-SageMaker-Target-Model", b"").decode(),
                                          "body": json.loads(request.body)}))
    canary_key = next(f"c{i}" for i in range(1000) if sticky_fraction("history", f"c{i}") < 0.1)
    stable_key = next(f"c{i}" for i in range(1000) if sticky_fraction("history", f"c{i}") >= 0.1)
    answers = [{"outputs": [{"text": f"answer {i}", "adapter": {"subject": "history", "version": v}, "tokens": 2,
                             "finish_reason": "length"}], "usage": {}, "timings": {}} for i, v in enumerate((2, 1))]
    moto.queue_invoke_results(answers)

    out = client.generate(messages=[{"role": "user", "content": "Who built Rome?"}], subject="history",
                          routing_key=canary_key, max_new_tokens=8)
    assert out == answers[0]
    out = client.generate(prompt="Who built Rome?", subject="history", routing_key=stable_key, max_new_tokens=8)
    assert out == answers[1]
    assert [s["target"] for s in sent] == [archive_name("history", 2, sha2), archive_name("history", 1, sha1)]
    assert sent[0]["body"]["adapter"] == {"subject": "history", "version": 2}
    assert sent[0]["body"]["parameters"] == {"max_new_tokens": 8} and sent[1]["body"]["prompt"] == "Who built Rome?"
    assert client.ping()["endpoint_status"] == "InService"
    with pytest.raises(EndpointError, match="no version of 'language'") as err:
        client.generate(prompt="hi", subject="language")
    assert err.value.status == 404


def test_configuration_and_aws_errors_are_clear(moto, tmp_path: Path):
    path, sha = make_artifact(tmp_path, "history", 1)
    with pytest.raises(DeployError, match="TUTOR_SAGEMAKER_ROLE_ARN"):
        get_deployer("sagemaker", **sagemaker_options(moto, role_arn=""))
    with pytest.raises(DeployError, match="not an IAM role ARN"):
        get_deployer("sagemaker", **sagemaker_options(moto, role_arn="my-role"))
    with pytest.raises(DeployError, match="unknown SageMaker option"):
        get_deployer("sagemaker", **sagemaker_options(moto, bucket_name="x"))
    with pytest.raises(DeployError, match="bucket 'no-such-bucket' does not exist"):
        get_deployer("sagemaker", **sagemaker_options(moto, bucket="no-such-bucket")).publish("history", 1, str(path), sha)

    # AWS-side failures, answered by botocore's Stubber on a real client (S3 stays the moto server)
    import boto3

    sm = boto3.client("sagemaker", region_name=REGION)
    d = get_deployer("sagemaker", **sagemaker_options(moto), sagemaker_client=sm)
    with Stubber(sm) as stub:
        stub.add_client_error("describe_model", "ThrottlingException", "Rate exceeded", 400)
        with pytest.raises(DeployError, match="throttled DescribeModel") as err:
            d.publish("history", 1, str(path), sha)
        assert err.value.details["aws_error"] == "ThrottlingException"
        assert {"call": "sagemaker:DescribeModel", "ok": False, "error": "ThrottlingException"}.items() \
            <= err.value.details["aws_calls"][-1].items()
    with Stubber(sm) as stub:
        stub.add_client_error("describe_model", "ValidationException", "Could not find model", 400)
        stub.add_client_error("create_model", "ValidationException",
                              f"Could not assume role {ROLE_ARN}. Please ensure that the role exists", 400)
        with pytest.raises(DeployError, match="cannot use the execution role"):
            d.publish("history", 1, str(path), sha)
    with Stubber(sm) as stub:
        for op in ("describe_model", "describe_endpoint_config"):
            stub.add_response(op, {"ModelName": "m", "ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m",
                                   "CreationTime": 0} if op == "describe_model" else
                              {"EndpointConfigName": "c", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                               "endpoint-config/c", "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m"}],
                               "CreationTime": 0})
        stub.add_client_error("describe_endpoint", "ValidationException", "Could not find endpoint", 400)
        stub.add_client_error("create_endpoint", "ResourceLimitExceeded",
                              "The account-level service limit 'ml.m5.xlarge for endpoint usage' is 0 Instances", 400)
        with pytest.raises(DeployError, match="quota increase"):
            d.publish("history", 1, str(path), sha)
    with pytest.raises(ClientError):  # the mock really has no endpoint: nothing was created behind our back
        moto.client("sagemaker").describe_endpoint(EndpointName="tutorloop-test")


def test_concurrent_traffic_changes_are_not_lost(moto, tmp_path: Path):
    """Two jobs changing different subjects at once: the conditional write makes the slower one re-read."""
    s3 = moto.client("s3")
    a = get_deployer("sagemaker", **sagemaker_options(moto))
    b = get_deployer("sagemaker", **sagemaker_options(moto))
    for s in ("history", "language"):
        path, sha = make_artifact(tmp_path, s, 1)
        a.publish(s, 1, str(path), sha)
    raced = []

    def other_job_writes_first(params, **_):
        if params.get("Key") == "tutorloop/routing.json" and not raced:
            raced.append(b.set_traffic("language", 1, None, 0.0))  # lands between a's read and a's write

    a.s3.meta.events.register("before-parameter-build.s3.PutObject", other_job_writes_first)
    out = a.set_traffic("history", 1, None, 0.0)
    assert raced and raced[0]["action"] == "routed"
    assert [c.get("result") for c in out["aws_calls"] if c["call"] == "s3:PutObject"] == \
        ["changed concurrently; retrying", None]
    assert {s: e["promoted"] for s, e in routing_json(s3).items()} == {"history": 1, "language": 1}

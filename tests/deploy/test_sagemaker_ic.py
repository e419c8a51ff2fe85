"""Inference-components layout and response streaming: request construction checked with botocore's Stubber.

moto does not implement inference components or InvokeEndpointWithResponseStream, so these
calls were NOT exercised against any live or mock service: the Stubber asserts that each request
we build is exactly the documented one (and valid against botocore's service model), and answers
with responses that are valid against the model too. S3 is the moto server process.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from serving.deploy import DeployError, get_deployer
from serving.deploy.packaging import archive_name
from serving.deploy.sagemaker_ic import component_name
from tests.deploy.aws import BUCKET, IMAGE_URI, REGION, ROLE_ARN, make_artifact, sagemaker_options

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNT_ARN = "arn:aws:sagemaker:us-east-1:123456789012"
TAGS = [{"Key": "project", "Value": "tutorloop"}, {"Key": "tutorloop:layout", "Value": "inference-components"}]


def not_found(stub: Stubber, op: str, what: str) -> None:
    stub.add_client_error(op, "ValidationException", f"Could not find {what}.", 400)


def component(name: str, status: str) -> dict:
    return {"InferenceComponentName": name, "InferenceComponentArn": f"{ACCOUNT_ARN}:inference-component/{name}",
            "EndpointName": "tutorloop-test", "EndpointArn": f"{ACCOUNT_ARN}:endpoint/tutorloop-test",
            "InferenceComponentStatus": status, "CreationTime": NOW, "LastModifiedTime": NOW}


def test_inference_components_publish_and_unpublish_requests(moto, tmp_path: Path):
    sm = boto3.client("sagemaker", region_name=REGION)
    d = get_deployer("sagemaker", layout="inference-components", **sagemaker_options(moto, instance_type="ml.g5.xlarge"),
                     sagemaker_client=sm)
    model, config = d._names()
    path, sha = make_artifact(tmp_path, "general_knowledge", 1)
    base, adapter = "tutorloop-test-base", "tutorloop-test-general-knowledge-v1"
    assert (component_name("tutorloop-test"), component_name("tutorloop-test", "general_knowledge", 1)) == (base, adapter)
    s3_uri = f"s3://{BUCKET}/tutorloop/adapters/{archive_name('general_knowledge', 1, sha)}"
    endpoint = {"EndpointName": "tutorloop-test", "EndpointArn": f"{ACCOUNT_ARN}:endpoint/tutorloop-test",
                "EndpointConfigName": config, "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW}

    with Stubber(sm) as stub:
        not_found(stub, "describe_model", "model")
        stub.add_response("create_model", {"ModelArn": f"{ACCOUNT_ARN}:model/{model}"}, {
            "ModelName": model, "ExecutionRoleArn": ROLE_ARN, "Tags": TAGS,
            "PrimaryContainer": {"Image": IMAGE_URI, "Environment": {"SAGEMAKER_BIND_TO_PORT": "8080"}}})
        not_found(stub, "describe_endpoint_config", "endpoint configuration")
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ACCOUNT_ARN}:endpoint-config/{config}"}, {
            "EndpointConfigName": config, "ExecutionRoleArn": ROLE_ARN, "Tags": TAGS,
            "ProductionVariants": [{"VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
                                    "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}]})
        not_found(stub, "describe_endpoint", "endpoint")
        stub.add_response("create_endpoint", {"EndpointArn": endpoint["EndpointArn"]},
                          {"EndpointName": "tutorloop-test", "EndpointConfigName": config, "Tags": TAGS})
        stub.add_response("describe_endpoint", {**endpoint, "EndpointStatus": "Creating"}, {"EndpointName": "tutorloop-test"})
        stub.add_response("describe_endpoint", endpoint, {"EndpointName": "tutorloop-test"})
        not_found(stub, "describe_inference_component", "inference component")
        stub.add_response("create_inference_component", {"InferenceComponentArn": component(base, "Creating")["InferenceComponentArn"]}, {
            "InferenceComponentName": base, "EndpointName": "tutorloop-test", "VariantName": "AllTraffic", "Tags": TAGS,
            "Specification": {"ModelName": model, "ComputeResourceRequirements": {
                "MinMemoryRequiredInMb": 4096, "NumberOfAcceleratorDevicesRequired": 1}},
            "RuntimeConfig": {"CopyCount": 1}})
        stub.add_response("describe_inference_component", component(base, "InService"), {"InferenceComponentName": base})
        not_found(stub, "describe_inference_component", "inference component")
        stub.add_response("create_inference_component", {"InferenceComponentArn": component(adapter, "Creating")["InferenceComponentArn"]}, {
            "InferenceComponentName": adapter, "EndpointName": "tutorloop-test",
            "Specification": {"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": s3_uri}},
            "Tags": [*TAGS, {"Key": "subject", "Value": "general_knowledge"}, {"Key": "version", "Value": "1"},
                     {"Key": "sha256", "Value": sha}]})
        stub.add_response("describe_inference_component", component(adapter, "Creating"), {"InferenceComponentName": adapter})
        stub.add_response("describe_inference_component", component(adapter, "InService"), {"InferenceComponentName": adapter})

        out = d.publish("general_knowledge", 1, str(path), sha)
        stub.assert_no_pending_responses()
    assert out["inference_component"] == adapter and out["component_action"] == "created" and out["s3_uri"] == s3_uri
    assert moto.client("s3").head_object(Bucket=BUCKET, Key=s3_uri.split(f"{BUCKET}/")[1])["Metadata"]["sha256"] == sha

    with Stubber(sm) as stub:  # unpublish: the adapter component goes, then the archive
        stub.add_response("describe_inference_component",
                          {**component(adapter, "InService"),
                           "Specification": {"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": s3_uri}}},
                          {"InferenceComponentName": adapter})
        stub.add_response("delete_inference_component", {}, {"InferenceComponentName": adapter})
        gone = d.unpublish("general_knowledge", 1)
        stub.assert_no_pending_responses()
    assert gone["action"] == "deleted" and f"inference component {adapter}" in gone["deleted"]
    assert moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="tutorloop/adapters/").get("KeyCount") == 0


def test_failed_component_is_reported(moto, tmp_path: Path):
    sm = boto3.client("sagemaker", region_name=REGION)
    d = get_deployer("sagemaker", layout="inference-components", **sagemaker_options(moto), sagemaker_client=sm)
    path, sha = make_artifact(tmp_path, "history", 1)
    name = component_name("tutorloop-test", "history", 1)
    d.ensure_endpoint = lambda: {"status": "InService"}  # the endpoint part is covered above; here: the adapter
    with Stubber(sm) as stub:
        not_found(stub, "describe_inference_component", "inference component")
        stub.add_response("create_inference_component", {"InferenceComponentArn": component(name, "Creating")["InferenceComponentArn"]})
        stub.add_response("describe_inference_component",
                          {**component(name, "Failed"), "FailureReason": "adapter_config.json: unsupported target_modules"})
        with pytest.raises(DeployError, match="is Failed: adapter_config.json: unsupported target_modules"):
            d.publish("history", 1, str(path), sha)


STREAM_EVENTS = [{"index": 0, "token": "Rome "}, {"index": 0, "token": "was"},
                 {"done": True, "outputs": [{"text": "Rome was", "adapter": {"subject": "history", "version": 3},
                                             "tokens": 2, "finish_reason": "length"}], "usage": {}, "timings": {}}]
STREAM_BODY = {"adapter": {"subject": "history", "version": 3}, "messages": [{"role": "user", "content": "Rome?"}],
               "routing_key": "conv-1", "parameters": {"max_new_tokens": 16, "temperature": 0.0}}


def stream_client(runtime):
    from serving.sagemaker_runtime import SageMakerEndpointClient

    return SageMakerEndpointClient("tutorloop-test", region=REGION, bucket=BUCKET, layout="inference-components",
                                   runtime_client=runtime)


def call_stream(client) -> list[dict]:
    return list(client.stream(messages=[{"role": "user", "content": "Rome?"}], subject="history", version=3,
                              routing_key="conv-1", max_new_tokens=16, temperature=0.0))


def test_stream_request_construction():
    """InvokeEndpointWithResponseStream: the adapter component named, jsonlines accepted, the same JSON body."""
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint_with_response_stream", {"Body": {}, "ContentType": "application/jsonlines"},
                          {"EndpointName": "tutorloop-test", "InferenceComponentName": "tutorloop-test-history-v3",
                           "ContentType": "application/json", "Accept": "application/jsonlines",
                           "Body": json.dumps(STREAM_BODY, sort_keys=True).encode()})
        assert call_stream(stream_client(runtime)) == []  # the Stubber's stream holds no events
        stub.assert_no_pending_responses()


def _event_message(payload: bytes) -> bytes:
    """One AWS event-stream message (prelude, string headers, payload, CRC32s) carrying a PayloadPart."""
    import struct
    import zlib

    headers = b""
    for name, value in ((":event-type", "PayloadPart"), (":message-type", "event"),
                        (":content-type", "application/octet-stream")):
        headers += bytes([len(name)]) + name.encode() + bytes([7]) + struct.pack(">H", len(value)) + value.encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


async def collect_async(runtime) -> list[dict]:
    from serving.sagemaker_runtime import AsyncSageMakerEndpointClient

    async with AsyncSageMakerEndpointClient("tutorloop-test", region=REGION, bucket=BUCKET,
                                            layout="inference-components", runtime_client=runtime) as client:
        return [e async for e in client.stream(messages=[{"role": "user", "content": "Rome?"}], subject="history",
                                               version=3, routing_key="conv-1", max_new_tokens=16, temperature=0.0)]


def test_stream_events_are_parsed_by_botocore():
    """The wire format end to end: event-stream frames split mid-line are re-assembled into our events.

    The bytes come back at botocore's HTTP layer (its `before-send` hook), so botocore's own
    event-stream parser decodes them; the request it would have sent is checked on the wire.
    """
    import io

    from botocore.awsrequest import AWSResponse
    from urllib3.response import HTTPResponse

    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    payload = "".join(json.dumps(e) + "\n" for e in STREAM_EVENTS).encode()
    wire = b"".join(_event_message(p) for p in (payload[:7], payload[7:40], payload[40:]))
    seen = {}

    def answer(request, **_):
        seen.update(url=request.url, headers=dict(request.headers), body=request.body)
        raw = HTTPResponse(body=io.BytesIO(wire), preload_content=False, status=200)
        return AWSResponse(request.url, 200, {"Content-Type": "application/vnd.amazon.eventstream",
                                              "X-Amzn-SageMaker-Content-Type": "application/jsonlines"}, raw)

    runtime.meta.events.register("before-send.sagemaker-runtime.InvokeEndpointWithResponseStream", answer)
    assert call_stream(stream_client(runtime)) == STREAM_EVENTS
    assert asyncio.run(collect_async(runtime)) == STREAM_EVENTS  # the async twin the chat's streaming path uses
    assert seen["url"].endswith("/endpoints/tutorloop-test/invocations-response-stream")
    assert seen["headers"]["X-Amzn-SageMaker-Inference-Component"] in ("tutorloop-test-history-v3",
                                                                        b"tutorloop-test-history-v3")
    assert json.loads(seen["body"]) == STREAM_BODY


def test_container_errors_keep_their_status():
    """A container 4xx comes back through SageMaker as ModelError; the client re-raises the container's answer."""
    from serving.client import EndpointError

    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    client = stream_client(runtime)
    with Stubber(runtime) as stub:
        stub.add_client_error("invoke_endpoint", "ModelError", "Received client error (413) from primary", 424,
                              modeled_fields={"OriginalStatusCode": 413,
                                              "OriginalMessage": '{"error": "the prompt is 2000 tokens; the limit is 1024"}'})
        with pytest.raises(EndpointError, match="the limit is 1024") as err:
            client.generate(prompt="x" * 10, subject="history", version=3)
    assert err.value.status == 413

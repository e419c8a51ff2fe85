"""Calling the tutor's model on a SageMaker endpoint, with the same request/response JSON as locally.

`SageMakerEndpointClient` has `EndpointClient`'s `generate` / `stream` signature, so Django code
does not care where the model runs; `client_from_settings(settings)` picks one by
`TUTOR_DEPLOY_TARGET`.

Which adapter version answers: the subject's split in `routing.json` (written by the deployer,
cached here for `routing_ttl` seconds) with the same sticky hash per `routing_key` as the local
endpoint, or the explicit `version`. That version becomes
- multi-model layout: `TargetModel` = its archive name (`<subject>-v<N>-<sha256>.tar.gz`);
- inference-components layout: `InferenceComponentName` = its adapter component.

Streaming: `InvokeEndpointWithResponseStream` has no `TargetModel`, so on a multi-model endpoint
`stream` makes one `InvokeEndpoint` call and yields the answer as one chunk per output followed
by the usual `{"done": true, ...}` event; with inference components it streams token by token.
Errors raise `serving.client.EndpointError` (status 0: AWS unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from serving.client import EndpointClient, EndpointError, invocation_body

JSON = "application/json"
JSONLINES = "application/jsonlines"


class SageMakerEndpointClient:
    """Invoke a SageMaker endpoint deployed by `serving.deploy` (either layout)."""

    def __init__(self, endpoint_name: str | None = None, *, region: str | None = None, bucket: str | None = None,
                 prefix: str | None = None, layout: str | None = None, endpoint_url: str | None = None,
                 timeout: float = 60.0, routing_ttl: float = 5.0, runtime_client: Any = None, s3_client: Any = None):
        self.endpoint_name = endpoint_name or os.environ.get("TUTOR_SAGEMAKER_ENDPOINT_NAME", "tutorloop")
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.bucket = bucket or os.environ.get("TUTOR_S3_BUCKET", "")
        self.prefix = (prefix if prefix is not None else os.environ.get("TUTOR_S3_PREFIX", "tutorloop")).strip("/")
        self.layout = layout or os.environ.get("TUTOR_SAGEMAKER_LAYOUT") or "multimodel"
        if self.layout not in ("multimodel", "inference-components"):
            raise ValueError(f"unknown SageMaker layout {self.layout!r}")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.timeout = timeout
        self.routing_ttl = routing_ttl
        self._runtime = runtime_client
        self._s3 = s3_client
        self._routing: tuple[float, dict[str, Any]] | None = None
        self._archives: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    # ---- clients --------------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        extra: dict[str, Any] = {"s3": {"addressing_style": "path"}} if service == "s3" and self.endpoint_url else {}
        cfg = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5,
                     read_timeout=self.timeout, **extra)
        return boto3.session.Session(region_name=self.region).client(service, endpoint_url=self.endpoint_url,
                                                                     config=cfg)

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._client("sagemaker-runtime")
        return self._runtime

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._client("s3")
        return self._s3

    def close(self) -> None:
        """Nothing to release (boto3 clients pool their own connections); here for EndpointClient parity."""

    def __enter__(self) -> SageMakerEndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> dict:
        """Like `GET /ping`: ok when the endpoint is InService (DescribeEndpoint), else EndpointError(503)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            status = self._client("sagemaker").describe_endpoint(EndpointName=self.endpoint_name)["EndpointStatus"]
        except ClientError as exc:
            raise _endpoint_error(exc) from None
        except BotoCoreError as exc:
            raise EndpointError(0, f"cannot reach SageMaker: {exc}") from None
        if status != "InService":
            raise EndpointError(503, f"SageMaker endpoint {self.endpoint_name} is {status}")
        return {"status": "ok", "endpoint_name": self.endpoint_name, "endpoint_status": status}

    # ---- routing --------------------------------------------------------------------------------
    def routing(self, refresh: bool = False) -> dict[str, Any]:
        """The split per subject from `routing.json` (cached for `routing_ttl` seconds)."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:
            if not refresh and self._routing and time.monotonic() - self._routing[0] < self.routing_ttl:
                return self._routing[1]
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/routing.json")
            subjects = json.loads(obj["Body"].read()).get("subjects", {})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                subjects = {}
            else:
                raise _endpoint_error(exc) from None
        except BotoCoreError as exc:
            raise EndpointError(0, f"cannot read the routing from S3: {exc}") from None
        with self._lock:
            self._routing = (time.monotonic(), subjects)
        return subjects

    def _archive_of(self, subject: str, version: int, entry: dict[str, Any]) -> str:
        """The TargetModel of a version: from the split when it is there, else listed from S3 (cached)."""
        from serving.deploy.packaging import parse_archive_name

        for role in ("promoted", "candidate"):
            if entry.get(role) == version and entry.get(f"{role}_model"):
                return entry[f"{role}_model"]
        if (subject, version) in self._archives:
            return self._archives[(subject, version)]
        prefix = f"{self.prefix}/adapters/"
        page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{prefix}{subject}-v{version}-")
        for obj in page.get("Contents", []):
            parsed = parse_archive_name(obj["Key"])
            if parsed and parsed[:2] == (subject, version):
                self._archives[(subject, version)] = obj["Key"][len(prefix):]
                return self._archives[(subject, version)]
        raise EndpointError(404, f"{subject} v{version} is not published to s3://{self.bucket}/{prefix}")

    def target(self, subject: str, version: int | None = None, routing_key: str | None = None) -> dict[str, Any]:
        """The invoke arguments that select the adapter: {"TargetModel"} or {"InferenceComponentName"}, + version."""
        from serving.deploy.sagemaker import choose_version
        from serving.deploy.sagemaker_ic import component_name

        # an explicit version on inference components needs no lookup: the component name says it all
        need_routing = version is None or self.layout == "multimodel"
        entry = (self.routing().get(subject) or {}) if need_routing else {}
        if version is None:
            if not entry:
                raise EndpointError(404, f"no version of {subject!r} is deployed on {self.endpoint_name}")
            version = choose_version(entry, subject, routing_key)
        if self.layout == "inference-components":
            return {"version": version, "InferenceComponentName": component_name(self.endpoint_name, subject, version)}
        return {"version": version, "TargetModel": self._archive_of(subject, version, entry)}

    # ---- invocation -----------------------------------------------------------------------------
    def _prepare(self, messages: list[dict] | None, prompt: str | None, subject: str | None, version: int | None,
                 routing_key: str | None, parameters: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if not subject:
            raise EndpointError(400, "'subject' is required")
        selector = self.target(subject, version, routing_key)
        body = invocation_body(messages, prompt, subject, selector.pop("version"), routing_key, **parameters)
        return selector, json.dumps(body, sort_keys=True).encode()

    def generate(self, messages: list[dict] | None = None, prompt: str | None = None, subject: str | None = None,
                 version: int | None = None, routing_key: str | None = None, **parameters: Any) -> dict:
        """One JSON answer, exactly as the local endpoint's `POST /invocations`."""
        from botocore.exceptions import BotoCoreError, ClientError

        selector, body = self._prepare(messages, prompt, subject, version, routing_key, parameters)
        try:
            response = self.runtime.invoke_endpoint(EndpointName=self.endpoint_name, Body=body, ContentType=JSON,
                                                    Accept=JSON, **selector)
            return json.loads(response["Body"].read())
        except ClientError as exc:
            raise _endpoint_error(exc) from None
        except BotoCoreError as exc:
            raise EndpointError(0, f"cannot reach SageMaker endpoint {self.endpoint_name}: {exc}") from None

    def stream(self, messages: list[dict] | None = None, prompt: str | None = None, subject: str | None = None,
               version: int | None = None, routing_key: str | None = None, **parameters: Any) -> Iterator[dict]:
        """Events like the local endpoint's jsonlines stream (see the module doc for multi-model endpoints)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.layout == "multimodel":
            result = self.generate(messages, prompt, subject, version, routing_key, **parameters)
            for i, out in enumerate(result.get("outputs", [])):
                if out.get("text"):
                    yield {"index": i, "token": out["text"]}
            yield {"done": True, **result}
            return
        selector, body = self._prepare(messages, prompt, subject, version, routing_key, parameters)
        try:
            response = self.runtime.invoke_endpoint_with_response_stream(
                EndpointName=self.endpoint_name, Body=body, ContentType=JSON, Accept=JSONLINES, **selector)
            buffer = b""
            for event in response["Body"]:
                if "PayloadPart" in event:
                    buffer += event["PayloadPart"]["Bytes"]
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if parsed := _event(line):
                            yield parsed
                else:  # ModelStreamError / InternalStreamFailure
                    detail = next(iter(event.values()), {})
                    raise EndpointError(int(detail.get("ErrorCode") or 500) if str(detail.get("ErrorCode", "")).isdigit()
                                        else 500, detail.get("Message") or str(event))
            if parsed := _event(buffer):
                yield parsed
        except ClientError as exc:
            raise _endpoint_error(exc) from None
        except BotoCoreError as exc:
            raise EndpointError(0, f"cannot reach SageMaker endpoint {self.endpoint_name}: {exc}") from None


class AsyncSageMakerEndpointClient:
    """`AsyncEndpointClient`'s interface over the sync client (boto3 is blocking: calls run in threads)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.sync = SageMakerEndpointClient(*args, **kwargs)

    async def aclose(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncSageMakerEndpointClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ping(self) -> dict:
        return await asyncio.to_thread(self.sync.ping)

    async def generate(self, *args: Any, **kwargs: Any) -> dict:
        return await asyncio.to_thread(self.sync.generate, *args, **kwargs)

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[dict]:
        """Events as the sync stream produces them, handed over from a worker thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()  # set when the consumer goes away: the thread stops at the next event
        done = object()

        def hand_over(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for event in self.sync.stream(*args, **kwargs):
                    if stop.is_set():
                        return
                    hand_over(event)
            except BaseException as exc:  # raised on the consumer's side
                hand_over(exc)
            finally:
                hand_over(done)

        loop.run_in_executor(None, pump)
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


def _event(line: bytes) -> dict | None:
    text = line.decode("utf-8").strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    if not text:
        return None
    event = json.loads(text)
    if "error" in event:
        raise EndpointError(500, event["error"])
    return event


def _endpoint_error(exc: Any) -> EndpointError:
    """A ClientError as the local endpoint would have answered it."""
    err = exc.response.get("Error", {})
    code, message = err.get("Code", ""), err.get("Message", str(exc))
    if code == "ModelError":  # the container answered with an error status: pass its message through
        status = int(exc.response.get("OriginalStatusCode") or err.get("OriginalStatusCode") or 500)
        original = exc.response.get("OriginalMessage") or err.get("OriginalMessage") or message
        with contextlib.suppress(ValueError, AttributeError):  # the container's {"error": ...} when JSON
            original = json.loads(original).get("error", original)
        return EndpointError(status, original)
    status = {"ValidationError": 400, "ValidationException": 400, "ThrottlingException": 429,
              "ServiceUnavailable": 503, "ModelNotReadyException": 503,
              "InternalFailure": 500, "InternalDependencyException": 502}.get(code,
                                                                              exc.response.get("ResponseMetadata", {})
                                                                              .get("HTTPStatusCode", 500))
    return EndpointError(status, f"SageMaker {exc.operation_name}: {code}: {message}")


def _sagemaker_options(settings: Any) -> dict[str, Any]:
    return {"endpoint_name": getattr(settings, "TUTOR_SAGEMAKER_ENDPOINT_NAME", None),
            "region": getattr(settings, "AWS_REGION", None), "bucket": getattr(settings, "TUTOR_S3_BUCKET", None),
            "prefix": getattr(settings, "TUTOR_S3_PREFIX", None), "layout": getattr(settings, "TUTOR_SAGEMAKER_LAYOUT", None),
            "endpoint_url": getattr(settings, "AWS_ENDPOINT_URL", None),
            "timeout": getattr(settings, "TUTOR_ENDPOINT_TIMEOUT", 60.0)}


def async_client_from_settings(settings: Any) -> Any:
    """The async twin of `client_from_settings` (`AsyncEndpointClient` or `AsyncSageMakerEndpointClient`)."""
    if getattr(settings, "TUTOR_DEPLOY_TARGET", "local") == "sagemaker":
        return AsyncSageMakerEndpointClient(**_sagemaker_options(settings))
    from serving.client import AsyncEndpointClient

    return AsyncEndpointClient(getattr(settings, "TUTOR_ENDPOINT_URL", None),
                               admin_token=getattr(settings, "TUTOR_ENDPOINT_ADMIN_TOKEN", None),
                               timeout=getattr(settings, "TUTOR_ENDPOINT_TIMEOUT", 60.0))


def client_from_settings(settings: Any) -> EndpointClient | SageMakerEndpointClient:
    """The endpoint client the settings select (`TUTOR_DEPLOY_TARGET`): local HTTP or SageMaker runtime."""
    if getattr(settings, "TUTOR_DEPLOY_TARGET", "local") == "sagemaker":
        return SageMakerEndpointClient(**_sagemaker_options(settings))
    return EndpointClient(getattr(settings, "TUTOR_ENDPOINT_URL", None),
                          admin_token=getattr(settings, "TUTOR_ENDPOINT_ADMIN_TOKEN", None),
                          timeout=getattr(settings, "TUTOR_ENDPOINT_TIMEOUT", 60.0))

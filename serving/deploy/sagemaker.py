"""The SageMaker deployer, multi-model endpoint layout (the default).

One real-time endpoint runs our `serving/` image in `MultiModel` mode: the base model lives in
the container, and every adapter version is a `model.tar.gz` under one S3 prefix (the model's
`ModelDataUrl`). An invocation names its archive as `TargetModel`; SageMaker downloads it on
first use and the container loads it over the base model (`serving/multimodel.py`).

    s3://<bucket>/<prefix>/adapters/<subject>-v<N>-<sha256>.tar.gz   one per published version
    s3://<bucket>/<prefix>/routing.json                               the traffic split (below)

publish     = package, verify, upload (skipped when the same artefact is already there), and
              make sure the endpoint exists and is InService.
set_traffic = rewrite the subject's entry in `routing.json` (promoted/candidate archive and the
              candidate share) and mirror it as a tag on the endpoint. The tutor's runtime client
              (`serving.sagemaker_runtime`) reads it and picks the TargetModel per conversation
              (sticky, the same hash as the local endpoint). No endpoint update is involved, so
              a promotion or rollback is one S3 PUT: never a half-promoted endpoint.
unpublish   = delete the archive (refused while promoted or the canary).
state       = the archives present and the split in `routing.json`.

All AWS calls go through `_aws`, which records each call's outcome (shown on the job) and turns
AWS errors into `DeployError` with what to do about them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from serving.deploy import DeployError
from serving.deploy.local import _subjects, check_artifact, check_split
from serving.deploy.packaging import archive_name, build_archive, parse_archive_name, sha256_bytes

PROJECT = "tutorloop"
VARIANT = "AllTraffic"
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
THROTTLING = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
              "SlowDown", "ProvisionedThroughputExceededException"}
NOT_FOUND = {"404", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException"}
TRANSITIONAL = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
# AWS: multi-model endpoints with a custom container run on CPU instances only (GPU multi-model
# endpoints require the Triton container; Inferentia has none). Use the inference-components layout there.
MME_UNSUPPORTED_FAMILIES = ("ml.g", "ml.p", "ml.inf", "ml.trn")


@dataclass
class SageMakerConfig:
    """Where and how to deploy; every field defaults from the environment (settings export them)."""

    region: str = field(default_factory=lambda: os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "")
    bucket: str = field(default_factory=lambda: os.environ.get("TUTOR_S3_BUCKET", ""))
    prefix: str = field(default_factory=lambda: os.environ.get("TUTOR_S3_PREFIX", "tutorloop"))
    role_arn: str = field(default_factory=lambda: os.environ.get("TUTOR_SAGEMAKER_ROLE_ARN", ""))
    image_uri: str = field(default_factory=lambda: os.environ.get("TUTOR_SAGEMAKER_IMAGE_URI", ""))
    instance_type: str = field(default_factory=lambda: os.environ.get("TUTOR_SAGEMAKER_INSTANCE_TYPE", "ml.g5.xlarge"))
    endpoint_name: str = field(default_factory=lambda: os.environ.get("TUTOR_SAGEMAKER_ENDPOINT_NAME", "tutorloop"))
    endpoint_url: str | None = field(default_factory=lambda: os.environ.get("AWS_ENDPOINT_URL") or None)
    instance_count: int = 1
    wait_timeout: float = 1800.0  # seconds to wait for InService (a real endpoint takes 5-15 min)
    poll_interval: float = 2.0  # first wait between DescribeEndpoint calls; doubles up to 30 s
    max_attempts: int = 6  # botocore's own retries (standard mode: throttling and 5xx, with backoff)
    container_env: dict[str, str] = field(default_factory=dict)  # extra Environment for the container
    # the base model's model.tar.gz in S3 (e.g. a JumpStart BLOOM artefact); empty: baked into the image
    base_model_data_url: str = field(default_factory=lambda: os.environ.get("TUTOR_SAGEMAKER_BASE_MODEL_URL", ""))

    def check(self) -> None:
        missing = [name for name, value in (("AWS_REGION", self.region), ("TUTOR_S3_BUCKET", self.bucket),
                                            ("TUTOR_SAGEMAKER_ROLE_ARN", self.role_arn),
                                            ("TUTOR_SAGEMAKER_IMAGE_URI", self.image_uri)) if not value]
        if missing:
            raise DeployError(f"the SageMaker target needs {', '.join(missing)} (see docs/deploy-sagemaker.md)")
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", self.role_arn):
            raise DeployError(f"TUTOR_SAGEMAKER_ROLE_ARN={self.role_arn!r} is not an IAM role ARN "
                              "(arn:aws:iam::<account>:role/<name>)")
        if not ENDPOINT_NAME_RE.match(self.endpoint_name):
            raise DeployError(f"TUTOR_SAGEMAKER_ENDPOINT_NAME={self.endpoint_name!r} is not a valid endpoint name "
                              "(letters, digits and hyphens, at most 63)")
        if not self.instance_type.startswith("ml."):
            raise DeployError(f"TUTOR_SAGEMAKER_INSTANCE_TYPE={self.instance_type!r} is not a SageMaker instance type")
        self.prefix = self.prefix.strip("/")


def choose_version(entry: dict[str, Any], subject: str, routing_key: str | None, rand: float | None = None) -> int:
    """The version a request goes to under a split entry: sticky per routing key, like the local endpoint."""
    from serving.registry import sticky_fraction

    version = entry["promoted"]
    if entry.get("candidate") is not None and float(entry.get("share") or 0) > 0:
        import random

        u = sticky_fraction(subject, routing_key) if routing_key else (rand if rand is not None else random.random())
        if u < float(entry["share"]):
            version = entry["candidate"]
    return int(version)


class SageMakerDeployer:
    """Deploys adapter versions to one SageMaker multi-model endpoint."""

    target = "sagemaker"
    layout = "multimodel"

    def __init__(self, config: SageMakerConfig | None = None, *, sagemaker_client: Any = None, s3_client: Any = None,
                 **options: Any):
        if config is None:
            known = set(SageMakerConfig.__dataclass_fields__)
            unknown = set(options) - known
            if unknown:
                raise DeployError(f"unknown SageMaker option(s): {', '.join(sorted(unknown))}")
            config = SageMakerConfig(**{k: v for k, v in options.items() if v is not None})
        elif options:
            raise DeployError("pass either config= or options, not both")
        config.check()
        self.config = config
        self.calls: list[dict[str, Any]] = []
        self._sm = sagemaker_client
        self._s3 = s3_client

    # ---- clients and the call log -----------------------------------------------------------------
    def _client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        extra: dict[str, Any] = {}
        if service == "s3" and self.config.endpoint_url:
            extra["s3"] = {"addressing_style": "path"}  # moto and most S3-compatible servers
        cfg = Config(retries={"mode": "standard", "max_attempts": self.config.max_attempts},
                     connect_timeout=10, read_timeout=120, **extra)
        return boto3.session.Session(region_name=self.config.region).client(
            service, endpoint_url=self.config.endpoint_url, config=cfg)

    @property
    def sm(self) -> Any:
        if self._sm is None:
            self._sm = self._client("sagemaker")
        return self._sm

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._client("s3")
        return self._s3

    def _aws(self, client: Any, op: str, **kwargs: Any) -> Any:
        """Call `op` (CamelCase, as in the AWS docs) and record its outcome."""
        from botocore.exceptions import ClientError

        service = client.meta.service_model.service_name if hasattr(client, "meta") else "aws"
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()
        started = time.monotonic()
        record: dict[str, Any] = {"call": f"{service}:{op}", "resource": _resource(kwargs)}
        try:
            response = getattr(client, name)(**kwargs)
        except ClientError as exc:
            record.update(ok=False, error=_code(exc), message=str(exc.response.get("Error", {}).get("Message", ""))[:300],
                          ms=round((time.monotonic() - started) * 1000, 1))
            self.calls.append(record)
            raise
        record.update(ok=True, ms=round((time.monotonic() - started) * 1000, 1))
        self.calls.append(record)
        return response

    def _not_found(self) -> None:
        """The last call's "not found" answer was expected (a Describe before a Create): record it so."""
        record = self.calls[-1]
        record.pop("error", None)
        record.pop("message", None)
        record.update(ok=True, result="not found")

    @contextlib.contextmanager
    def _step(self, doing: str) -> Iterator[None]:
        """Translate AWS/botocore failures inside a public method into one clear `DeployError`."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        try:
            yield
        except DeployError as exc:
            exc.details.setdefault("aws_calls", list(self.calls))
            raise
        except ClientError as exc:
            raise DeployError(self._explain(exc, doing), aws_error=_code(exc), aws_calls=list(self.calls)) from None
        except NoCredentialsError:
            raise DeployError(f"{doing}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "AWS_PROFILE, or run with an instance/task role)", aws_calls=list(self.calls)) from None
        except EndpointConnectionError as exc:
            where = self.config.endpoint_url or f"region {self.config.region}"
            raise DeployError(f"{doing}: cannot reach AWS at {where}: {exc}", aws_calls=list(self.calls)) from None
        except BotoCoreError as exc:
            raise DeployError(f"{doing}: {exc}", aws_calls=list(self.calls)) from None

    def _explain(self, exc: Any, doing: str) -> str:
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        op = exc.operation_name
        cfg = self.config
        if code in THROTTLING:
            return (f"{doing}: AWS throttled {op} even after {cfg.max_attempts} attempts with backoff ({message}); "
                    "try again in a minute, or ask for a higher request-rate quota")
        if code == "ResourceLimitExceeded":
            return (f"{doing}: an AWS account limit stopped {op}: {message}. Request a quota increase in Service "
                    f"Quotas (SageMaker → '{cfg.instance_type} for endpoint usage') or delete unused endpoints")
        if code == "NoSuchBucket":
            return f"{doing}: the bucket {cfg.bucket!r} does not exist in {cfg.region}; create it first (docs/deploy-sagemaker.md)"
        if "role" in message.lower() or "assume" in message.lower():
            return (f"{doing}: SageMaker cannot use the execution role {cfg.role_arn} ({op}: {message}). Check that "
                    f"the role exists, trusts sagemaker.amazonaws.com and may read s3://{cfg.bucket}/{cfg.prefix}/")
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId",
                    "SignatureDoesNotMatch", "ExpiredToken"}:
            return f"{doing}: AWS denied {op} ({code}: {message}); the credentials in use lack the permission"
        return f"{doing}: {op} failed: {code}: {message}"

    def _begin(self) -> None:
        self.calls = []

    def _result(self, **fields: Any) -> dict:
        return {"target": self.target, "layout": self.layout, "endpoint_name": self.config.endpoint_name,
                **fields, "aws_calls": list(self.calls)}

    # ---- names ------------------------------------------------------------------------------------
    @property
    def adapters_prefix(self) -> str:
        return f"{self.config.prefix}/adapters/"

    @property
    def model_data_url(self) -> str:
        return f"s3://{self.config.bucket}/{self.adapters_prefix}"

    @property
    def routing_key(self) -> str:
        return f"{self.config.prefix}/routing.json"

    def _tags(self, **extra: str) -> list[dict[str, str]]:
        tags = {"project": PROJECT, "tutorloop:layout": self.layout, **extra}
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def container_environment(self) -> dict[str, str]:
        return {"TUTOR_MULTI_MODEL": "true", "SAGEMAKER_BIND_TO_PORT": "8080", **self.config.container_env}

    def _model_spec(self) -> dict[str, Any]:
        return {"Image": self.config.image_uri, "Mode": "MultiModel", "ModelDataUrl": self.model_data_url,
                "Environment": self.container_environment()}

    def _names(self) -> tuple[str, str]:
        """(model, endpoint config) names: a hash of what they contain, so a change makes new ones."""
        cfg = self.config
        model_hash = _short_hash({"spec": self._model_spec(), "role": cfg.role_arn})
        model = f"{cfg.endpoint_name[:50]}-{model_hash}"
        config_hash = _short_hash({"model": model, "type": cfg.instance_type, "count": cfg.instance_count})
        return model, f"{cfg.endpoint_name[:50]}-{config_hash}"

    # ---- S3 ---------------------------------------------------------------------------------------
    def _archives(self, subject: str | None = None) -> dict[str, dict[int, list[dict[str, Any]]]]:
        """{subject: {version: [{"key", "sha256", "target_model"}]}} of the archives in S3."""
        out: dict[str, dict[int, list[dict[str, Any]]]] = {}
        prefix = self.adapters_prefix + (f"{subject}-v" if subject else "")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._aws(self.s3, "ListObjectsV2", **kwargs)
            for obj in page.get("Contents", []):
                parsed = parse_archive_name(obj["Key"])
                if parsed is None or (subject and parsed[0] != subject):
                    continue
                s, v, sha = parsed
                out.setdefault(s, {}).setdefault(v, []).append(
                    {"key": obj["Key"], "sha256": sha, "target_model": obj["Key"][len(self.adapters_prefix):]})
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self._aws(self.s3, "HeadObject", Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                self._not_found()
                return None
            raise

    def read_routing(self) -> dict[str, dict[str, Any]]:
        """{subject: {"promoted", "candidate", "share", "promoted_model", "candidate_model"}} from S3."""
        return self._read_routing()[0]

    def _read_routing(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """The split and the object's ETag (None: no routing.json yet), for a conditional write."""
        from botocore.exceptions import ClientError

        try:
            obj = self._aws(self.s3, "GetObject", Bucket=self.config.bucket, Key=self.routing_key)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                self._not_found()
                return {}, None
            raise
        try:
            data = json.loads(obj["Body"].read())
        except ValueError as exc:
            raise DeployError(f"s3://{self.config.bucket}/{self.routing_key} is not valid JSON ({exc}); "
                              "fix or delete it, then set the traffic again") from None
        return data.get("subjects", {}), obj.get("ETag")

    def _write_routing(self, routing: dict[str, dict[str, Any]], etag: str | None) -> bool:
        """Write the split only if nobody changed it since we read it (S3 conditional write).

        Two jobs changing different subjects at once must not lose one of the changes; returns
        False when the object changed under us (the caller re-reads and tries again).
        """
        from botocore.exceptions import ClientError

        body = json.dumps({"format": 1, "project": PROJECT, "endpoint_name": self.config.endpoint_name,
                           "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "subjects": dict(sorted(routing.items()))}, indent=2, sort_keys=True).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._aws(self.s3, "PutObject", Bucket=self.config.bucket, Key=self.routing_key, Body=body,
                      ContentType="application/json", Metadata={"project": PROJECT}, **condition)
        except ClientError as exc:
            if _code(exc) in {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}:
                self.calls[-1].update(ok=True, result="changed concurrently; retrying")
                return False
            raise
        return True

    # ---- the endpoint -----------------------------------------------------------------------------
    def _describe(self, op: str, **kwargs: Any) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self._aws(self.sm, op, **kwargs)
        except ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", "")
            if _code(exc) in NOT_FOUND or (_code(exc) == "ValidationException" and
                                           re.search(r"could not find|does not exist|not found", message, re.I)):
                self._not_found()
                return None
            raise

    def ensure_endpoint(self) -> dict[str, Any]:
        """CreateModel / CreateEndpointConfig / CreateEndpoint as needed, then wait for InService."""
        cfg = self.config
        model, config_name = self._names()
        created: list[str] = []
        if self._describe("DescribeModel", ModelName=model) is None:
            self._aws(self.sm, "CreateModel", ModelName=model, ExecutionRoleArn=cfg.role_arn,
                      PrimaryContainer=self._model_spec(), Tags=self._tags())
            created.append(f"model {model}")
        if self._describe("DescribeEndpointConfig", EndpointConfigName=config_name) is None:
            self._aws(self.sm, "CreateEndpointConfig", EndpointConfigName=config_name,
                      ProductionVariants=[{"VariantName": VARIANT, "ModelName": model,
                                           "InstanceType": cfg.instance_type,
                                           "InitialInstanceCount": cfg.instance_count, "InitialVariantWeight": 1.0}],
                      Tags=self._tags())
            created.append(f"endpoint config {config_name}")
        return self._ensure_endpoint_on(config_name, created)

    def _ensure_endpoint_on(self, config_name: str, created: list[str]) -> dict[str, Any]:
        cfg = self.config
        endpoint = self._describe("DescribeEndpoint", EndpointName=cfg.endpoint_name)
        if endpoint is None:
            self._aws(self.sm, "CreateEndpoint", EndpointName=cfg.endpoint_name, EndpointConfigName=config_name,
                      Tags=self._tags())
            created.append(f"endpoint {cfg.endpoint_name}")
        else:
            if endpoint["EndpointStatus"] in TRANSITIONAL:
                endpoint = self._wait_in_service()
            if endpoint["EndpointStatus"] == "Failed":
                raise DeployError(f"endpoint {cfg.endpoint_name} is Failed ({endpoint.get('FailureReason')}); "
                                  "delete it (teardown) and deploy again", endpoint_status="Failed")
            if endpoint.get("EndpointConfigName") != config_name:
                # the image, role or instance type changed: a rolling, blue/green update (not in moto)
                self._aws(self.sm, "UpdateEndpoint", EndpointName=cfg.endpoint_name, EndpointConfigName=config_name)
                created.append(f"endpoint {cfg.endpoint_name} updated to {config_name}")
        endpoint = self._wait_in_service()
        return {"endpoint_name": cfg.endpoint_name, "endpoint_arn": endpoint.get("EndpointArn"),
                "status": endpoint["EndpointStatus"], "endpoint_config": config_name, "created": created}

    def _wait_in_service(self) -> dict[str, Any]:
        """Poll DescribeEndpoint with exponential backoff until InService (Failed or timeout: DeployError)."""
        cfg = self.config
        deadline = time.monotonic() + cfg.wait_timeout
        delay = cfg.poll_interval
        while True:
            endpoint = self._describe("DescribeEndpoint", EndpointName=cfg.endpoint_name)
            if endpoint is None:
                raise DeployError(f"endpoint {cfg.endpoint_name} disappeared while waiting for it")
            status = endpoint["EndpointStatus"]
            if status == "InService":
                return endpoint
            if status not in TRANSITIONAL:
                raise DeployError(f"endpoint {cfg.endpoint_name} is {status}: {endpoint.get('FailureReason') or 'no reason given'}"
                                  " (the container logs are in CloudWatch: /aws/sagemaker/Endpoints/"
                                  f"{cfg.endpoint_name})", endpoint_status=status)
            if time.monotonic() + delay > deadline:
                raise DeployError(f"endpoint {cfg.endpoint_name} still {status} after {cfg.wait_timeout:.0f} s; "
                                  "deploy again later to resume waiting", endpoint_status=status)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _endpoint_arn(self) -> str:
        endpoint = self._describe("DescribeEndpoint", EndpointName=self.config.endpoint_name)
        if endpoint is None:
            raise DeployError(f"there is no endpoint {self.config.endpoint_name} yet; publish a version first")
        return endpoint["EndpointArn"]

    # ---- Deployer ---------------------------------------------------------------------------------
    def publish(self, subject: str, version: int, artifact_path: str, sha256: str, base_path: str = "") -> dict:
        """Verify, package, upload `model.tar.gz` (skipped when identical) and ensure the endpoint.

        `base_path`: an optimised variant's own base; it travels in the archive (`adapter/` + `base/`) and the
        container serves it from a process of its own (`serving.bases`)."""
        self._begin()
        path = check_artifact(subject, version, artifact_path, sha256)  # refused before any upload
        sha256 = sha256.lower()
        own_base = base_path and Path(base_path).resolve() != Path(path).resolve()
        if own_base:
            from rlhf.manifest import ArtifactError, verify

            try:
                verify(base_path)
            except ArtifactError as exc:
                raise DeployError(f"refused {subject} v{version}: its base failed verification: {exc}",
                                  subject=subject, version=version) from None
        data = build_archive(path, base_path if own_base else None)
        archive_sha = sha256_bytes(data)
        key = self.adapters_prefix + archive_name(subject, version, sha256)
        with self._step(f"publishing {subject} v{version}"):
            for other in self._archives(subject).get(subject, {}).get(version, []):
                if other["sha256"] != sha256:
                    raise DeployError(f"{subject} v{version} is already published from a different artefact "
                                      f"(s3://{self.config.bucket}/{other['key']}); a version's archive never "
                                      "changes (endpoints cache it by name): unpublish it first",
                                      subject=subject, version=version)
            head = self._head(key)
            if head is not None and head.get("Metadata", {}).get("sha256") == sha256:
                action = "unchanged"
            else:
                self._aws(self.s3, "PutObject", Bucket=self.config.bucket, Key=key, Body=data,
                          ContentType="application/gzip",
                          ChecksumSHA256=base64.b64encode(bytes.fromhex(archive_sha)).decode(),
                          Metadata={"sha256": sha256, "archive-sha256": archive_sha, "subject": subject,
                                    "version": str(version), "project": PROJECT},
                          Tagging=urlencode({"project": PROJECT, "subject": subject, "version": str(version)}))
                action = "uploaded"
            endpoint = self.ensure_endpoint()
            s3_uri = f"s3://{self.config.bucket}/{key}"
            activated = self._activate(subject, version, sha256, s3_uri)
        warnings = self._warnings()
        return self._result(
            action=action, subject=subject, version=version, sha256=sha256, archive_sha256=archive_sha,
            bytes=len(data), s3_uri=s3_uri, target_model=key[len(self.adapters_prefix):],
            endpoint=endpoint, warnings=warnings, **activated,
            message=(f"uploaded {subject} v{version} ({len(data)} bytes)" if action == "uploaded"
                     else f"{subject} v{version} was already in S3 with the same SHA-256; upload skipped"))

    def _activate(self, subject: str, version: int, sha256: str, s3_uri: str) -> dict[str, Any]:
        """After upload: nothing on a multi-model endpoint (SageMaker loads archives on first use)."""
        return {}

    def _deactivate(self, subject: str, version: int) -> list[str]:
        """Before the archive is deleted: nothing here; returns what was removed."""
        return []

    def _warnings(self) -> list[str]:
        if self.config.instance_type.startswith(MME_UNSUPPORTED_FAMILIES):
            return [f"{self.config.instance_type}: AWS serves multi-model endpoints with a custom container on CPU "
                    "instances only; for GPU/Inferentia use layout=inference-components (docs/deploy-sagemaker.md)"]
        return []

    def set_traffic(self, subject: str, promoted: int, candidate: int | None, candidate_share: float) -> dict:
        """Point the subject's split at published archives (one S3 PUT + an endpoint tag)."""
        self._begin()
        share = check_split(promoted, candidate, candidate_share)
        if subject not in _subjects():
            raise DeployError(f"unknown subject {subject!r}; expected one of {', '.join(_subjects())}")
        with self._step(f"setting the traffic of {subject}"):
            archives = self._archives(subject).get(subject, {})
            for v in (promoted, candidate):
                if v is not None and v not in archives:
                    raise DeployError(f"{subject} v{v} is not published to s3://{self.config.bucket}/"
                                      f"{self.adapters_prefix}; publish it first", subject=subject, version=v)
            entry = {"promoted": promoted, "candidate": candidate, "share": share,
                     "promoted_model": archives[promoted][0]["target_model"],
                     "candidate_model": archives[candidate][0]["target_model"] if candidate is not None else None}
            arn: str | None = None
            for _attempt in range(8):
                routing, etag = self._read_routing()
                previous = routing.get(subject)
                if previous == entry:
                    return self._result(action="unchanged", subject=subject, routing=entry, previous=previous,
                                        message=f"{subject} already routes {_describe(entry)}")
                arn = arn or self._endpoint_arn()
                if self._write_routing({**routing, subject: entry}, etag):
                    break
            else:
                raise DeployError(f"s3://{self.config.bucket}/{self.routing_key} kept changing while setting the "
                                  f"traffic of {subject}; try again")
            self._aws(self.sm, "AddTags", ResourceArn=arn, Tags=[{"Key": f"tutorloop:routing:{subject}",
                                                                   "Value": _tag_value(entry)}])
        return self._result(action="routed", subject=subject, routing=entry, previous=previous,
                            message=f"{subject} now routes {_describe(entry)}")

    def unpublish(self, subject: str, version: int) -> dict:
        """Delete the version's archive; refused while it is promoted or the canary."""
        self._begin()
        with self._step(f"unpublishing {subject} v{version}"):
            entry = self.read_routing().get(subject) or {}
            if version in (entry.get("promoted"), entry.get("candidate")):
                raise DeployError(f"{subject} v{version} is in use ({_describe(entry)}); promote or roll back to "
                                  "another version before unpublishing it", subject=subject, version=version)
            deactivated = self._deactivate(subject, version)
            found = self._archives(subject).get(subject, {}).get(version, [])
            for archive in found:
                self._aws(self.s3, "DeleteObject", Bucket=self.config.bucket, Key=archive["key"])
        if not found and not deactivated:
            return self._result(action="unchanged", subject=subject, version=version,
                                message=f"{subject} v{version} was not published")
        return self._result(action="deleted", subject=subject, version=version,
                            deleted=[*deactivated, *(f"s3://{self.config.bucket}/{a['key']}" for a in found)],
                            message=f"deleted {subject} v{version}'s archive (instances drop it from their cache)")

    def state(self) -> dict:
        """{subject: {"loaded": [published versions], "promoted", "candidate", "share"}}."""
        self._begin()
        with self._step("reading the SageMaker deployment"):
            archives = self._archives()
            routing = self.read_routing()
        out: dict[str, dict[str, Any]] = {}
        for subject in sorted(set(_subjects()) | set(archives) | set(routing)):
            entry = routing.get(subject) or {}
            out[subject] = {"loaded": sorted(archives.get(subject, {})), "promoted": entry.get("promoted"),
                            "candidate": entry.get("candidate"), "share": float(entry.get("share") or 0.0)}
        return out

    # ---- beyond the protocol: inspection and teardown -----------------------------------------------
    def describe(self) -> dict:
        """The endpoint, its config and model as AWS reports them (for the studio and the docs)."""
        self._begin()
        with self._step("describing the SageMaker endpoint"):
            endpoint = self._describe("DescribeEndpoint", EndpointName=self.config.endpoint_name)
            out: dict[str, Any] = {"endpoint": endpoint and {k: endpoint.get(k) for k in
                                                              ("EndpointName", "EndpointArn", "EndpointStatus",
                                                               "EndpointConfigName", "FailureReason")}}
            if endpoint:
                ec = self._describe("DescribeEndpointConfig", EndpointConfigName=endpoint["EndpointConfigName"])
                out["endpoint_config"] = ec and {"name": ec["EndpointConfigName"],
                                                 "variants": ec.get("ProductionVariants", [])}
        return self._result(**out, config={k: v for k, v in asdict(self.config).items() if k != "container_env"})

    def teardown(self, purge_artifacts: bool = False) -> dict:
        """Delete the endpoint, its config and model (and with purge, every archive and routing.json)."""
        self._begin()
        deleted: list[str] = []
        with self._step(f"deleting endpoint {self.config.endpoint_name}"):
            endpoint = self._describe("DescribeEndpoint", EndpointName=self.config.endpoint_name)
            models: list[str] = []
            if endpoint is not None:
                ec = self._describe("DescribeEndpointConfig", EndpointConfigName=endpoint["EndpointConfigName"])
                self._aws(self.sm, "DeleteEndpoint", EndpointName=self.config.endpoint_name)
                deleted.append(f"endpoint {self.config.endpoint_name}")
                if ec is not None:
                    models = [v["ModelName"] for v in ec.get("ProductionVariants", []) if v.get("ModelName")]
                    self._aws(self.sm, "DeleteEndpointConfig", EndpointConfigName=ec["EndpointConfigName"])
                    deleted.append(f"endpoint config {ec['EndpointConfigName']}")
            model, config_name = self._names()
            for name in dict.fromkeys([*models, model]):
                if self._describe("DescribeModel", ModelName=name) is not None:
                    self._aws(self.sm, "DeleteModel", ModelName=name)
                    deleted.append(f"model {name}")
            if self._describe("DescribeEndpointConfig", EndpointConfigName=config_name) is not None:
                self._aws(self.sm, "DeleteEndpointConfig", EndpointConfigName=config_name)
                deleted.append(f"endpoint config {config_name}")
            if purge_artifacts:
                for versions in self._archives().values():
                    for archives in versions.values():
                        for a in archives:
                            self._aws(self.s3, "DeleteObject", Bucket=self.config.bucket, Key=a["key"])
                            deleted.append(f"s3://{self.config.bucket}/{a['key']}")
                if self._head(self.routing_key) is not None:
                    self._aws(self.s3, "DeleteObject", Bucket=self.config.bucket, Key=self.routing_key)
                    deleted.append(f"s3://{self.config.bucket}/{self.routing_key}")
        return self._result(action="deleted" if deleted else "unchanged", deleted=deleted,
                            message=f"deleted {len(deleted)} resource(s)" if deleted else "nothing to delete")


def _resource(kwargs: dict[str, Any]) -> str:
    """What a call acted on (an S3 URI, an endpoint/model/config name, an ARN), for the job's call table."""
    if kwargs.get("Bucket"):
        return f"s3://{kwargs['Bucket']}/{kwargs.get('Key') or kwargs.get('Prefix') or ''}"
    for name in ("EndpointName", "InferenceComponentName", "EndpointConfigName", "ModelName", "ResourceArn"):
        if kwargs.get(name):
            return str(kwargs[name])
    return ""


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _describe(entry: dict[str, Any]) -> str:
    if not entry:
        return "nothing"
    if entry.get("candidate") is None:
        return f"100% to v{entry.get('promoted')}"
    share = float(entry.get("share") or 0.0)
    return f"{100 - share * 100:g}% to v{entry['promoted']}, {share * 100:g}% to v{entry['candidate']}"


def _tag_value(entry: dict[str, Any]) -> str:
    """A tag value (letters, digits, spaces and _.:/=+-@ only) summarising the split."""
    if entry.get("candidate") is None:
        return f"promoted=v{entry['promoted']}"
    return f"promoted=v{entry['promoted']} candidate=v{entry['candidate']} share={entry['share']:g}"

"""AWS test fixtures: a moto server *process* (AWS over HTTP) and small verified artefacts.

Other areas reuse them (e.g. the pipeline e2e test with `TUTOR_DEPLOY_TARGET=sagemaker`):
`from tests.deploy.aws import aws_env, moto_server, moto  # noqa: F401` and `sagemaker_env(moto)`.

The moto server is a separate process speaking the AWS wire protocol; our code talks to it
through boto3 exactly as to AWS (only `endpoint_url` differs). Dummy credentials are set for
the test session only. Each test starts from an empty mock (`/moto-api/reset`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.endpoint import free_port

REGION = "us-east-1"
BUCKET = "tutorloop-test-artifacts"
ROLE_ARN = "arn:aws:iam::123456789012:role/tutorloop-sagemaker"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tutorloop-serving:test"


@dataclass
class Moto:
    url: str
    process: subprocess.Popen

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def queue_invoke_results(self, bodies: list[dict]) -> None:
        """Queue InvokeEndpoint answers (moto's own API; it returns them in order)."""
        results = [{"Body": json.dumps(b), "ContentType": "application/json",
                    "InvokedProductionVariant": "AllTraffic"} for b in bodies]
        httpx.post(f"{self.url}/moto-api/static/sagemaker/endpoint-results",
                   json={"region": REGION, "results": results}, timeout=10).raise_for_status()

    def client(self, service: str):
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.url)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials and region for this test session only (never a real account)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        yield


@pytest.fixture(scope="session")
def moto_server(aws_env, tmp_path_factory) -> Iterator[Moto]:
    """`python -m moto.server` on a free port, stopped at the end of the session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/moto-api/", timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)  # polling interval while the process boots
        yield Moto(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def moto(moto_server) -> Moto:
    """The moto server, emptied, with the artefacts bucket created."""
    moto_server.reset()
    moto_server.client("s3").create_bucket(Bucket=BUCKET)
    return moto_server


def sagemaker_options(moto: Moto, **extra) -> dict:
    return {"region": REGION, "bucket": BUCKET, "prefix": "tutorloop", "role_arn": ROLE_ARN, "image_uri": IMAGE_URI,
            "instance_type": "ml.m5.xlarge", "endpoint_name": "tutorloop-test", "endpoint_url": moto.url,
            "poll_interval": 0.05, "max_attempts": 2, **extra}


def sagemaker_env(moto: Moto) -> dict[str, str]:
    """Settings/environment for `TUTOR_DEPLOY_TARGET=sagemaker` against this mock (e.g. for override_settings)."""
    return {"TUTOR_DEPLOY_TARGET": "sagemaker", "AWS_REGION": REGION, "AWS_ENDPOINT_URL": moto.url,
            "TUTOR_S3_BUCKET": BUCKET, "TUTOR_S3_PREFIX": "tutorloop", "TUTOR_SAGEMAKER_ROLE_ARN": ROLE_ARN,
            "TUTOR_SAGEMAKER_IMAGE_URI": IMAGE_URI, "TUTOR_SAGEMAKER_INSTANCE_TYPE": "ml.m5.xlarge",
            "TUTOR_SAGEMAKER_ENDPOINT_NAME": "tutorloop-test", "TUTOR_SAGEMAKER_LAYOUT": "multimodel"}


def make_artifact(root: Path, subject: str, version: int, weights: bytes | None = None) -> tuple[Path, str]:
    """A small, real adapter-kind artefact (manifest + hashes) for the S3/SageMaker paths; (path, sha256)."""
    from rlhf.manifest import artifact_sha256, write_artifact

    def populate(tmp: Path) -> None:
        (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
        (tmp / "adapter_model.safetensors").write_bytes(weights or f"{subject}-{version}".encode() * 64)
        (tmp / "adapter_meta.json").write_text(json.dumps({"subject": subject, "version": version}))

    path = write_artifact(root / subject / f"v{version}", "adapter", populate,
                          extra={"subject": subject, "version": version}, overwrite=True)
    return path, artifact_sha256(path)


def reversion(src: Path, dest: Path, version: int) -> tuple[Path, str]:
    """A copy of a real adapter artefact re-issued as another version (same weights, new manifest)."""
    from rlhf.manifest import MANIFEST, artifact_sha256, read_manifest, write_artifact

    manifest = read_manifest(src)

    def populate(tmp: Path) -> None:
        for p in src.iterdir():
            if p.name != MANIFEST and p.is_file():
                shutil.copy(p, tmp / p.name)
        meta = tmp / "adapter_meta.json"
        if meta.exists():
            meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": version}))

    keep = {k: manifest.get(k) for k in ("base_model", "base_model_sha256", "dataset_sha256", "config", "metrics")}
    extra = {k: v for k, v in manifest.items() if k not in {*keep, "files", "format", "kind", "parent", "created_at"}}
    path = write_artifact(dest, "adapter", populate, parent=str(src), **keep,
                          extra={**extra, "version": version}, overwrite=True)
    return path, artifact_sha256(path)

"""An optimised variant on the SageMaker path: `model.tar.gz` with `adapter/` + `base/`.

The multi-model container (a real `python -m serving` with `TUTOR_MULTI_MODEL=1`) loads such an archive by
serving the adapter from a child endpoint process of the archive's own base (serving.bases), and stops that
child when SageMaker unloads the model; a base that fails verification is refused and starts nothing. The
SageMaker deployer (against a moto server process) uploads that layout and refuses a bad base before any
upload.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest

from rlhf.manifest import artifact_sha256, verify
from rlhf.optimise.quantise import QuantiseConfig, quantise
from serving.deploy import DeployError, get_deployer
from serving.deploy.packaging import archive_name, build_archive, extract_archive, variant_parts
from tests.deploy.aws import BUCKET, sagemaker_options
from tests.fixtures.endpoint import free_port, start_multimodel_endpoint

pytestmark = pytest.mark.ml  # quantises the tiny model (a few seconds)

SUBJECT, VERSION = "mathematics", 2
TARGET = "X-Amzn-SageMaker-Target-Model"
BODY = {"prompt": "What is 2 + 2?", "parameters": {"max_new_tokens": 3, "temperature": 0.0}}


@pytest.fixture(scope="module")
def variant(tiny_base_path, tiny_adapters, tmp_path_factory) -> dict:
    """An int8 variant of the tiny base with the mathematics adapter re-recorded on it as v2."""
    out = tmp_path_factory.mktemp("variant")
    q = quantise(tiny_base_path, out / "base-int8", QuantiseConfig(), adapters={SUBJECT: tiny_adapters[SUBJECT]},
                 adapters_out=out / "adapters", adapter_version=VERSION)
    adapter, base = Path(q["adapters"][SUBJECT]), Path(q["base"])
    sha = artifact_sha256(adapter)
    return {"adapter": adapter, "base": base, "sha256": sha, "name": archive_name(SUBJECT, VERSION, sha),
            "archive": build_archive(adapter, base)}


@pytest.fixture(scope="module")
def container(tiny_base_path, tiny_adapters, tmp_path_factory):
    """The multi-model container: the fp32 tiny base with every subject's v1, multi-model routes mounted."""
    with start_multimodel_endpoint(tiny_base_path, tiny_adapters, tmp_path_factory.mktemp("variant-container"),
                                   admin_token=secrets.token_urlsafe(16)) as server:
        yield server


def admin_listing(server) -> dict:
    r = httpx.get(f"{server.url}/admin/adapters", headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def loaded(listing: dict) -> set[tuple[str, int]]:
    return {(a["subject"], a["version"]) for a in listing["adapters"]}


def test_archive_layout_unpacks_to_adapter_and_its_base(variant, tmp_path: Path):
    with tarfile.open(fileobj=io.BytesIO(variant["archive"]), mode="r:gz") as tar:
        names = tar.getnames()
    assert {n.split("/", 1)[0] for n in names} == {"adapter", "base"}
    assert {"adapter/manifest.json", "base/manifest.json", "base/model.safetensors"} <= set(names)
    adapter, base = variant_parts(extract_archive(variant["archive"], tmp_path / "unpacked"))
    assert artifact_sha256(adapter) == variant["sha256"] and base is not None
    assert verify(base)["kind"] == verify(variant["base"])["kind"]


@pytest.mark.slow  # starts the container and a child endpoint process
def test_container_serves_a_variant_archive_from_a_child_process_and_unload_stops_it(container, variant):
    url, root = container.url, container.mm_root
    packed = root / variant["name"]  # a packed archive under the root: the container unpacks it beside
    packed.write_bytes(variant["archive"])
    r = httpx.post(f"{url}/models", json={"model_name": "variant-1", "url": str(packed)},
                   headers={TARGET: variant["name"]}, timeout=240)
    assert r.status_code == 200, r.text
    assert r.json()["adapter"] == {"subject": SUBJECT, "version": VERSION} and r.json()["sha256"] == variant["sha256"]

    out = httpx.post(f"{url}/models/variant-1/invoke", json={**BODY, "subject": "history"}, timeout=120)
    assert out.status_code == 200, out.text
    assert out.json()["outputs"][0]["adapter"] == {"subject": SUBJECT, "version": VERSION}
    assert out.json()["outputs"][0]["finish_reason"] in ("length", "stop"), out.json()
    same = httpx.post(f"{url}/invocations", json=BODY, headers={TARGET: variant["name"]}, timeout=120)
    assert same.status_code == 200 and same.json()["outputs"][0]["text"] == out.json()["outputs"][0]["text"]

    listing = admin_listing(container)
    [child] = listing["other_bases"]
    assert child["alive"] and child["base"] == os.path.realpath(root / ".unpacked" / "variant-1" / "base")
    assert child["versions"] == [{"subject": SUBJECT, "version": VERSION, "bare": False}]
    assert {a["version"]: bool(a.get("upstream")) for a in listing["adapters"] if a["subject"] == SUBJECT} \
        == {1: False, VERSION: True}
    assert httpx.get(f"{url}/ping").json()["other_bases"] == [{"base": child["base"], "alive": True, "versions": 1}]

    r = httpx.delete(f"{url}/models/variant-1", timeout=60)
    assert r.status_code == 200, r.text
    listing = admin_listing(container)
    assert listing["other_bases"] == [] and (SUBJECT, VERSION) not in loaded(listing)
    assert not Path(f"/proc/{child['pid']}").exists()  # stopped and reaped with the base's last version
    assert not (root / ".unpacked" / "variant-1").exists()  # what the load unpacked is removed with it
    assert httpx.post(f"{url}/models/variant-1/invoke", json=BODY).status_code == 404
    plain = httpx.post(f"{url}/invocations", json={**BODY, "subject": SUBJECT}, timeout=60)
    assert plain.json()["outputs"][0]["adapter"] == {"subject": SUBJECT, "version": 1}  # the subject's own route


@pytest.mark.slow
def test_container_refuses_a_variant_whose_base_was_tampered_and_starts_nothing(container, variant):
    url, root = container.url, container.mm_root
    unpacked = extract_archive(variant["archive"], root / "variant-t" / "model")  # what SageMaker does first
    weights = unpacked / "base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte in the middle of the int8 weights
    weights.write_bytes(bytes(data))
    r = httpx.post(f"{url}/models", json={"model_name": "variant-t", "url": str(unpacked)},
                   headers={TARGET: variant["name"]}, timeout=120)
    assert r.status_code in (400, 422), r.text
    assert "verification failed" in r.json()["error"]
    listing = admin_listing(container)
    assert listing["other_bases"] == [] and (SUBJECT, VERSION) not in loaded(listing)
    assert httpx.get(f"{url}/models").json() == {"models": []}


# ---- the SageMaker deployer (moto server process) ------------------------------------------------

def test_sagemaker_publish_uploads_the_variant_with_its_base(moto, variant):
    s3 = moto.client("s3")
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    out = d.publish(SUBJECT, VERSION, str(variant["adapter"]), variant["sha256"], base_path=str(variant["base"]))
    assert out["action"] == "uploaded" and out["target_model"] == variant["name"]
    body = s3.get_object(Bucket=BUCKET, Key=f"tutorloop/adapters/{variant['name']}")["Body"].read()
    assert body == variant["archive"]  # deterministic: the same bytes the container test loads
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = tar.getnames()
    adapter_files = sorted(p.name for p in variant["adapter"].iterdir() if p.is_file())
    base_files = sorted(p.relative_to(variant["base"]).as_posix() for p in variant["base"].rglob("*") if p.is_file())
    assert sorted(n for n in names if n.startswith("adapter/")) == [f"adapter/{f}" for f in adapter_files]
    assert sorted(n for n in names if n.startswith("base/")) == [f"base/{f}" for f in base_files]
    assert len(names) == len(adapter_files) + len(base_files)
    again = d.publish(SUBJECT, VERSION, str(variant["adapter"]), variant["sha256"], base_path=str(variant["base"]))
    assert again["action"] == "unchanged"


def test_sagemaker_refuses_a_variant_whose_base_fails_verification_before_upload(moto, variant, tmp_path: Path):
    sm, s3 = moto.client("sagemaker"), moto.client("s3")
    bad = tmp_path / "base-int8"
    shutil.copytree(variant["base"], bad)
    (bad / "config.json").write_text((bad / "config.json").read_text() + " ")
    d = get_deployer("sagemaker", **sagemaker_options(moto))
    with pytest.raises(DeployError, match="its base failed verification"):
        d.publish(SUBJECT, VERSION, str(variant["adapter"]), variant["sha256"], base_path=str(bad))
    assert s3.list_objects_v2(Bucket=BUCKET).get("Contents", []) == []
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_local_publish_refuses_a_variant_whose_base_fails_verification_before_calling_the_endpoint(variant, tmp_path):
    bad = tmp_path / "base-int8"
    shutil.copytree(variant["base"], bad)
    (bad / "config.json").write_text((bad / "config.json").read_text() + " ")
    d = get_deployer("local", endpoint_url=f"http://127.0.0.1:{free_port()}", admin_token="x", retries=1)
    with pytest.raises(DeployError, match="its base failed verification"):  # not "cannot reach the endpoint"
        d.publish(SUBJECT, VERSION, str(variant["adapter"]), variant["sha256"], base_path=str(bad))

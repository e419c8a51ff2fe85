"""The local deployer and the multi-model container contract, against a real `python -m serving` process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from rlhf import SUBJECTS
from serving.client import EndpointClient
from serving.deploy import DeployError, get_deployer
from serving.deploy.packaging import archive_name, build_archive, extract_archive
from serving.registry import sticky_fraction
from tests.deploy.aws import reversion
from tests.fixtures.endpoint import free_port, start_multimodel_endpoint

pytestmark = pytest.mark.slow  # starts a model endpoint process (~30 s on a busy CPU)

QUESTION = [{"role": "user", "content": "Who was the first emperor of Rome?"}]
TARGET = "X-Amzn-SageMaker-Target-Model"


@pytest.fixture(scope="module")
def endpoint(tiny_base_path, tiny_adapters, tmp_path_factory):
    """Our own endpoint (this module changes its adapters), with the multi-model routes mounted."""
    with start_multimodel_endpoint(tiny_base_path, tiny_adapters, tmp_path_factory.mktemp("deploy-endpoint"),
                                   admin_token="deploy-test-token") as server:
        yield server


@pytest.fixture(scope="module")
def deployer(endpoint):
    return get_deployer("local", endpoint_url=endpoint.url, admin_token=endpoint.admin_token)


def version_of(out: dict) -> int:
    return out["outputs"][0]["adapter"]["version"]


def test_publish_canary_promote_rollback_unpublish(endpoint, deployer, tiny_adapters, tmp_path: Path):
    client = EndpointClient(endpoint.url, admin_token=endpoint.admin_token)
    assert deployer.state() == {s: {"loaded": [1], "promoted": 1, "candidate": None, "share": 0.0} for s in SUBJECTS}
    v2, sha2 = reversion(Path(tiny_adapters["history"]), tmp_path / "history" / "v2", 2)

    out = deployer.publish("history", 2, str(v2), sha2)
    assert out["action"] == "loaded"
    assert deployer.publish("history", 2, str(v2), sha2)["action"] == "unchanged"
    assert {(a["subject"], a["version"]): a["sha256"] for a in client.list_adapters()["adapters"]}[("history", 2)] == sha2

    canary = deployer.set_traffic("history", 1, 2, 0.1)
    assert canary["action"] == "routed"
    assert deployer.set_traffic("history", 1, 2, 0.1)["action"] == "unchanged"
    assert deployer.state()["history"] == {"loaded": [1, 2], "promoted": 1, "candidate": 2, "share": 0.1}
    in_canary = next(f"k{i}" for i in range(1000) if sticky_fraction("history", f"k{i}") < 0.1)
    outside = next(f"k{i}" for i in range(1000) if sticky_fraction("history", f"k{i}") >= 0.1)
    params = {"max_new_tokens": 2, "temperature": 0.0}
    assert version_of(client.generate(messages=QUESTION, subject="history", routing_key=in_canary, **params)) == 2
    assert version_of(client.generate(messages=QUESTION, subject="history", routing_key=outside, **params)) == 1

    assert deployer.set_traffic("history", 2, None, 0.0)["action"] == "routed"  # promote
    assert version_of(client.generate(messages=QUESTION, subject="history", routing_key=outside, **params)) == 2
    with pytest.raises(DeployError, match="in use"):
        deployer.unpublish("history", 2)

    deployer.set_traffic("history", 1, None, 0.0)  # roll back
    assert deployer.state()["history"] == {"loaded": [1, 2], "promoted": 1, "candidate": None, "share": 0.0}
    assert deployer.unpublish("history", 2)["action"] == "unloaded"
    assert deployer.unpublish("history", 2)["action"] == "unchanged"
    assert deployer.state()["history"]["loaded"] == [1]
    with pytest.raises(DeployError, match="publish it first"):
        deployer.set_traffic("history", 1, 2, 0.5)


def test_tampered_or_unregistered_artifact_is_refused(endpoint, deployer, tiny_adapters, tmp_path: Path):
    v3, sha3 = reversion(Path(tiny_adapters["language"]), tmp_path / "language" / "v3", 3)
    (v3 / "adapter_config.json").write_text((v3 / "adapter_config.json").read_text() + " ")
    with pytest.raises(DeployError, match="failed verification"):
        deployer.publish("language", 3, str(v3), sha3)
    v4, _ = reversion(Path(tiny_adapters["language"]), tmp_path / "language" / "v4", 4)
    with pytest.raises(DeployError, match="registry recorded"):
        deployer.publish("language", 4, str(v4), sha3)
    assert deployer.state()["language"]["loaded"] == [1]


def test_unreachable_endpoint_is_a_clear_error():
    d = get_deployer("local", endpoint_url=f"http://127.0.0.1:{free_port()}", admin_token="x", retries=2, backoff=0.01)
    with pytest.raises(DeployError, match=r"cannot reach the endpoint at .*\(after 2 attempts\)"):
        d.state()


# ---- the SageMaker multi-model container contract on the same process ------------------------------

def test_multimodel_contract_load_list_invoke_unload(endpoint, tiny_adapters, tmp_path: Path):
    url, root = endpoint.url, endpoint.mm_root
    v5, sha5 = reversion(Path(tiny_adapters["mathematics"]), tmp_path / "mathematics" / "v5", 5)
    target = archive_name("mathematics", 5, sha5)
    archive = build_archive(v5)
    model_dir = extract_archive(archive, root / "opaque-1" / "model")  # what SageMaker does before POST /models
    load = {"model_name": "opaque-1", "url": str(model_dir)}

    r = httpx.post(f"{url}/models", json=load, headers={TARGET: target}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["adapter"] == {"subject": "mathematics", "version": 5} and r.json()["sha256"] == sha5
    assert httpx.post(f"{url}/models", json=load, headers={TARGET: target}).status_code == 409
    assert httpx.get(f"{url}/models").json() == {"models": [{"modelName": "opaque-1", "modelUrl": str(model_dir)}]}
    assert httpx.get(f"{url}/models/opaque-1").json()["targetModel"] == target

    body = {"prompt": "2 + 2 =", "subject": "history", "parameters": {"max_new_tokens": 3, "temperature": 0.0}}
    out = httpx.post(f"{url}/models/opaque-1/invoke", json=body, timeout=60)
    assert out.status_code == 200, out.text
    assert out.json()["outputs"][0]["adapter"] == {"subject": "mathematics", "version": 5}
    same = httpx.post(f"{url}/invocations", json=body, headers={TARGET: target}, timeout=60)
    assert same.status_code == 200 and same.json()["outputs"][0]["text"] == out.json()["outputs"][0]["text"]
    plain = httpx.post(f"{url}/invocations", json=body, timeout=60)  # no header: the subject's own routing
    assert plain.json()["outputs"][0]["adapter"] == {"subject": "history", "version": 1}

    assert httpx.delete(f"{url}/models/opaque-1").status_code == 200
    assert httpx.get(f"{url}/models/opaque-1").status_code == 404
    assert httpx.post(f"{url}/models/opaque-1/invoke", json=body).status_code == 404
    admin = EndpointClient(url, admin_token=endpoint.admin_token).list_adapters()
    assert ("mathematics", 5) not in {(a["subject"], a["version"]) for a in admin["adapters"]}

    # a packed archive under the root is unpacked and loaded too
    packed = root / "opaque-2.tar.gz"
    packed.write_bytes(archive)
    r = httpx.post(f"{url}/models", json={"model_name": "opaque-2", "url": str(packed)}, headers={TARGET: target})
    assert r.status_code == 200, r.text
    assert httpx.delete(f"{url}/models/opaque-2").status_code == 200


def test_multimodel_refuses_tampered_mislabelled_and_outside_models(endpoint, tiny_adapters, tmp_path: Path):
    url, root = endpoint.url, endpoint.mm_root
    v6, sha6 = reversion(Path(tiny_adapters["history"]), tmp_path / "history" / "v6", 6)
    tampered = extract_archive(build_archive(v6), root / "opaque-3" / "model")
    weights = next(p for p in tampered.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    r = httpx.post(f"{url}/models", json={"model_name": "opaque-3", "url": str(tampered)},
                   headers={TARGET: archive_name("history", 6, sha6)})
    assert r.status_code == 422 and "verification failed" in r.json()["error"]

    intact = extract_archive(build_archive(v6), root / "opaque-4" / "model")
    r = httpx.post(f"{url}/models", json={"model_name": "opaque-4", "url": str(intact)},
                   headers={TARGET: archive_name("history", 6, "0" * 64)})
    assert r.status_code == 422 and "archive name says" in r.json()["error"]

    outside = tmp_path / "elsewhere"
    shutil.copytree(v6, outside)
    r = httpx.post(f"{url}/models", json={"model_name": "opaque-5", "url": str(outside)},
                   headers={TARGET: archive_name("history", 6, sha6)})
    assert r.status_code == 403
    assert httpx.get(f"{url}/models").json() == {"models": []}
    r = httpx.post(f"{url}/models", content=json.dumps({"model_name": 3}))
    assert r.status_code == 400

"""The SageMaker deployer, inference-components layout: the base model plus one LoRA adapter component per version.

This is the layout AWS recommends for many adapters on one base model on GPU/Inferentia (a
multi-model endpoint with a custom container is CPU-only). The endpoint hosts:

    <endpoint>-base                     inference component: the base model (our image), with
                                        accelerators/memory reserved and a copy count
    <endpoint>-<subject>-v<N>           adapter inference component: BaseInferenceComponentName =
                                        the base, Container.ArtifactUrl = the version's model.tar.gz

An invocation names the adapter component (`InferenceComponentName`), which is also what makes
streaming possible (InvokeEndpointWithResponseStream has no TargetModel). Artefacts, the
traffic split (`routing.json`) and state are shared with the multi-model deployer.

NOT exercised against a live service: moto does not implement inference components, so the
request construction is tested with botocore's Stubber only (tests/deploy/test_sagemaker_ic.py).
On the container side, serving adapter components requires the container to accept adapters that
SageMaker hands it; our image implements the multi-model contract, not that one (docs/deploy-sagemaker.md).
"""

from __future__ import annotations

import re
import time
from typing import Any

from serving.deploy import DeployError
from serving.deploy.sagemaker import VARIANT, SageMakerDeployer

IC_TRANSITIONAL = {"Creating", "Updating", "Deleting"}
ACCELERATED = ("ml.g", "ml.p", "ml.inf", "ml.trn")


def component_name(endpoint_name: str, subject: str | None = None, version: int | None = None) -> str:
    """`<endpoint>-base` or `<endpoint>-<subject>-v<N>` (component names allow letters, digits, hyphens)."""
    suffix = "base" if subject is None else f"{subject}-v{version}"
    return re.sub(r"[^a-zA-Z0-9-]", "-", f"{endpoint_name[:40]}-{suffix}")[:63]


class InferenceComponentsDeployer(SageMakerDeployer):
    """Deploys adapter versions as LoRA adapter inference components over one base component."""

    layout = "inference-components"
    base_memory_mb = 4096
    adapter_wait_timeout = 900.0

    def container_environment(self) -> dict[str, str]:
        return {"SAGEMAKER_BIND_TO_PORT": "8080", **self.config.container_env}

    def _model_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"Image": self.config.image_uri, "Environment": self.container_environment()}
        if self.config.base_model_data_url:
            spec["ModelDataUrl"] = self.config.base_model_data_url
        return spec

    def _warnings(self) -> list[str]:
        return []

    @property
    def base_component(self) -> str:
        return component_name(self.config.endpoint_name)

    def ensure_endpoint(self) -> dict[str, Any]:
        """Model, endpoint config (no model in the variant), endpoint, then the base component."""
        cfg = self.config
        model, config_name = self._names()
        created: list[str] = []
        if self._describe("DescribeModel", ModelName=model) is None:
            self._aws(self.sm, "CreateModel", ModelName=model, ExecutionRoleArn=cfg.role_arn,
                      PrimaryContainer=self._model_spec(), Tags=self._tags())
            created.append(f"model {model}")
        if self._describe("DescribeEndpointConfig", EndpointConfigName=config_name) is None:
            self._aws(self.sm, "CreateEndpointConfig", EndpointConfigName=config_name, ExecutionRoleArn=cfg.role_arn,
                      ProductionVariants=[{"VariantName": VARIANT, "InstanceType": cfg.instance_type,
                                           "InitialInstanceCount": cfg.instance_count,
                                           "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}],
                      Tags=self._tags())
            created.append(f"endpoint config {config_name}")
        out = self._ensure_endpoint_on(config_name, created)
        base = self._describe("DescribeInferenceComponent", InferenceComponentName=self.base_component)
        if base is None:
            needs: dict[str, Any] = {"MinMemoryRequiredInMb": self.base_memory_mb}
            if cfg.instance_type.startswith(ACCELERATED):
                needs["NumberOfAcceleratorDevicesRequired"] = 1
            self._aws(self.sm, "CreateInferenceComponent", InferenceComponentName=self.base_component,
                      EndpointName=cfg.endpoint_name, VariantName=VARIANT,
                      Specification={"ModelName": model, "ComputeResourceRequirements": needs},
                      RuntimeConfig={"CopyCount": cfg.instance_count}, Tags=self._tags())
            created.append(f"inference component {self.base_component}")
        self._wait_component(self.base_component, cfg.wait_timeout)
        return {**out, "base_component": self.base_component, "created": created}

    def _wait_component(self, name: str, timeout: float) -> dict[str, Any]:
        """Poll DescribeInferenceComponent with backoff until InService."""
        deadline = time.monotonic() + timeout
        delay = self.config.poll_interval
        while True:
            ic = self._describe("DescribeInferenceComponent", InferenceComponentName=name)
            if ic is None:
                raise DeployError(f"inference component {name} disappeared while waiting for it")
            status = ic.get("InferenceComponentStatus")
            if status == "InService":
                return ic
            if status not in IC_TRANSITIONAL:
                raise DeployError(f"inference component {name} is {status}: {ic.get('FailureReason') or 'no reason given'}",
                                  component_status=status)
            if time.monotonic() + delay > deadline:
                raise DeployError(f"inference component {name} still {status} after {timeout:.0f} s; deploy again "
                                  "later to resume waiting", component_status=status)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _activate(self, subject: str, version: int, sha256: str, s3_uri: str) -> dict[str, Any]:
        """Create the version's adapter component over the base (idempotent), wait for InService."""
        name = component_name(self.config.endpoint_name, subject, version)
        existing = self._describe("DescribeInferenceComponent", InferenceComponentName=name)
        action = "unchanged"
        if existing is not None:
            url = (existing.get("Specification") or {}).get("Container", {}).get("ArtifactUrl")
            if url and url != s3_uri:
                raise DeployError(f"inference component {name} serves {url}, not {s3_uri}; unpublish it first",
                                  subject=subject, version=version)
        else:
            self._aws(self.sm, "CreateInferenceComponent", InferenceComponentName=name,
                      EndpointName=self.config.endpoint_name,
                      Specification={"BaseInferenceComponentName": self.base_component,
                                     "Container": {"ArtifactUrl": s3_uri}},
                      Tags=self._tags(subject=subject, version=str(version), sha256=sha256))
            action = "created"
        self._wait_component(name, self.adapter_wait_timeout)
        return {"inference_component": name, "component_action": action}

    def _deactivate(self, subject: str, version: int) -> list[str]:
        name = component_name(self.config.endpoint_name, subject, version)
        if self._describe("DescribeInferenceComponent", InferenceComponentName=name) is None:
            return []
        self._aws(self.sm, "DeleteInferenceComponent", InferenceComponentName=name)
        return [f"inference component {name}"]

    def teardown(self, purge_artifacts: bool = False) -> dict:
        """Delete the adapter components and the base component, then the endpoint (as the parent)."""
        self._begin()
        deleted: list[str] = []
        with self._step(f"deleting the inference components of {self.config.endpoint_name}"):
            names: list[str] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"EndpointNameEquals": self.config.endpoint_name}
                if token:
                    kwargs["NextToken"] = token
                page = self._aws(self.sm, "ListInferenceComponents", **kwargs)
                names += [ic["InferenceComponentName"] for ic in page.get("InferenceComponents", [])]
                token = page.get("NextToken")
                if not token:
                    break
            for name in sorted(names, key=lambda n: n == self.base_component):  # adapters before the base
                self._aws(self.sm, "DeleteInferenceComponent", InferenceComponentName=name)
                deleted.append(f"inference component {name}")
        calls = list(self.calls)
        out = super().teardown(purge_artifacts)
        out["deleted"] = deleted + out["deleted"]
        out["aws_calls"] = calls + out["aws_calls"]
        out["action"] = "deleted" if out["deleted"] else "unchanged"
        return out

"""Deployers: how a trained adapter version reaches the place that serves students.

The pipeline and the studio call only `get_deployer(target, **options)` and the `Deployer`
methods below (plain arguments, no Django), so the same job drives the local endpoint or a
SageMaker endpoint. Every method is idempotent and returns a dict describing what it did (shown
on the job); failures raise `DeployError` with a message meant for an admin, not a traceback.

Promote  = `set_traffic(s, v, None, 0)`; canary = `set_traffic(s, old, new, share)`;
rollback = `set_traffic(s, previous, None, 0)`.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

TARGETS = ("local", "sagemaker")
SAGEMAKER_LAYOUTS = ("multimodel", "inference-components")


class DeployError(Exception):
    """A deploy step that could not be done; the message says why and what to do about it.

    `details` carries machine-readable context (the AWS error code, the endpoint status...).
    """

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details


@runtime_checkable
class Deployer(Protocol):
    target: str

    def publish(self, subject: str, version: int, artifact_path: str, sha256: str, base_path: str = "") -> dict: ...

    def set_traffic(self, subject: str, promoted: int, candidate: int | None, candidate_share: float) -> dict: ...

    def unpublish(self, subject: str, version: int) -> dict: ...

    def state(self) -> dict: ...


def get_deployer(target: str, **options: Any) -> Deployer:
    """The deployer for `target` ("local" or "sagemaker").

    local:     endpoint_url, admin_token, timeout, retries (defaults: $TUTOR_ENDPOINT_URL and the
               endpoint's admin token).
    sagemaker: layout ("multimodel" default, or "inference-components"), region, bucket, prefix,
               role_arn, image_uri, instance_type, endpoint_name, endpoint_url (moto / a VPC
               endpoint), wait_timeout (defaults: the AWS_* / TUTOR_SAGEMAKER_* environment).
    Unknown options are an error (a typo must not silently deploy somewhere else).
    """
    if target == "local":
        from serving.deploy.local import LocalDeployer

        return LocalDeployer(**options)
    if target == "sagemaker":
        layout = options.pop("layout", None) or os.environ.get("TUTOR_SAGEMAKER_LAYOUT") or "multimodel"
        if layout == "multimodel":
            from serving.deploy.sagemaker import SageMakerDeployer

            return SageMakerDeployer(**options)
        if layout == "inference-components":
            from serving.deploy.sagemaker_ic import InferenceComponentsDeployer

            return InferenceComponentsDeployer(**options)
        raise DeployError(f"unknown SageMaker layout {layout!r}; expected one of {', '.join(SAGEMAKER_LAYOUTS)}")
    raise DeployError(f"unknown deploy target {target!r}; expected one of {', '.join(TARGETS)}")


def options_from_settings(settings: Any) -> dict[str, Any]:
    """The `get_deployer` options for `settings.TUTOR_DEPLOY_TARGET`, read from a settings object.

    Takes any object with the attributes (Django's `settings` in the web app) so this package
    stays free of Django imports. Usage: `get_deployer(s.TUTOR_DEPLOY_TARGET, **options_from_settings(s))`.
    """
    target = getattr(settings, "TUTOR_DEPLOY_TARGET", "local")
    if target == "local":
        return {"endpoint_url": getattr(settings, "TUTOR_ENDPOINT_URL", None),
                "admin_token": getattr(settings, "TUTOR_ENDPOINT_ADMIN_TOKEN", None)}
    names = {
        "layout": "TUTOR_SAGEMAKER_LAYOUT", "region": "AWS_REGION", "bucket": "TUTOR_S3_BUCKET",
        "prefix": "TUTOR_S3_PREFIX", "role_arn": "TUTOR_SAGEMAKER_ROLE_ARN",
        "image_uri": "TUTOR_SAGEMAKER_IMAGE_URI", "instance_type": "TUTOR_SAGEMAKER_INSTANCE_TYPE",
        "endpoint_name": "TUTOR_SAGEMAKER_ENDPOINT_NAME", "endpoint_url": "AWS_ENDPOINT_URL",
    }
    return {opt: getattr(settings, name) for opt, name in names.items() if getattr(settings, name, None)}


__all__ = ["TARGETS", "DeployError", "Deployer", "get_deployer", "options_from_settings"]

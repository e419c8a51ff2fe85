"""The local deployer: drives a running `python -m serving` endpoint through its admin API.

publish = the endpoint loads the version from its directory (we verify it first, and the
endpoint verifies it again); set_traffic = the subject's routing; unpublish = unload (refused
while the version is promoted or the canary); state = what the endpoint serves now.

Every call is idempotent: each step first reads the endpoint's state and does nothing when it
already matches, so the pipeline can retry a deploy step until `state()` agrees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from serving.deploy import DeployError

T = TypeVar("T")

RETRYABLE_STATUS = {502, 503, 504}


def _subjects() -> tuple[str, ...]:
    from rlhf import SUBJECTS

    return tuple(SUBJECTS)


def check_artifact(subject: str, version: int, artifact_path: str | os.PathLike[str], sha256: str) -> str:
    """Validate the arguments and verify the artefact on disk against `sha256`; returns the path.

    Shared by every deployer so a tampered artefact is refused the same way everywhere, before
    anything is changed on the target.
    """
    from rlhf.manifest import ArtifactError, artifact_sha256

    if subject not in _subjects():
        raise DeployError(f"unknown subject {subject!r}; expected one of {', '.join(_subjects())}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DeployError(f"version must be a positive integer, got {version!r}")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise DeployError(f"sha256 must be the 64-character hex digest recorded in the registry, got {sha256!r}")
    path = Path(artifact_path)
    try:
        actual = artifact_sha256(path)
    except ArtifactError as exc:
        raise DeployError(f"refused {subject} v{version}: the artefact failed verification: {exc}",
                          subject=subject, version=version) from None
    if actual != sha256.lower():
        raise DeployError(f"refused {subject} v{version}: {path} hashes to {actual[:12]}…, the registry "
                          f"recorded {sha256[:12]}… (the artefact changed after it was registered)",
                          subject=subject, version=version)
    return str(path.resolve())


def check_split(promoted: int, candidate: int | None, candidate_share: float) -> float:
    """Validate a traffic split; returns the share to store (0 when there is no candidate)."""
    for name, v in (("promoted", promoted), ("candidate", candidate)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise DeployError(f"{name} must be a positive integer version, got {v!r}")
    if promoted is None:
        raise DeployError("promoted must be a version")
    if not isinstance(candidate_share, int | float) or isinstance(candidate_share, bool) \
            or not 0.0 <= candidate_share <= 1.0:
        raise DeployError(f"candidate_share must be between 0 and 1, got {candidate_share!r}")
    if candidate is None:
        return 0.0
    if candidate == promoted:
        raise DeployError(f"candidate and promoted are the same version (v{promoted})")
    return float(candidate_share)


class LocalDeployer:
    """Deploys to the endpoint at `endpoint_url` with its admin token."""

    target = "local"

    def __init__(self, endpoint_url: str | None = None, admin_token: str | None = None, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 0.25):
        from serving.client import EndpointClient

        self.endpoint_url = (endpoint_url or os.environ.get("TUTOR_ENDPOINT_URL") or "http://127.0.0.1:8080").rstrip("/")
        if admin_token is None:
            from serving.config import admin_token as read_token

            admin_token = read_token()
        self.retries = max(1, retries)
        self.backoff = backoff
        # retries=0: this class retries itself (every step re-reads the state first, so it is safe)
        self.client = EndpointClient(self.endpoint_url, admin_token=admin_token, timeout=timeout, retries=0)

    # ---- transport ------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, retrying with exponential backoff while the endpoint is unreachable."""
        from serving.client import EndpointError

        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except httpx.TransportError as exc:
                last = f"cannot reach the endpoint at {self.endpoint_url}: {exc}"
            except EndpointError as exc:
                status = getattr(exc, "status", None)
                if status not in (0, None) and status not in RETRYABLE_STATUS:
                    raise
                last = (exc.message if not status else
                        f"the endpoint at {self.endpoint_url} is not available ({status}): {exc.message}")
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise DeployError(f"{what}: {last} (after {self.retries} attempts)", endpoint=self.endpoint_url)

    def _listing(self) -> dict[str, Any]:
        return self._call("reading the endpoint's adapters", self.client.list_adapters)

    @staticmethod
    def _loaded(listing: dict[str, Any], subject: str, version: int) -> dict[str, Any] | None:
        for a in listing.get("adapters", []):
            if a.get("subject") == subject and a.get("version") == version:
                return a
        return None

    # ---- Deployer -------------------------------------------------------------------------------
    def publish(self, subject: str, version: int, artifact_path: str, sha256: str, base_path: str = "") -> dict:
        """Have the endpoint load the version (verified here first, then by the endpoint). `base_path`: an
        optimised variant's own base, which the endpoint serves from a process of its own."""
        from serving.client import EndpointError

        path = check_artifact(subject, version, artifact_path, sha256)
        if base_path and Path(base_path).resolve() != Path(path).resolve():
            from rlhf.manifest import ArtifactError, verify

            try:  # refused here, as on SageMaker, before the endpoint starts a process for it
                verify(base_path)
            except ArtifactError as exc:
                raise DeployError(f"refused {subject} v{version}: its base failed verification: {exc}",
                                  subject=subject, version=version) from None
        base = {"target": self.target, "endpoint": self.endpoint_url, "subject": subject, "version": version,
                "sha256": sha256, "path": path} | ({"base": base_path} if base_path else {})
        current = self._loaded(self._listing(), subject, version)
        if current is not None:
            if current.get("sha256") and current["sha256"] != sha256:
                raise DeployError(f"{subject} v{version} is already loaded from a different artefact "
                                  f"({current['sha256'][:12]}… ≠ {sha256[:12]}…); unpublish it first",
                                  subject=subject, version=version)
            return {**base, "action": "unchanged", "message": f"{subject} v{version} was already loaded"}
        try:
            self._call(f"loading {subject} v{version}", self.client.load_adapter, subject, version, path,
                       base_path or None)
        except EndpointError as exc:
            if getattr(exc, "status", None) == 409:  # loaded by a concurrent or earlier, unanswered attempt
                return {**base, "action": "unchanged", "message": f"{subject} v{version} was already loaded"}
            raise DeployError(f"the endpoint refused {subject} v{version}: {exc}", status=getattr(exc, "status", None),
                              subject=subject, version=version) from None
        return {**base, "action": "loaded", "message": f"the endpoint loaded {subject} v{version}"}

    def set_traffic(self, subject: str, promoted: int, candidate: int | None, candidate_share: float) -> dict:
        """Set the subject's split: `promoted` gets 1 - share, `candidate` (if any) gets share."""
        from serving.client import EndpointError

        share = check_split(promoted, candidate, candidate_share)
        if subject not in _subjects():
            raise DeployError(f"unknown subject {subject!r}; expected one of {', '.join(_subjects())}")
        listing = self._listing()
        for v in (promoted, candidate):
            if v is not None and self._loaded(listing, subject, v) is None:
                raise DeployError(f"{subject} v{v} is not loaded on the endpoint; publish it first",
                                  subject=subject, version=v)
        want = {"promoted": promoted, "candidate": candidate, "candidate_share": share}
        before = listing.get("routing", {}).get(subject)
        base = {"target": self.target, "endpoint": self.endpoint_url, "subject": subject, "routing": want,
                "previous": before}
        if before is not None and _same_split(before, want):
            return {**base, "action": "unchanged", "message": f"{subject} already routes {_describe(want)}"}
        try:
            self._call(f"routing {subject}", self.client.set_routing, subject, promoted, candidate, share)
        except EndpointError as exc:
            raise DeployError(f"the endpoint refused the split for {subject}: {exc}",
                              status=getattr(exc, "status", None), subject=subject) from None
        return {**base, "action": "routed", "message": f"{subject} now routes {_describe(want)}"}

    def unpublish(self, subject: str, version: int) -> dict:
        """Unload the version; refused while it is promoted or the canary."""
        from serving.client import EndpointError

        listing = self._listing()
        base = {"target": self.target, "endpoint": self.endpoint_url, "subject": subject, "version": version}
        route = listing.get("routing", {}).get(subject) or {}
        if version in (route.get("promoted"), route.get("candidate")):
            raise DeployError(f"{subject} v{version} is in use ({_describe(route)}); promote or roll back to "
                              "another version before unpublishing it", subject=subject, version=version)
        if self._loaded(listing, subject, version) is None:
            return {**base, "action": "unchanged", "message": f"{subject} v{version} was not loaded"}
        try:
            result = self._call(f"unloading {subject} v{version}", self.client.unload_adapter, subject, version)
        except EndpointError as exc:
            if getattr(exc, "status", None) == 404:
                return {**base, "action": "unchanged", "message": f"{subject} v{version} was not loaded"}
            raise DeployError(f"the endpoint refused to unload {subject} v{version}: {exc}",
                              status=getattr(exc, "status", None), subject=subject, version=version) from None
        draining = bool(result.get("draining")) if isinstance(result, dict) else False
        return {**base, "action": "unloaded", "draining": draining,
                "message": f"unloaded {subject} v{version}" + (" (requests in flight finish on it)" if draining else "")}

    def state(self) -> dict:
        """{subject: {"loaded": [versions], "promoted", "candidate", "share"}} for every subject."""
        listing = self._listing()
        out: dict[str, dict[str, Any]] = {s: {"loaded": [], "promoted": None, "candidate": None, "share": 0.0}
                                          for s in _subjects()}
        for a in listing.get("adapters", []):
            if a.get("version") is not None:
                out.setdefault(a["subject"], {"loaded": [], "promoted": None, "candidate": None, "share": 0.0})
                out[a["subject"]]["loaded"].append(a["version"])
        for subject, route in listing.get("routing", {}).items():
            entry = out.setdefault(subject, {"loaded": [], "promoted": None, "candidate": None, "share": 0.0})
            entry.update(promoted=route.get("promoted"), candidate=route.get("candidate"),
                         share=float(route.get("candidate_share") or 0.0))
        for entry in out.values():
            entry["loaded"].sort()
        return out


def _same_split(current: dict[str, Any], want: dict[str, Any]) -> bool:
    return (current.get("promoted") == want["promoted"] and current.get("candidate") == want["candidate"]
            and abs(float(current.get("candidate_share") or 0.0) - want["candidate_share"]) < 1e-9)


def _describe(route: dict[str, Any]) -> str:
    if route.get("candidate") is None:
        return f"100% to v{route.get('promoted')}"
    share = float(route.get("candidate_share") or route.get("share") or 0.0)
    return f"{100 - share * 100:g}% to v{route.get('promoted')}, {share * 100:g}% to v{route.get('candidate')}"

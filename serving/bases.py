"""Versions on another base model: one child endpoint process per base, behind this endpoint.

Why: an optimised variant (an int8 or pruned copy of the base with the subject's adapter on top, or a
distilled student model) cannot share the batch of the base this process serves: its weights differ.
Rather than holding several bases and batches in one process, each extra base gets its own endpoint
process (the same `python -m serving`, on a loopback port, with no startup adapters), and this endpoint
routes the subject's requests for that version to it. Routing, canary shares, hot swap and rollback stay
in one registry, so the deployer and the chat client see one endpoint. Memory: one more process per extra
base (the interpreter, torch and that base's weights: ~430 MB RSS on the demo model, almost all of it the
runtime; measured in docs/optimise.md), freed when the base's last version is unloaded (training's
promote / retire / rollback unload retired variants: `training.services.release_retired_variants`).

The child's admin API takes this endpoint's admin token. A child that dies is started again on the next
request that finds it down (that request gets a 503 with Retry-After), and its versions are loaded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.config import ServerConfig, var_dir

log = logging.getLogger("serving.bases")

STARTUP_TIMEOUT_S = float(os.environ.get("TUTOR_ENDPOINT_BASE_STARTUP_S", "180"))


class BaseError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class BaseWorker:
    """One child endpoint process and the (subject, version) pairs it serves (bare: no adapter)."""

    base: str
    sha256: str
    port: int = 0
    proc: subprocess.Popen | None = None
    versions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # -> {"path", "bare"}
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> dict[str, Any]:
        return {"base": self.base, "sha256": self.sha256, "url": self.url, "pid": self.proc.pid if self.proc else None,
                "alive": self.alive(), "restarts": self.restarts,
                "versions": [{"subject": s, "version": v, "bare": info["bare"]}
                             for (s, v), info in sorted(self.versions.items())]}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this endpoint dies, even by SIGKILL (Linux prctl)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BasePool:
    """The child endpoints of one endpoint process, keyed by base fingerprint. Methods block: call them
    from a thread (`asyncio.to_thread`), never on the event loop."""

    def __init__(self, config: ServerConfig, admin_token: str):
        self.config = config
        self.admin_token = admin_token
        self.workers: dict[str, BaseWorker] = {}
        self.lock = threading.RLock()
        self.restarting: set[str] = set()  # upstream URLs whose child is starting again (not ready yet)

    # ---- child processes ------------------------------------------------------------------------
    def _command(self, worker: BaseWorker) -> list[str]:
        cfg = self.config
        cmd = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(worker.port),
               "--base-model", worker.base, "--no-adapters", "--max-batch-size", str(cfg.max_batch_size),
               "--max-queue", str(cfg.max_queue), "--max-new-tokens-limit", str(cfg.max_new_tokens_limit),
               "--max-prompt-tokens", str(cfg.max_prompt_tokens), "--device", cfg.device or "auto"]
        if cfg.threads:
            cmd += ["--threads", str(cfg.threads)]
        if cfg.kv_budget_mb:
            cmd += ["--kv-budget-mb", str(cfg.kv_budget_mb)]
        return cmd

    def _start(self, worker: BaseWorker) -> None:
        if not worker.port:  # a restart keeps the port: the registry's routes point at it
            worker.port = _free_port()
        logs = var_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TUTOR_ENDPOINT_ADMIN_TOKEN=self.admin_token)
        env.pop("TUTOR_MULTI_MODEL", None)  # the child is reached only through this process
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        with open(logs / f"endpoint-base-{worker.sha256[:12]}.log", "ab") as out:
            worker.proc = subprocess.Popen(self._command(worker), stdout=out, stderr=subprocess.STDOUT, env=env,
                                           cwd=root, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=5.0) as client:
            while True:  # wait for the child's readiness (or its death): /ping answers 200 once loaded
                if worker.proc.poll() is not None:
                    raise BaseError(502, f"the endpoint process for base {worker.base} exited with "
                                         f"{worker.proc.returncode} while loading (see {out.name})")
                try:
                    r = client.get(worker.url + "/ping")
                    if r.status_code == 200:
                        break
                    if r.status_code == 503 and r.json().get("status") == "failed":
                        self._stop(worker)
                        raise BaseError(422, f"base {worker.base} refused: {r.json().get('error')}")
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self._stop(worker)
                    raise BaseError(504, f"the endpoint process for base {worker.base} did not get ready in "
                                         f"{STARTUP_TIMEOUT_S:.0f} s")
                time.sleep(0.1)
        for (subject, version), info in worker.versions.items():  # after a restart: the same versions again
            if not info["bare"]:
                self._load_on(worker, subject, version, info["path"])
        log.info("endpoint process for base %s ready on %s (pid %d)", worker.base, worker.url, worker.proc.pid)

    def _stop(self, worker: BaseWorker) -> None:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.terminate()
            try:
                worker.proc.wait(10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def _load_on(self, worker: BaseWorker, subject: str, version: int, path: str) -> None:
        r = httpx.post(worker.url + "/admin/adapters", json={"subject": subject, "version": version, "path": path},
                       headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=120.0)
        if r.status_code == 409:
            return
        if r.status_code >= 400:
            raise BaseError(r.status_code, f"on base {worker.base}: {r.json().get('error', r.text)}")

    # ---- versions ---------------------------------------------------------------------------------
    def attach(self, subject: str, version: int, path: Path, base: Path) -> dict[str, Any]:
        """Serve (subject, version) from the child endpoint of `base` (started if needed).

        `path` is the adapter (checked against `base` by the child, as any adapter is), or `base` itself
        for a distilled student that answers the subject with no adapter. Returns what the registry keeps.
        """
        from rlhf.manifest import ArtifactError, artifact_sha256, verify
        from rlhf.models import base_fingerprint

        if not base.is_dir():
            raise BaseError(400, f"no base model directory at {base}")
        bare = path.resolve() == base.resolve()
        try:
            verify(base) if (base / "manifest.json").is_file() else None
            if not bare:
                manifest = verify(path)
                if manifest.get("kind") != "adapter":
                    raise BaseError(422, f"{path} is a {manifest.get('kind')!r} artefact, not an adapter")
        except ArtifactError as exc:
            raise BaseError(422, f"refused: verification failed: {exc}") from None
        sha = base_fingerprint(base)
        with self.lock:
            worker = self.workers.get(sha)
            if worker is None:
                worker = BaseWorker(base=str(base.resolve()), sha256=sha)
                self._start(worker)
                self.workers[sha] = worker
            elif not worker.alive():
                self._restart(worker)
            if not bare:
                self._load_on(worker, subject, version, str(path))
            worker.versions[(subject, version)] = {"path": str(path), "bare": bare}
        return {"upstream": worker.url, "base": worker.base, "base_sha256": sha, "bare": bare,
                "sha256": artifact_sha256(path, check=False) if not bare else sha,
                "method": "base" if bare else "adapter"}

    def detach(self, subject: str, version: int) -> None:
        """Stop serving (subject, version); the child stops with its last version."""
        with self.lock:
            for sha, worker in list(self.workers.items()):
                info = worker.versions.pop((subject, version), None)
                if info is None:
                    continue
                if not worker.versions:
                    self._stop(worker)
                    del self.workers[sha]
                elif not info["bare"] and worker.alive():
                    httpx.delete(f"{worker.url}/admin/adapters/{subject}/{version}",
                                 headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30.0)
                return

    def _restart(self, worker: BaseWorker) -> None:
        log.warning("endpoint process for base %s is down (exit %s); starting it again", worker.base,
                    worker.proc.returncode if worker.proc else None)
        worker.restarts += 1
        self.restarting.add(worker.url)  # until its versions are loaded again, requests are told to retry
        try:
            self._start(worker)
        finally:
            self.restarting.discard(worker.url)

    def revive(self, upstream: str) -> None:
        """Called when a proxied request found `upstream` not answering: restart its child if it died."""
        with self.lock:
            for worker in self.workers.values():
                if worker.url == upstream and not worker.alive():
                    try:
                        self._restart(worker)
                    except BaseError as exc:
                        log.error("could not restart the endpoint process for base %s: %s", worker.base, exc)
                    return

    def stop_all(self) -> None:
        with self.lock:
            for worker in self.workers.values():
                self._stop(worker)
            self.workers.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self.lock:
            return [w.describe() for w in self.workers.values()]


__all__ = ["BaseError", "BasePool", "BaseWorker"]

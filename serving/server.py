"""The endpoint process: loads the base model and adapters, owns the scheduler, serves HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from serving.app import BadRequest, create_app
from serving.bases import BaseError, BasePool
from serving.config import ServerConfig, admin_token
from serving.engine import AdapterFormatError, BloomRunner
from serving.metrics import Metrics
from serving.registry import AdapterVersion, Registry, RegistryError, latest_versions
from serving.scheduler import Scheduler

log = logging.getLogger("serving")


class EndpointState:
    """Everything one endpoint process holds; the HTTP handlers reach it via `app.state.endpoint`."""

    def __init__(self, config: ServerConfig):
        from rlhf import SUBJECTS

        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(subjects=tuple(SUBJECTS))
        self.admin_token = admin_token()
        self.ready = False
        self.error: str | None = None
        self.base_model_id = config.base_model
        self.base_sha256: str | None = None
        self.tokenizer: Any = None
        self.runner: BloomRunner | None = None
        self.scheduler: Scheduler | None = None
        self.build_prompt: Any = None
        self.bases = BasePool(config, self.admin_token)  # child endpoints of other bases (optimised variants)
        self.upstream_client: Any = None  # httpx.AsyncClient to those children (made on first use)

    # ---- startup --------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the base model and the latest verified adapter of each subject (runs in a thread)."""
        try:
            from rlhf.chat import build_prompt
            from rlhf.models import base_fingerprint, base_model_id, load_base, resolve_base_path

            self.build_prompt = build_prompt
            path = resolve_base_path(self.config.base_model)  # builds the demo model on first use
            model, tokenizer = load_base(path, device=self.config.device)
            self.tokenizer = tokenizer
            self.base_model_id = base_model_id(path)
            self.base_sha256 = base_fingerprint(path)
            _set_threads(self.config.threads, model)
            self.runner = BloomRunner(model)
            self.scheduler = Scheduler(self.runner, self.registry, self.metrics, tokenizer.eos_token_id,
                                       max_batch_size=self.config.max_batch_size, max_queue=self.config.max_queue,
                                       max_prefill_tokens=self.config.max_prefill_tokens,
                                       kv_budget_bytes=_mib(self.config.kv_budget_mb))
            log.info("KV cache: %d bytes per token per sequence; budget %s", self.runner.kv_bytes_per_token(),
                     f"{self.config.kv_budget_mb} MiB" if self.config.kv_budget_mb else "unlimited")
            if self.config.adapters_dir is not None:
                restored = self._restore_state()
                # subjects the state does not cover (first start, or an artefact that vanished) start on
                # their newest verified version
                missing = {s for s in self.registry.subjects} - {s for s, _ in self.registry.versions}
                self._load_startup_adapters(Path(self.config.adapters_dir), only=missing if restored else None)
            self.scheduler.start()
            self.ready = True
            log.info("endpoint ready: base %s, %d adapter(s)", self.base_model_id, len(self.registry.versions))
        except Exception as exc:
            log.exception("endpoint failed to load")
            self.error = f"failed to load the model: {exc}"

    # ---- what the admin API last set survives a restart ----------------------------------------
    @property
    def state_file(self) -> Path | None:
        """Where the loaded versions and the routing are remembered (beside the adapters).

        Why: after a restart the endpoint must serve what the registry (the database) last told it,
        not whatever adapter is newest on disk (a retired candidate, say).
        """
        if self.config.state_file is not None:
            return Path(self.config.state_file)
        if self.config.adapters_dir is None:
            return None
        return Path(self.config.adapters_dir) / ".endpoint_state.json"

    def save_state(self) -> None:
        path = self.state_file
        if path is None:
            return
        desc = self.registry.describe()
        state = {
            "adapters": [{"subject": a["subject"], "version": a["version"], "path": a.get("path")}
                         | ({"base": a["base"]} if a.get("base") else {})
                         for a in desc["adapters"] if a.get("version") is not None and a.get("path")],
            "routing": desc["routing"],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def _restore_state(self) -> bool:
        """Load exactly the remembered versions and routing; False when there is nothing to restore."""
        path = self.state_file
        if path is None or not path.is_file():
            return False
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable endpoint state %s: %s", path, exc)
            return False
        for item in state.get("adapters", []):
            try:
                if item.get("base"):  # a version on another base: its child endpoint again
                    self.registry.add(self._remote(item["subject"], int(item["version"]), Path(item["path"]),
                                                   Path(item["base"])))
                    continue
                av = self._prepare(item["subject"], int(item["version"]), Path(item["path"]))
            except (BadRequest, RegistryError, KeyError, TypeError, ValueError) as exc:
                log.warning("not restoring adapter %s: %s", item, getattr(exc, "message", exc))
                continue
            self.runner.install(av.slot, av._loaded)
            del av._loaded
            self.registry.add(av)
        for subject, route in (state.get("routing") or {}).items():
            try:
                self.registry.set_routing(subject, route.get("promoted"), route.get("candidate"),
                                          route.get("candidate_share", 0.0))
            except RegistryError as exc:
                log.warning("not restoring routing of %s: %s", subject, exc.message)
        self.metrics.adapters_loaded.set(len(self.registry.versions))
        log.info("restored endpoint state from %s", path)
        return True

    def _load_startup_adapters(self, root: Path, only: set[str] | None = None) -> None:
        for subject, versions in latest_versions(root).items():
            if only is not None and subject not in only:
                continue
            for version, path in versions:  # newest first; a tampered newest falls back to the one before
                try:
                    av = self._prepare(subject, version, path)
                except (BadRequest, RegistryError) as exc:
                    log.warning("skipping adapter %s: %s", path, getattr(exc, "message", exc))
                    continue
                self.runner.install(av.slot, av._loaded)
                del av._loaded
                self.registry.add(av)
                self.metrics.adapters_loaded.set(len(self.registry.versions))
                break

    def _prepare(self, subject: str, version: int, path: Path) -> AdapterVersion:
        """Verify the artefact and read its tensors; reserve a slot. Raises BadRequest/RegistryError."""
        from rlhf.manifest import ArtifactError, artifact_sha256, verify

        if not path.is_dir():
            raise BadRequest(400, f"no adapter directory at {path}")
        try:
            manifest = verify(path)
        except ArtifactError as exc:
            raise BadRequest(422, f"adapter refused: verification failed: {exc}") from None
        if manifest.get("kind") != "adapter":
            raise BadRequest(422, f"adapter refused: {path} is a {manifest.get('kind')!r} artefact, not an adapter")
        extra = {**(manifest.get("config") or {}), **(manifest.get("extra") or {}), **manifest}
        if extra.get("subject") not in (None, subject):
            raise BadRequest(422, f"adapter refused: its manifest says subject {extra.get('subject')!r}, not {subject!r}")
        if extra.get("version") not in (None, version):
            raise BadRequest(422, f"adapter refused: its manifest says version {extra.get('version')!r}, not {version}")
        base_sha = manifest.get("base_model_sha256")
        if base_sha and self.base_sha256 and base_sha != self.base_sha256:
            raise BadRequest(422, "adapter refused: it was trained on a different base model "
                                  f"({base_sha[:12]} vs the served {self.base_sha256[:12]}); for an optimised "
                                  "variant pass its base directory as 'base'")
        try:
            loaded = self.runner.read_adapter(path)
        except (AdapterFormatError, OSError) as exc:
            raise BadRequest(422, f"adapter refused: {exc}") from None
        slot = self.registry.reserve_slot(subject, version)
        av = AdapterVersion(subject=subject, version=version, slot=slot, method=loaded.method, path=str(path),
                            sha256=artifact_sha256(path, check=False))
        av._loaded = loaded  # type: ignore[attr-defined]
        return av

    def _other_base(self, base: Path | None) -> bool:
        from rlhf.manifest import ArtifactError
        from rlhf.models import base_fingerprint

        if base is None:
            return False
        if not base.is_dir():
            raise BadRequest(400, f"no base model directory at {base}")
        try:
            return base_fingerprint(base) != self.base_sha256
        except ArtifactError as exc:
            raise BadRequest(422, f"base refused: verification failed: {exc}") from None

    def _remote(self, subject: str, version: int, path: Path, base: Path) -> AdapterVersion:
        """A version served by the child endpoint of `base` (blocking: starts the child if needed)."""
        if (subject, version) in self.registry.versions:
            raise RegistryError(409, f"adapter {subject} v{version} is already loaded")
        try:
            info = self.bases.attach(subject, version, path, base)
        except BaseError as exc:
            raise BadRequest(exc.status, exc.message) from None
        return AdapterVersion(subject=subject, version=version, slot=0, method=info["method"], path=str(path),
                              sha256=info["sha256"], upstream=info["upstream"], base=info["base"], bare=info["bare"])

    # ---- admin operations (event loop) ----------------------------------------------------------
    async def load_adapter(self, subject: str, version: int, path: Path, base: Path | None = None) -> AdapterVersion:
        if await asyncio.to_thread(self._other_base, base):
            av = await asyncio.to_thread(self._remote, subject, version, path, base)
            try:
                self.registry.add(av)
            except RegistryError:
                await asyncio.to_thread(self.bases.detach, subject, version)
                raise
            self.metrics.adapters_loaded.set(len(self.registry.versions))
            self.save_state()
            log.info("serving %s v%s from the endpoint process of base %s (%s)", subject, version, av.base,
                     av.upstream)
            return av
        av = await asyncio.to_thread(self._prepare, subject, version, path)
        loaded = av._loaded  # type: ignore[attr-defined]
        del av._loaded  # type: ignore[attr-defined]
        try:
            await asyncio.wrap_future(self.scheduler.run_command(lambda: self.runner.install(av.slot, loaded)))
            self.registry.add(av)
        except BaseException:
            self.registry.return_slot(av.slot)
            raise
        self.metrics.adapters_loaded.set(len(self.registry.versions))
        self.save_state()
        log.info("loaded adapter %s v%s (%s) into slot %d", subject, version, av.method, av.slot)
        return av

    async def unload_adapter(self, subject: str, version: int) -> bool:
        """Returns True when requests are still finishing on it (the slot is freed after them)."""
        av = self.registry.unload(subject, version)
        self.metrics.adapters_loaded.set(len(self.registry.versions))
        self.save_state()
        if av is None:
            return True
        if av.upstream:
            await asyncio.to_thread(self.bases.detach, subject, version)
            return False

        def uninstall() -> None:
            self.runner.uninstall(av.slot)
            self.registry.free_slot_of(av)

        await asyncio.wrap_future(self.scheduler.run_command(uninstall))
        return False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        loader.start()
        try:
            yield
        finally:
            if self.scheduler is not None:
                self.scheduler.stop()
            await asyncio.to_thread(self.bases.stop_all)


def _mib(mb: float | None) -> int | None:
    return int(mb * 2**20) if mb else None


def _set_threads(threads: int | None, model: Any) -> None:
    """Intra-op threads. Default: 1 for small models (< 50M parameters) on CPU.

    Why: a decode step of the demo model is a few hundred microseconds of maths; splitting it
    across OpenMP threads costs more in synchronisation than it gains, and on a shared machine a
    busy sibling core makes spinning threads collapse (measured: 10-40x slower steps).
    """
    if threads:
        torch.set_num_threads(threads)
    elif next(model.parameters()).device.type == "cpu" and sum(p.numel() for p in model.parameters()) < 50e6:
        torch.set_num_threads(1)


def build_app(config: ServerConfig):
    from serving.multimodel import mount_multimodel

    return mount_multimodel(create_app(EndpointState(config)))  # SageMaker multi-model routes if TUTOR_MULTI_MODEL

"""SageMaker's multi-model container contract, on top of the one base model in memory.

On a multi-model endpoint SageMaker downloads the `model.tar.gz` an invocation names
(`TargetModel`), unpacks it under `/opt/ml/models/<name>/model` and tells the container:

    POST   /models                {"model_name", "url"}   load (409 if loaded, 507 if out of memory)
    GET    /models                                        {"models": [{"modelName", "modelUrl"}]}
    GET    /models/{name}                                 one of them (404 if not loaded)
    DELETE /models/{name}                                 unload (SageMaker evicts idle models)
    POST   /models/{name}/invoke  the /invocations body   run it on that model

Here a "model" is an adapter version: loading verifies the unpacked artefact (every file
against its manifest, and the manifest's SHA-256 against the one in the archive's name, which
the deployer derived from the registry) and installs it in a slot next to the other adapters;
requests for different models still share one batch. `model_name` is opaque to us; the
archive name comes in the `X-Amzn-SageMaker-Target-Model` header (the original `TargetModel`),
else from the model name or URL.

`POST /invocations` with that header is answered by the named model too.

Mounted only when `TUTOR_MULTI_MODEL` is true (the deployer sets it on the SageMaker model),
because these routes take no admin token: inside SageMaker only the platform reaches the
container. Loads are confined to `TUTOR_MULTI_MODEL_ROOT` (default `/opt/ml/models`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.deploy.packaging import PackagingError, extract_archive, parse_archive_name, variant_parts

TARGET_HEADER = "x-amzn-sagemaker-target-model"
DEFAULT_ROOT = "/opt/ml/models"


@dataclass
class LoadedModel:
    model_name: str
    url: str
    path: Path
    subject: str
    version: int
    sha256: str
    target_model: str | None

    def describe(self) -> dict[str, Any]:
        return {"modelName": self.model_name, "modelUrl": self.url, "targetModel": self.target_model,
                "adapter": {"subject": self.subject, "version": self.version}, "sha256": self.sha256}


class MultiModel:
    """The loaded-model table of one endpoint process (keyed by SageMaker's `model_name`)."""

    def __init__(self, state: Any, root: Path):
        self.state = state
        self.root = root
        self.models: dict[str, LoadedModel] = {}
        self.lock = asyncio.Lock()

    def find(self, name: str) -> LoadedModel | None:
        if name in self.models:
            return self.models[name]
        for m in self.models.values():
            if m.target_model == name:
                return m
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mm(request: Request) -> MultiModel:
    return request.app.state.multimodel


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _identity(names: list[str | None], path: Path) -> tuple[str, int, str | None]:
    """(subject, version, expected sha256) from the first archive-style name, else the manifest."""
    from rlhf.manifest import ArtifactError, read_manifest

    for name in names:
        if name and (parsed := parse_archive_name(name)) is not None:
            return parsed
    try:
        manifest = read_manifest(path)
    except ArtifactError as exc:
        raise ValueError(str(exc)) from None
    merged = {**manifest.get("config", {}), **manifest}
    subject, version = merged.get("subject"), merged.get("version")
    if not isinstance(subject, str) or not isinstance(version, int):
        raise ValueError("cannot tell which subject/version this is: name the archive <subject>-v<N>-<sha256>.tar.gz")
    return subject, version, None


async def load_model(request: Request) -> Response:
    from rlhf.manifest import ArtifactError, artifact_sha256, verify
    from serving.app import BadRequest
    from serving.registry import RegistryError

    mm = _mm(request)
    if not mm.state.ready:
        return _error(503, "the endpoint is still loading the base model")
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"malformed JSON: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("model_name"), str) or not isinstance(data.get("url"), str) \
            or not data["model_name"] or not data["url"]:
        return _error(400, "expected {\"model_name\": str, \"url\": str}")
    name, url = data["model_name"], data["url"]
    target = request.headers.get(TARGET_HEADER)
    path = Path(url)
    if not _inside(path, mm.root):
        return _error(403, f"models are loaded from under {mm.root} only, not {url}")
    async with mm.lock:
        if name in mm.models:
            return _error(409, f"model {name} is already loaded")
        try:
            if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):  # a packed archive: unpack it beside
                unpacked = mm.root / ".unpacked" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
                if not unpacked.is_dir():
                    await asyncio.to_thread(extract_archive, path, unpacked)
                path = unpacked
            if not path.is_dir():
                return _error(404, f"no model directory at {url}")
            path, own_base = variant_parts(path)  # an optimised variant carries its own base
            subject, version, expected = _identity([target, name, url, path.parent.name], path)
            actual = await asyncio.to_thread(artifact_sha256, path)  # every file against the manifest
            if own_base is not None and own_base != path:  # the variant's base too, before any process starts
                await asyncio.to_thread(verify, own_base)
        except (ValueError, PackagingError) as exc:
            return _error(400, str(exc))
        except ArtifactError as exc:
            return _error(422, f"model {name} refused: verification failed: {exc}")
        if expected is not None and actual != expected:
            return _error(422, f"model {name} refused: its SHA-256 is {actual[:12]}…, the archive name says "
                               f"{expected[:12]}… (tampered or mislabelled)")
        try:
            await mm.state.load_adapter(subject, version, path, own_base)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        except RegistryError as exc:
            existing = mm.state.registry.versions.get((subject, version))
            if exc.status != 409 or existing is None or existing.sha256 != actual:
                return _error(exc.status, exc.message)
            # already loaded under another name (startup or the admin API) with the same bytes: share it
        except MemoryError:
            return _error(507, "not enough memory to load another adapter")
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                return _error(507, f"not enough memory to load another adapter: {exc}")
            raise
        model = LoadedModel(name, url, path, subject, version, actual, target)
        mm.models[name] = model
    return JSONResponse(model.describe(), status_code=200)


async def list_models(request: Request) -> Response:
    mm = _mm(request)
    names = sorted(mm.models)
    try:
        start = int(request.query_params.get("next_page_token") or 0)
        size = int(request.query_params.get("page_size") or len(names) or 1)
    except ValueError:
        return _error(400, "next_page_token and page_size must be integers")
    page = names[start:start + max(size, 1)]
    body: dict[str, Any] = {"models": [{"modelName": n, "modelUrl": mm.models[n].url} for n in page]}
    if start + len(page) < len(names):
        body["nextPageToken"] = str(start + len(page))
    return JSONResponse(body)


async def get_model(request: Request) -> Response:
    model = _mm(request).find(request.path_params["name"])
    if model is None:
        return _error(404, f"model {request.path_params['name']} is not loaded")
    return JSONResponse(model.describe())


async def unload_model(request: Request) -> Response:
    from serving.registry import RegistryError

    mm = _mm(request)
    async with mm.lock:
        model = mm.find(request.path_params["name"])
        if model is None:
            return _error(404, f"model {request.path_params['name']} is not loaded")
        del mm.models[model.model_name]
        if any(m.subject == model.subject and m.version == model.version for m in mm.models.values()):
            return JSONResponse({"unloaded": model.model_name, "shared": True})  # another name still uses it
        registry = mm.state.registry
        route = registry.routing.get(model.subject)
        others = sorted(v for s, v in registry.versions if s == model.subject and v != model.version)
        if route is not None and model.version in (route.promoted, route.candidate) and others:
            # TargetModel picks versions explicitly here; keep the subject's default route valid
            promoted = route.promoted if route.promoted != model.version else others[-1]
            registry.set_routing(model.subject, promoted, None, 0.0)
        try:
            draining = await mm.state.unload_adapter(model.subject, model.version)
        except RegistryError as exc:
            if exc.status != 404:
                mm.models[model.model_name] = model
                return _error(exc.status, exc.message)
            draining = False
        unpacked = mm.root / ".unpacked"
        if _inside(model.path, unpacked):  # what load_model unpacked: the weights are in memory now
            top = unpacked / model.path.resolve().relative_to(unpacked.resolve()).parts[0]
            await asyncio.to_thread(shutil.rmtree, top, True)
    return JSONResponse({"unloaded": model.model_name, "draining": draining})


def _with_adapter(request: Request, model: LoadedModel, body: bytes) -> Request:
    """The same request with the body's adapter set to `model` (other fields untouched)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        data.pop("subject", None)
        data["adapter"] = {"subject": model.subject, "version": model.version}
        body = json.dumps(data).encode()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # later: the disconnect the handler watches for

    return Request(request.scope, receive)


async def invoke_model(request: Request) -> Response:
    from serving.app import invocations

    model = _mm(request).find(request.path_params["name"])
    if model is None:
        return _error(404, f"model {request.path_params['name']} is not loaded")
    return await invocations(_with_adapter(request, model, await request.body()))


async def invocations_with_target(request: Request) -> Response:
    """`/invocations`: the named model when SageMaker passes a TargetModel, the usual routing otherwise."""
    from serving.app import invocations

    target = request.headers.get(TARGET_HEADER)
    if not target:
        return await invocations(request)
    mm = _mm(request)
    model = mm.find(target)
    if model is None and (parsed := parse_archive_name(target)) is not None:
        subject, version, sha = parsed
        av = mm.state.registry.versions.get((subject, version))
        if av is not None and av.sha256 == sha:
            model = LoadedModel(target, "", Path(av.path or ""), subject, version, sha, target)
    if model is None:
        return _error(404, f"target model {target} is not loaded")
    return await invocations(_with_adapter(request, model, await request.body()))


def enabled_by_env() -> bool:
    return os.environ.get("TUTOR_MULTI_MODEL", "").strip().lower() in {"1", "true", "yes", "on"}


def mount_multimodel(app: Starlette, root: str | os.PathLike[str] | None = None, enabled: bool | None = None) -> Starlette:
    """Add the multi-model routes to the endpoint app (when enabled) and return the app."""
    if not (enabled if enabled is not None else enabled_by_env()):
        return app
    state = app.state.endpoint
    app.state.multimodel = MultiModel(state, Path(root or os.environ.get("TUTOR_MULTI_MODEL_ROOT") or DEFAULT_ROOT))
    routes = [
        Route("/invocations", invocations_with_target, methods=["POST"]),  # before the app's own
        Route("/models", list_models, methods=["GET"]),
        Route("/models", load_model, methods=["POST"]),
        Route("/models/{name:path}/invoke", invoke_model, methods=["POST"]),
        Route("/models/{name:path}", get_model, methods=["GET"]),
        Route("/models/{name:path}", unload_model, methods=["DELETE"]),
    ]
    app.router.routes[0:0] = routes
    return app

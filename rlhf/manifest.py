"""Artefacts: directories with a `manifest.json` that records provenance and a SHA-256 per file.

Why: a promoted model must be traceable to its base, parent and training data, and must never
be served half-written or tampered with. Writes are atomic (stage in a sibling temp directory,
fsync, rename) and `verify` recomputes every hash before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
KINDS = ("base_model", "adapter", "reward_model", "value_model", "other")


class ArtifactError(Exception):
    """The artefact is missing, partial, tampered with or malformed."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listing(root: Path) -> dict[str, Path]:
    """Every regular file under root (relative POSIX path → path), manifest excluded."""
    files: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise ArtifactError(f"{p}: symlinks are not allowed in an artefact")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST:
                files[rel] = p
    return files


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_artifact(
    dest: str | Path,
    kind: str,
    populate: Callable[[Path], None],
    *,
    base_model: str | None = None,
    base_model_sha256: str | None = None,
    parent: str | None = None,
    dataset_sha256: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Create the artefact `dest` atomically: `populate(tmp_dir)` writes the files, we add the manifest.

    The temp directory lives next to `dest` (same filesystem, so the final rename is atomic). If
    `populate` raises (including `rlhf.callbacks.Cancelled`) nothing is left behind. With
    `overwrite=False` an existing `dest` is an error; with `overwrite=True` it is replaced.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}; expected one of {KINDS}")
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"artefact already exists: {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; artefacts are read by other processes
        populate(tmp)
        files = _listing(tmp)
        manifest = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "base_model": base_model,
            "base_model_sha256": base_model_sha256,
            "parent": parent,
            "dataset_sha256": dataset_sha256,
            "config": config or {},
            "metrics": metrics or {},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in files.items()},
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
        for p in [*files.values(), tmp / MANIFEST]:
            p.chmod(0o644)
            _fsync_path(p)
        for d in sorted({p.parent for p in files.values()} | {tmp}, key=lambda x: len(x.parts), reverse=True):
            _fsync_path(d)
        if dest.exists():  # overwrite: move the old one aside first so a crash never leaves neither
            old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed manifest (no hash check; use `verify` before trusting the files)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST} (not an artefact, or a partial write)")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or "kind" not in data:
        raise ArtifactError(f"{mpath}: malformed manifest (needs 'kind' and 'files')")
    return data


def verify(path: str | Path) -> dict[str, Any]:
    """Recompute every file's SHA-256; raise `ArtifactError` on any difference. Returns the manifest."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artefact directory does not exist")
    manifest = read_manifest(root)
    recorded: dict[str, Any] = manifest["files"]
    present = _listing(root)
    missing = sorted(set(recorded) - set(present))
    extra = sorted(set(present) - set(recorded))
    if missing:
        raise ArtifactError(f"{root}: missing file(s): {', '.join(missing)}")
    if extra:
        raise ArtifactError(f"{root}: unexpected file(s): {', '.join(extra)}")
    for rel, info in recorded.items():
        p = present[rel]
        if p.stat().st_size != info.get("size") or sha256_file(p) != info.get("sha256"):
            raise ArtifactError(f"{root}: {rel} does not match its recorded SHA-256")
    return manifest


def artifact_sha256(path: str | Path, *, check: bool = True) -> str:
    """The one hash the registry records: SHA-256 of the canonical manifest (which hashes every file).

    Verifies the files first unless `check=False`.
    """
    manifest = verify(path) if check else read_manifest(path)
    return hashlib.sha256(canonical_json(manifest)).hexdigest()

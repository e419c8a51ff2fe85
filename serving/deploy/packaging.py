"""`model.tar.gz`: an adapter artefact packed the way SageMaker downloads and unpacks models.

The archive holds the artefact's files at its root (adapter config, weights, `manifest.json`),
so the unpacked directory *is* the artefact and `rlhf.manifest.verify` runs on it unchanged.

Deterministic: members sorted, fixed mtime/owner/mode, gzip header without name or time, so
identical content gives identical bytes — which is what lets a re-upload be skipped by hash.

The archive name carries the subject, version and the artefact's SHA-256
(`history-v2-<64 hex>.tar.gz`). On a multi-model endpoint that name is the `TargetModel`, so
the container can check what it unpacked against the hash the registry recorded, and a name can
never point at different bytes (SageMaker caches models by name).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z
ARCHIVE_RE = re.compile(r"^(?P<subject>[a-z][a-z0-9_]*)-v(?P<version>[0-9]+)-(?P<sha256>[0-9a-f]{64})(?:\.tar\.gz)?$")


class PackagingError(Exception):
    """The directory cannot be packed, or an archive is unsafe or malformed."""


def archive_name(subject: str, version: int, sha256: str) -> str:
    return f"{subject}-v{version}-{sha256.lower()}.tar.gz"


def parse_archive_name(name: str) -> tuple[str, int, str] | None:
    """(subject, version, sha256) from an archive name or a path/URL ending in one; None otherwise."""
    m = ARCHIVE_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    if m is None:
        return None
    return m["subject"], int(m["version"]), m["sha256"]


def _members(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    if not root.is_dir():
        raise PackagingError(f"{root} is not a directory")
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise PackagingError(f"{p}: symlinks cannot be packed")
        if p.is_file():
            files.append((prefix + p.relative_to(root).as_posix(), p))
    if not files:
        raise PackagingError(f"{root} is empty")
    return files


def build_archive(artifact_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The deterministic `model.tar.gz` bytes of a directory (regular files only).

    With `base_dir` (an optimised variant's own base model), the archive holds `adapter/` and `base/`
    (VARIANT_LAYOUT) and the container serves the adapter on that base in a process of its own.
    """
    files = (_members(Path(artifact_dir)) if base_dir is None else
             _members(Path(artifact_dir), "adapter/") + _members(Path(base_dir), "base/"))
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, p in files:
            info = tarfile.TarInfo(name)
            info.size = p.stat().st_size
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
    return raw.getvalue()


VARIANT_LAYOUT = ("adapter", "base")


def variant_parts(unpacked: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(artefact, its own base or None) of an unpacked archive; a bare base (a distilled student) is its own
    base."""
    root = Path(unpacked)
    if (root / "adapter").is_dir() and (root / "base").is_dir():
        return root / "adapter", root / "base"
    import json

    try:
        kind = json.loads((root / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError):
        kind = None
    return root, (root if kind == "base_model" else None)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_archive(archive: str | os.PathLike[str] | bytes, dest: str | os.PathLike[str]) -> Path:
    """Unpack safely into `dest` (regular files and directories only, nothing outside `dest`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else open(archive, "rb")  # noqa: SIM115
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise PackagingError(f"archive member {m.name!r} is not a regular file")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackagingError(f"cannot unpack the archive: {exc}") from None
    finally:
        fileobj.close()
    return dest

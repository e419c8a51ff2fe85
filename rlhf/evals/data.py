"""Where the evaluation data comes from, and its fingerprint.

Why a resolver: tests and benchmarks use the workplace's shared reference data
(`<repo>/../shared/data`), a deployment points `TUTOR_EVAL_DATA_DIR` at its own copy, and a
fresh machine has neither: then a suite raises `DataMissing` saying how to provide the files
(or uses data generated from the project's own corpus). We never download at run time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.evals.registry import DataMissing
from rlhf.paths import REPO_ROOT

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


def data_dir() -> Path:
    """`TUTOR_EVAL_DATA_DIR`, else `<repo>/../shared/data` if present, else the bundled sets' folder."""
    env = os.environ.get("TUTOR_EVAL_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return BUNDLED_DIR


def data_path(rel_path: str | os.PathLike[str]) -> Path:
    """Absolute path of a data file (absolute paths pass through)."""
    p = Path(rel_path)
    return p if p.is_absolute() else data_dir() / p


def how_to_provide(rel_path: str | os.PathLike[str], fmt: str = "") -> str:
    where = data_path(rel_path)
    return (f"data file {where} is missing. Put the file there in its public JSONL layout"
            f"{' (' + fmt + ')' if fmt else ''}, or set TUTOR_EVAL_DATA_DIR to a folder holding "
            f"{rel_path}; this project never downloads evaluation data at run time")


def load_jsonl(rel_path: str | os.PathLike[str], fmt: str = "") -> list[dict[str, Any]]:
    """Rows of a JSONL (or .jsonl.gz) file under `data_dir()`; DataMissing with how to provide it."""
    path = data_path(rel_path)
    if not path.is_file():
        raise DataMissing(how_to_provide(rel_path, fmt))
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataMissing(f"{path} line {i} is not JSON ({exc}); expected one JSON object a line") from exc
    if not rows:
        raise DataMissing(f"{path} is empty; {how_to_provide(rel_path, fmt)}")
    return rows


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_hash(*parts: Any, files: Sequence[str | os.PathLike[str]] = ()) -> str:
    """sha256 over the bytes of `files` (resolved under data_dir) and the JSON of `parts`
    (limit, seed, generated items...): equal hashes mean the same items were scored."""
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(data_path(f)).encode())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()


def subsample(rows: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """The first `limit` rows of a seeded shuffle (all rows, in file order, when limit is None)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    return [rows[i] for i in sorted(idx[:limit])]


def load_hf_dataset(name: str, config: str | None = None, split: str = "validation") -> list[dict[str, Any]]:
    """Rows from the local Hugging Face `datasets` cache, offline; DataMissing when not cached."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataMissing(f"dataset {name}{'/' + config if config else ''} ({split}) is not in the local "
                          f"Hugging Face cache ({type(exc).__name__}); run `datasets.load_dataset("
                          f"{name!r}{', ' + repr(config) if config else ''})` on a machine with internet and "
                          f"copy HF_HOME here, or provide the JSONL file") from exc
    return [dict(r) for r in ds]


__all__ = ["BUNDLED_DIR", "data_dir", "data_hash", "data_path", "file_sha256", "how_to_provide", "load_hf_dataset",
           "load_jsonl", "subsample"]

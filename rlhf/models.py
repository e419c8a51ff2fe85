"""Loading a base causal LM and its tokenizer, strictly offline.

Why offline: no code path may need the internet at run time. `"demo"` is the bundled demo
model (built on first use); anything else must be a local directory or already in the Hugging
Face cache, or we fail with a message that says how to provide it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from rlhf.demo_model import DemoRecipe, build_demo_model
from rlhf.manifest import MANIFEST, artifact_sha256, sha256_file
from rlhf.paths import var_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEMO_IDS = {"demo": "default", "demo:default": "default", "demo:tiny": "tiny"}


class BaseModelNotAvailable(RuntimeError):
    """The requested base model is not on this machine (and we never download)."""


def default_base_model() -> str:
    """`TUTOR_BASE_MODEL` if set, else `"demo"`."""
    return os.environ.get("TUTOR_BASE_MODEL", "").strip() or "demo"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA devices that support it, else fp32 (CPU training in bf16 is slow and lossy)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_base_path(model_id_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The local directory of a base model: demo (built if missing), a path, or an HF-cache snapshot."""
    ref = str(model_id_or_path) if model_id_or_path is not None else default_base_model()
    if ref in DEMO_IDS:
        return build_demo_model(DemoRecipe.named(DEMO_IDS[ref]))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelNotAvailable(f"{path} is a directory but has no config.json: not a Hugging Face model")
        return path.resolve()
    if ref.startswith((".", "/", "~")) or os.sep in ref and not _looks_like_hub_id(ref):
        raise BaseModelNotAvailable(f"base model path {ref} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise BaseModelNotAvailable(
            f"base model {ref!r} is not available offline (this project never downloads at run time). "
            f"Provide it one of two ways: (1) point TUTOR_BASE_MODEL (or the argument) at a local directory "
            f"holding the model (config.json, weights, tokenizer files), e.g. one made with "
            f"`huggingface-cli download {ref} --local-dir /models/{ref.split('/')[-1]}` on a machine with "
            f"internet; or (2) pre-populate the Hugging Face cache ({cache}, or HF_HOME) with "
            f"`huggingface-cli download {ref}` and copy it here. Or use \"demo\" for the bundled demo model. "
            f"({type(exc).__name__})"
        ) from exc


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/"))


def base_fingerprint(path: str | os.PathLike[str]) -> str:
    """A SHA-256 naming a base model's exact weights: the artefact hash when it has a manifest,
    else a hash over the names and contents of its files (config, weights, tokenizer)."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return artifact_sha256(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def base_model_id(model_id_or_path: str | os.PathLike[str] | None = None) -> str:
    """The id recorded in manifests: "demo-<recipe-hash>" for demo models, else the id or path given."""
    ref = str(model_id_or_path) if model_id_or_path is not None else default_base_model()
    if ref in DEMO_IDS:
        return f"demo-{DemoRecipe.named(DEMO_IDS[ref]).recipe_hash()}"
    path = Path(ref)
    if path.is_dir() and path.name.startswith("demo-") and (path / MANIFEST).is_file():
        return path.name
    return ref


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:  # BLOOM has one; others (GPT-2 style) may not
        tok.pad_token = tok.eos_token
    return tok


def load_base(
    model_id_or_path: str | os.PathLike[str] | None = "demo",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a causal LM, offline; `None` means `TUTOR_BASE_MODEL` or "demo".

    Device defaults to CUDA when present else CPU; dtype to bf16 on CUDA else fp32. The model
    is in eval mode.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_base_path(model_id_or_path)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    tokenizer = load_tokenizer(path)
    from rlhf.optimise import load_optimised  # int8 / structurally pruned variants have their own layout

    model = load_optimised(path, device=dev)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, local_files_only=True).to(dev)
    model.eval()
    return model, tokenizer


__all__ = [
    "BaseModelNotAvailable", "base_fingerprint", "base_model_id", "default_base_model", "load_base",
    "load_tokenizer", "resolve_base_path", "var_dir",
]

"""Random-weight BLOOM bases at a real model's *shape* (bloom-560m by default), and random adapters.

Why: no real BLOOM weights can be downloaded here, but the architecture can be built from the
published configuration. Correctness (token-for-token equality with `transformers`) and speed at
that shape are what the endpoint must prove before a real `bigscience/bloomz-560m` is served; the
vocabulary size only changes the embedding, so the bundled demo tokenizer is reused.

A built base is a normal artefact directory (config, safetensors weights, tokenizer, manifest), so
`rlhf.models.load_base` and the endpoint (`--base-model <dir>`) load it like any local model. It is
cached under `<cache_root>/bloom-shape-<key>/`, the key covering the shape, the seed and the
tokenizer files; a file lock serialises concurrent builders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rlhf.manifest import ArtifactError, verify, write_artifact

BUILD_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class BloomShape:
    """The `BloomConfig` fields that set the compute and memory of a BLOOM model."""

    n_layer: int = 24
    hidden_size: int = 1024
    n_head: int = 16
    vocab_size: int = 250_880
    seed: int = 0
    init_std: float = 0.02  # BloomConfig.initializer_range; tests raise it so tokens depend on context

    @classmethod
    def bloom_560m(cls) -> BloomShape:
        """bigscience/bloom-560m (and bloomz-560m): 24 layers, hidden 1024, 16 heads, vocab 250,880."""
        return cls()

    @classmethod
    def named(cls, name: str) -> BloomShape:
        """'bloom-560m', or 'bloom-560m-L<n>' for the same widths with fewer layers (bounded runs)."""
        if name == "bloom-560m":
            return cls()
        if name.startswith("bloom-560m-L") and name[12:].isdigit():
            return replace(cls(), n_layer=int(name[12:]))
        raise ValueError(f"unknown shape {name!r}; expected 'bloom-560m' or 'bloom-560m-L<layers>'")

    @property
    def parameters(self) -> int:
        """Parameter count (tied embeddings), without building the model."""
        h, L = self.hidden_size, self.n_layer
        per_block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
        return self.vocab_size * h + 2 * h + L * per_block + 2 * h

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """KV-cache bytes one token of one sequence holds: K and V, every layer, full width."""
        return 2 * self.n_layer * self.hidden_size * torch.finfo(dtype).bits // 8


def _tokenizer_hash(tokenizer_dir: Path) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = tokenizer_dir / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def shape_key(shape: BloomShape, tokenizer_dir: Path) -> str:
    payload = json.dumps({"shape": asdict(shape), "tokenizer": _tokenizer_hash(tokenizer_dir), "build": BUILD_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_model(shape: BloomShape, tokenizer: Any) -> Any:
    """A seeded random-weight `BloomForCausalLM` of `shape` (fp32, eval mode), in memory."""
    from transformers import BloomConfig, BloomForCausalLM, GenerationConfig

    if shape.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {shape.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = BloomConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, n_layer=shape.n_layer, n_head=shape.n_head,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=shape.init_std,
    )
    torch.manual_seed(shape.seed)
    model = BloomForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model.eval()


def ensure_shaped_base(shape: BloomShape, tokenizer_dir: str | Path, cache_root: str | Path) -> Path:
    """The directory of a random-weight base of `shape` with `tokenizer_dir`'s tokenizer; built once."""
    from rlhf.models import load_tokenizer

    tokenizer_dir, cache_root = Path(tokenizer_dir), Path(cache_root)
    dest = cache_root / f"bloom-shape-{shape_key(shape, tokenizer_dir)}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            try:
                verify(dest)
                return dest
            except ArtifactError:
                shutil.rmtree(dest)
        tokenizer = load_tokenizer(tokenizer_dir)
        model = build_model(shape, tokenizer)

        def populate(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        write_artifact(dest, "base_model", populate, base_model=dest.name, config=asdict(shape),
                       metrics={"parameters": sum(p.numel() for p in model.parameters())},
                       extra={"random_weights": True}, overwrite=True)
        return dest


def save_random_lora(model: Any, path: str | Path, *, r: int, target_modules: list[str], alpha: int | None = None,
                     seed: int = 0, std: float = 0.02, manifest: dict | None = None) -> Path:
    """Save a LoRA adapter with seeded random A *and* B (PEFT's B=0 init would be a no-op adapter).

    `model` is left as it was (the LoRA layers are unloaded again). With `manifest`, the adapter is
    written as a verified artefact (what the endpoint's admin API accepts).
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=target_modules, lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    try:
        return _save(peft_model, Path(path), manifest)
    finally:
        peft_model.unload()


def save_random_prompt_tuning(model: Any, path: str | Path, *, n_virtual: int, seed: int = 0,
                              manifest: dict | None = None) -> Path:
    """Save a prompt-tuning adapter whose virtual tokens are seeded random embeddings of the model's scale."""
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n_virtual))
    g = torch.Generator().manual_seed(seed)
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(torch.randn(emb.shape, generator=g) * model.config.initializer_range)
    return _save(peft_model, Path(path), manifest)


def _save(peft_model: Any, path: Path, manifest: dict | None) -> Path:
    if manifest is None:
        peft_model.save_pretrained(str(path))
        return path
    return write_artifact(path, "adapter", lambda tmp: peft_model.save_pretrained(str(tmp)), overwrite=True,
                          **manifest)

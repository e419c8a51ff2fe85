"""Pruning a base model: unstructured global L1 magnitude, or structured MLP neurons, plus LoRA recovery.

Unstructured: `torch.nn.utils.prune.global_unstructured` with `L1Unstructured` over the four Linear
weights of every block, given an *integer* count (topk), so the requested sparsity is reached exactly;
the masks are made permanent and the base is saved dense in the Hugging Face layout (zeros take the
same bytes and the same dense matmul time on CPU: docs/optimise.md has the numbers).

Structured: MLP neurons (rows of `dense_h_to_4h`, columns of `dense_4h_to_h`) ranked by an activation
importance — mean |GELU output| on corpus calibration text times the L2 norm of the neuron's output
weights — and the lowest removed, so the matrices really shrink. Attention heads are not pruned:
BLOOM ties the head width to `hidden_size / n_head` and both HF's attention and the endpoint's runner
use one head count for every layer (see docs/optimise.md).

Recovery: the subject's LoRA adapter is trained a few steps on the pruned base (base frozen, adapter
only) on the corpus reference answers; the held-out loss before and after is recorded.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.callbacks import Callback, emit
from rlhf.models import load_base, resolve_base_path
from rlhf.optimise.common import (
    TARGET_LINEARS,
    OptimiseError,
    adapter_dest,
    calibration_texts,
    collate,
    dir_size,
    encode_pairs,
    rebase_adapter,
    removing_partial,
    source_lineage,
    write_variant_base,
)

MODES = ("unstructured", "structured")
WEIGHTS = "model.safetensors"
NEAR_ZERO = (1e-4, 1e-3, 1e-2)  # absolute |w| thresholds reported before pruning


@dataclass
class PruneConfig:
    """`sparsity`: share of the target weights zeroed (unstructured) or of MLP neurons removed (structured)."""

    mode: str = "unstructured"
    sparsity: float = 0.5
    calibration_per_subject: int = 8  # structured: corpus dialogues per subject to score neurons
    recovery_steps: int = 20  # 0: no recovery fine-tune
    recovery_lr: float = 1e-3
    recovery_batch_size: int = 8
    recovery_examples: int = 64  # training dialogues of the adapter's subject
    heldout_examples: int = 16  # held-out dialogues for the before/after loss
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptimiseError(f"unknown pruning mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if not isinstance(self.sparsity, int | float) or not 0.0 <= float(self.sparsity) < 1.0:
            raise OptimiseError(f"sparsity must be in [0, 1); got {self.sparsity!r}")
        for name in ("recovery_steps", "calibration_per_subject", "recovery_examples", "heldout_examples"):
            if getattr(self, name) < 0:
                raise OptimiseError(f"PruneConfig.{name} must not be negative")
        if self.recovery_lr <= 0 or self.recovery_batch_size <= 0 or self.max_length <= 0:
            raise OptimiseError("recovery_lr, recovery_batch_size and max_length must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PruneConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise OptimiseError(f"unknown PruneConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def _target_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("transformer.h.") and n.endswith(TARGET_LINEARS)]


def weight_stats(model: nn.Module, thresholds: tuple[float, ...] = NEAR_ZERO) -> dict[str, float]:
    """Share of target weights that are exactly zero and |w| below each threshold (and below 1 % of their std)."""
    ws = torch.cat([m.weight.detach().abs().flatten() for _, m in _target_linears(model)])
    std = float(ws.float().pow(2).mean().sqrt())
    n = ws.numel()
    out = {"weights": float(n), "zero_share": int((ws == 0).sum()) / n, "weight_rms": std}
    for t in thresholds:
        out[f"near_zero_{t:g}"] = int((ws < t).sum()) / n
    out["near_zero_1pct_rms"] = int((ws < 0.01 * std).sum()) / n
    return out


def prune_unstructured(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Global L1 magnitude pruning to exactly round(sparsity * N) zeros, made permanent."""
    from torch.nn.utils import prune

    params = [(m, "weight") for _, m in _target_linears(model)]
    n = sum(m.weight.numel() for m, _ in params)
    amount = int(round(sparsity * n))
    if amount:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for m, name in params:
            prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return {"requested_sparsity": sparsity, "pruned_weights": amount, "real_sparsity": zeros / n}


@torch.no_grad()
def neuron_importance(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per block: mean |GELU output| of each MLP neuron on `batches` × ||its dense_4h_to_h column||₂."""
    sums = [torch.zeros(b.mlp.dense_4h_to_h.in_features) for b in model.transformer.h]
    counts = [0] * len(sums)
    hooks = []
    for i, block in enumerate(model.transformer.h):
        def hook(_mod, inputs, _out, i=i):
            a = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1])
            sums[i] += a.sum(0).float()
            counts[i] += a.shape[0]
        hooks.append(block.mlp.dense_4h_to_h.register_forward_hook(hook))
    try:
        for ids in batches:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return [s / max(1, c) * b.mlp.dense_4h_to_h.weight.detach().float().norm(dim=0)
            for s, c, b in zip(sums, counts, model.transformer.h, strict=True)]


def prune_mlp_neurons(model: nn.Module, scores: list[torch.Tensor], sparsity: float) -> dict[str, Any]:
    """Remove the lowest-scoring `sparsity` share of each block's MLP neurons (the Linear layers shrink)."""
    widths = []
    for block, s in zip(model.transformer.h, scores, strict=True):
        up, down = block.mlp.dense_h_to_4h, block.mlp.dense_4h_to_h
        keep_n = max(1, up.out_features - int(round(sparsity * up.out_features)))
        keep = torch.topk(s, keep_n).indices.sort().values
        new_up = nn.Linear(up.in_features, keep_n, bias=up.bias is not None)
        new_down = nn.Linear(keep_n, down.out_features, bias=down.bias is not None)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[keep])
            if up.bias is not None:
                new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep])
            if down.bias is not None:
                new_down.bias.copy_(down.bias)
        block.mlp.dense_h_to_4h, block.mlp.dense_4h_to_h = new_up, new_down
        widths.append(keep_n)
    return {"mlp_widths": widths}


def load_structured(path: str | Path, device: Any = "cpu") -> nn.Module:
    """A structurally pruned base: built from its config, then each MLP resized to the saved shapes."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with safe_open(str(path / WEIGHTS), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open API
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        for i, block in enumerate(model.transformer.h):
            width = shapes[f"transformer.h.{i}.mlp.dense_h_to_4h.weight"][0]
            block.mlp.dense_h_to_4h = nn.Linear(cfg.hidden_size, width)
            block.mlp.dense_4h_to_h = nn.Linear(width, cfg.hidden_size)
    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise OptimiseError(f"{path}: weights missing from {WEIGHTS}: {', '.join(missing[:5])}")
    return model.to(device).eval()


def _save_weights(model: nn.Module, tmp: Path, source: Path) -> None:
    from safetensors.torch import save_file

    tied = model.config.tie_word_embeddings
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    shutil.copy2(source / "config.json", tmp / "config.json")


def recover_adapter(model: nn.Module, tokenizer: Any, adapter: str | Path, subject: str, config: PruneConfig,
                    callback: Callback | None = None, label: str = "recovery") -> tuple[Path, dict[str, Any]]:
    """Train the subject's LoRA adapter on the (frozen) pruned base; returns (PEFT dir in a temp dir, metrics).

    Why only the adapter: the base is shared by every subject on the endpoint; the recovery must not
    change it, and a LoRA step costs a fraction of a full fine-tune.
    """
    from peft import PeftModel

    from rlhf.adapters import sft_examples

    torch.manual_seed(config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    policy = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    params = [p for p in policy.parameters() if p.requires_grad]
    train = encode_pairs(tokenizer, sft_examples(tokenizer, subject, config.recovery_examples, config.seed + 1),
                         config.max_length)
    held = encode_pairs(tokenizer, sft_examples(tokenizer, subject, config.heldout_examples, config.seed + 7919),
                        config.max_length)
    pad = tokenizer.pad_token_id

    @torch.no_grad()
    def heldout_loss() -> float:
        policy.eval()
        losses = []
        for i in range(0, len(held), config.recovery_batch_size):
            ids, mask, labels = collate(held[i : i + config.recovery_batch_size], pad)
            losses.append(float(policy(input_ids=ids, attention_mask=mask, labels=labels).loss))
        return sum(losses) / max(1, len(losses))

    before = heldout_loss()
    opt = torch.optim.AdamW(params, lr=config.recovery_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    curve = []
    for step in range(1, config.recovery_steps + 1):
        policy.train()
        idx = torch.randint(0, len(train), (config.recovery_batch_size,), generator=g).tolist()
        ids, mask, labels = collate([train[i] for i in idx], pad)
        loss = policy(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
        emit(callback, step, config.recovery_steps, f"{label} {subject}", {"recovery_loss": curve[-1]})
    after = heldout_loss()
    work = Path(tempfile.mkdtemp(prefix="recovery-"))
    policy.save_pretrained(str(work))
    trainable = sum(p.numel() for p in params)
    metrics = {"heldout_loss_before_recovery": before, "heldout_loss_after_recovery": after,
               "recovery_steps": config.recovery_steps, "recovery_trainable_parameters": trainable,
               "recovery_loss_first": curve[0] if curve else math.nan, "recovery_loss_last": curve[-1] if curve else math.nan}
    policy.unload()  # take the LoRA layers out of the shared base model again
    return work, metrics


def _prune(
    base: str | Path,
    out_dir: str | Path,
    config: PruneConfig | None = None,
    callback: Callback | None = None,
    *,
    adapters: dict[str, str | Path] | None = None,
    adapters_out: str | Path | None = None,
    adapter_version: int | None = None,
) -> dict[str, Any]:
    """Prune `base` into the artefact `out_dir`; each adapter is recovered on it (if `recovery_steps`) and saved.

    Returns {"base": path, "adapters": {subject: path}, "metrics": {...}, "adapter_metrics": {subject: {...}}}.
    """
    config = config or PruneConfig()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"variant directory already exists: {out}")
    if adapters and adapters_out is None:
        raise OptimiseError("adapters_out is needed to save the adapters of the pruned base")
    lineage = source_lineage(base, next(iter(adapters.values())) if adapters else None)
    for p in (adapters or {}).values():
        source_lineage(base, p)
    src = resolve_base_path(base)
    torch.manual_seed(config.seed)
    model, tok = load_base(src, device="cpu", dtype=torch.float32)
    before = weight_stats(model)
    n_before = sum(p.numel() for p in model.parameters())
    emit(callback, 0, 1, f"{config.mode} pruning at {config.sparsity:.0%}", before)
    dataset_sha = None
    if config.mode == "unstructured":
        result = prune_unstructured(model, config.sparsity)
    else:
        from rlhf import SUBJECTS

        rows, dataset_sha = calibration_texts(tok, tuple(SUBJECTS), config.calibration_per_subject, config.seed)
        batches = [torch.tensor([ids]) for ids, _ in encode_pairs(tok, rows, config.max_length)]
        result = prune_mlp_neurons(model, neuron_importance(model, batches), config.sparsity)
        result["calibration_sha256"] = dataset_sha
    metrics: dict[str, Any] = {
        **{f"before_{k}": v for k, v in before.items()}, **result,
        "parameters_before": n_before, "parameters": sum(p.numel() for p in model.parameters()),
        "source_size_bytes": dir_size(src),
    }
    if config.mode == "structured":
        metrics["zero_share_after"] = weight_stats(model)["zero_share"]
    write_variant_base(out, src, lambda tmp: _save_weights(model, tmp, src), method="prune",
                       lineage=lineage | {"structured": config.mode == "structured", "sparsity": config.sparsity},
                       config=config.to_dict(), metrics=metrics, dataset_sha256=dataset_sha)
    metrics["size_bytes"] = dir_size(out)
    metrics["size_ratio"] = metrics["size_bytes"] / max(1, metrics["source_size_bytes"])
    written, per_adapter = {}, {}
    for subject, path in (adapters or {}).items():
        dest = adapter_dest(adapters_out, subject, path, adapter_version)
        if config.recovery_steps:
            pruned, _ = load_base(out, device="cpu", dtype=torch.float32)
            work, am = recover_adapter(pruned, tok, path, subject, config, callback)
            try:
                written[subject] = str(rebase_adapter(path, out, dest, weights_dir=work, metrics=am,
                                                            version=adapter_version))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            per_adapter[subject] = am
        else:
            written[subject] = str(rebase_adapter(path, out, dest, version=adapter_version))
    emit(callback, 1, 1, f"pruned: {metrics['size_ratio']:.2f}x the source size", metrics)
    return {"base": str(out), "adapters": written, "metrics": metrics, "adapter_metrics": per_adapter}


def prune(base: str | Path, out_dir: str | Path, config: Any = None, callback: Callback | None = None, *,
         adapters: dict[str, str | Path] | None = None, adapters_out: str | Path | None = None,
         adapter_version: int | None = None) -> dict[str, Any]:
    """See `_prune`; on any failure or `Cancelled` the variant and the adapters it wrote are removed."""
    return removing_partial(_prune, base, out_dir, config, callback, adapters=adapters, adapters_out=adapters_out,
                            adapter_version=adapter_version)


__all__ = ["PruneConfig", "load_structured", "neuron_importance", "prune", "prune_mlp_neurons", "prune_unstructured",
           "recover_adapter", "weight_stats"]

"""Post-training quantisation of a base model's Linear layers to int8, for CPU serving.

Why int8 weights only in the blocks: the four BLOOM Linear layers of every block hold most of the
parameters; the embedding (tied to the LM head) and the LayerNorms stay fp32, and the subject adapters
(LoRA / prompt tuning) stay fp32 on top (the endpoint applies them itself, `serving.engine.BloomRunner`).

Artefact: `model.safetensors` holds each quantised weight as int8 plus a per-output-channel fp32 scale
(symmetric, absmax / 127); everything else fp32. The scheme decides how it runs when loaded:

- `dynamic_int8`: PyTorch dynamic quantisation (`torch.ao.nn.quantized.dynamic.Linear`, fbgemm):
  int8 weights, activations quantised per tensor on the fly, int8 GEMM.
- `int8_weight_only`: torchao's `Int8WeightOnlyConfig` (weights int8, activations fp32); PEFT can wrap
  these Linear layers, so the HF/PEFT evaluation path works on them too.
- `bnb_int8` / `bnb_int4`: bitsandbytes on CUDA (the documented GPU path; refused on CPU).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.callbacks import Callback, emit
from rlhf.manifest import read_manifest
from rlhf.models import load_base, resolve_base_path
from rlhf.optimise.common import (
    TARGET_LINEARS,
    OptimiseError,
    adapter_dest,
    dir_size,
    rebase_adapter,
    removing_partial,
    source_lineage,
    write_variant_base,
)

SCHEMES = ("dynamic_int8", "int8_weight_only", "bnb_int8", "bnb_int4")
CPU_SCHEMES = ("dynamic_int8", "int8_weight_only")
WEIGHTS = "model.safetensors"


@dataclass
class QuantiseConfig:
    """Which scheme and which Linear layers (suffixes of `transformer.h.<i>.<name>`)."""

    scheme: str = "int8_weight_only"  # batch-invariant; dynamic_int8 is not (docs/optimise.md)
    modules: tuple[str, ...] = TARGET_LINEARS

    def __post_init__(self) -> None:
        self.modules = tuple(self.modules)
        if self.scheme not in SCHEMES:
            raise OptimiseError(f"unknown quantisation scheme {self.scheme!r}; expected one of {', '.join(SCHEMES)}")
        bad = [m for m in self.modules if m not in TARGET_LINEARS]
        if bad or not self.modules:
            raise OptimiseError(f"quantisable modules are {', '.join(TARGET_LINEARS)}; got {', '.join(bad) or 'none'}")

    def check_runtime(self) -> None:
        """Refuse what this machine cannot run, before any work (bitsandbytes needs CUDA)."""
        if self.scheme.startswith("bnb"):
            if not torch.cuda.is_available():
                raise OptimiseError(
                    f"{self.scheme} quantises with bitsandbytes, which needs a CUDA GPU; this machine has none. "
                    f"On CPU use scheme 'dynamic_int8' or 'int8_weight_only'.")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as exc:
                raise OptimiseError(f"{self.scheme} needs the bitsandbytes package (pip install bitsandbytes)") from exc
        if self.scheme == "int8_weight_only":
            _torchao()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"modules": list(self.modules)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QuantiseConfig:
        data = dict(data or {})
        unknown = set(data) - {"scheme", "modules"}
        if unknown:
            raise OptimiseError(f"unknown QuantiseConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def _torchao() -> Any:
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise OptimiseError("scheme 'int8_weight_only' needs torchao (pip install --no-deps 'torchao>=0.18')") from exc
    return tq


def _targets(model: nn.Module, modules: tuple[str, ...]) -> dict[str, nn.Linear]:
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.startswith("transformer.h.") and name.endswith(modules)}


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q int8 [out, in], scale fp32 [out]) with w ≈ q * scale."""
    scale = (w.detach().float().abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _quantise(
    base: str | Path,
    out_dir: str | Path,
    config: QuantiseConfig | None = None,
    callback: Callback | None = None,
    *,
    adapters: dict[str, str | Path] | None = None,
    adapters_out: str | Path | None = None,
    adapter_version: int | None = None,
) -> dict[str, Any]:
    """Quantise `base` into the artefact `out_dir`; re-record `adapters` (subject → path) on it.

    Returns {"base": path, "adapters": {subject: path}, "metrics": {...}}. Adapters are written to
    `adapters_out/<subject>/v<N>` with their source version number.
    """
    config = config or QuantiseConfig()
    config.check_runtime()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"variant directory already exists: {out}")
    if adapters and adapters_out is None:
        raise OptimiseError("adapters_out is needed to re-record adapters on the quantised base")
    lineage = source_lineage(base, next(iter(adapters.values())) if adapters else None)
    for p in (adapters or {}).values():
        source_lineage(base, p)  # every adapter verified before work
    src = resolve_base_path(base)
    emit(callback, 0, 3, f"loading {lineage['source_base']}")
    if config.scheme.startswith("bnb"):
        return _quantise_bnb(src, out, config, lineage, callback)
    model, _ = load_base(src, device="cpu", dtype=torch.float32)
    targets = _targets(model, config.modules)
    emit(callback, 1, 3, f"quantising {len(targets)} Linear layers to int8 ({config.scheme})")
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    err = 0.0
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        mod = name.rsplit(".", 1)[0]
        if mod in targets and name.endswith(".weight"):
            q, scale = int8_per_channel(t)
            err = max(err, float((q.float() * scale[:, None] - t).abs().max()))
            tensors[name] = q.contiguous()
            tensors[name + "_scale"] = scale.contiguous()
        else:
            tensors[name] = t.detach().float().contiguous()
    n_q = sum(t.numel() for n, t in tensors.items() if t.dtype == torch.int8)
    n_all = sum(p.numel() for p in model.parameters())
    metrics = {"quantised_parameters": n_q, "parameters": n_all, "quantised_share": n_q / max(1, n_all),
               "max_abs_weight_error": err, "source_size_bytes": dir_size(src)}

    def populate(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "tutor_quantised": config.scheme})
        shutil.copy2(src / "config.json", tmp / "config.json")

    emit(callback, 2, 3, "writing the artefact")
    write_variant_base(out, src, populate, method="quantise", lineage=lineage | {"scheme": config.scheme},
                       config=config.to_dict(), metrics=metrics)
    metrics["size_bytes"] = dir_size(out)
    metrics["size_ratio"] = metrics["size_bytes"] / max(1, metrics["source_size_bytes"])
    written = {s: str(rebase_adapter(p, out, adapter_dest(adapters_out, s, p, adapter_version), version=adapter_version))
               for s, p in (adapters or {}).items()}
    emit(callback, 3, 3, f"quantised: {metrics['size_ratio']:.2f}x the source size", metrics)
    return {"base": str(out), "adapters": written, "metrics": metrics}


def _quantise_bnb(src: Path, out: Path, config: QuantiseConfig, lineage: dict[str, Any],
                  callback: Callback | None) -> dict[str, Any]:  # pragma: no cover - needs CUDA
    """bitsandbytes on CUDA: transformers loads the base quantised and serialises it (8-bit or 4-bit NF4)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = (BitsAndBytesConfig(load_in_8bit=True) if config.scheme == "bnb_int8" else
          BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=qc, device_map="cuda",
                                                 local_files_only=True)
    metrics = {"source_size_bytes": dir_size(src)}
    write_variant_base(out, src, lambda tmp: model.save_pretrained(str(tmp)), method="quantise",
                       lineage=lineage | {"scheme": config.scheme}, config=config.to_dict(), metrics=metrics)
    metrics["size_bytes"] = dir_size(out)
    emit(callback, 3, 3, "quantised with bitsandbytes", metrics)
    return {"base": str(out), "adapters": {}, "metrics": metrics}


def load_quantised(path: str | Path, device: str | torch.device = "cpu", scheme: str | None = None) -> nn.Module:
    """Rebuild a quantised variant for inference (`scheme` overrides the recorded one, for comparisons)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest = read_manifest(path)
    scheme = scheme or manifest["optimise"]["scheme"]
    if scheme.startswith("bnb"):  # pragma: no cover - needs CUDA
        QuantiseConfig(scheme=scheme).check_runtime()
        return AutoModelForCausalLM.from_pretrained(str(path), device_map="cuda", local_files_only=True).eval()
    if torch.device(device).type != "cpu":
        raise OptimiseError(f"int8 scheme {scheme!r} runs on CPU here; for CUDA quantise with bnb_int8 / bnb_int4")
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = load_file(str(path / WEIGHTS))
    scales = {k.removesuffix("_scale"): v for k, v in tensors.items() if k.endswith("_scale")}
    state = {}
    for k, v in tensors.items():
        if k.endswith("_scale"):
            continue
        state[k] = v.float() * scales[k][:, None] if k in scales else v
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if any(p.is_meta for p in model.parameters()):
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        raise OptimiseError(f"{path}: weights missing from {WEIGHTS}: {', '.join(missing[:5])}")
    model.eval()
    names = {k.rsplit(".", 1)[0] for k in scales}
    if scheme == "dynamic_int8":
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        for name in names:
            parent_name, attr = name.rsplit(".", 1)
            lin = model.get_submodule(name)
            qw = torch.quantize_per_channel(lin.weight.detach(), scales[name + ".weight"].double(),
                                            torch.zeros(lin.out_features, dtype=torch.long), 0, torch.qint8)
            dyn = DynLinear(lin.in_features, lin.out_features, bias_=lin.bias is not None, dtype=torch.qint8)
            dyn.set_weight_bias(qw, None if lin.bias is None else lin.bias.detach())
            setattr(model.get_submodule(parent_name), attr, dyn)
    elif scheme == "int8_weight_only":
        tq = _torchao()
        tq.quantize_(model, tq.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in names)
    else:
        raise OptimiseError(f"unknown quantisation scheme {scheme!r}")
    return model


def scheme_timing(model: nn.Module, tokens: int = 32, batch: int = 8, repeats: int = 3) -> float:
    """Seconds for one forward over `batch x tokens` (a crude per-scheme speed probe for the docs)."""
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens))
    with torch.inference_mode():
        model(ids)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(ids)
    return (time.perf_counter() - t0) / repeats


def describe(path: str | Path) -> dict[str, Any]:
    """The variant's optimise record (method, scheme, lineage) or {} for a plain base."""
    try:
        return dict(read_manifest(path).get("optimise") or {})
    except Exception:  # noqa: BLE001 - not an artefact: a plain base
        return {}


def quantise(base: str | Path, out_dir: str | Path, config: Any = None, callback: Callback | None = None, *,
         adapters: dict[str, str | Path] | None = None, adapters_out: str | Path | None = None,
         adapter_version: int | None = None) -> dict[str, Any]:
    """See `_quantise`; on any failure or `Cancelled` the variant and the adapters it wrote are removed."""
    return removing_partial(_quantise, base, out_dir, config, callback, adapters=adapters, adapters_out=adapters_out,
                            adapter_version=adapter_version)


__all__ = ["QuantiseConfig", "SCHEMES", "describe", "int8_per_channel", "load_quantised", "quantise"]

"""Knowledge distillation: teacher = base + subject adapter; student = fewer BLOOM layers, or a smaller adapter.

Loss (Hinton et al. 2015; DistilBERT): α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, hard labels),
averaged over the completion tokens. The T² keeps the soft term's gradient scale independent of T. Hard
labels are the corpus reference answers (`hard_labels="reference"`) or the teacher's own greedy reply
(`"teacher_greedy"`).

Modes:
- `layers`: the student is a BLOOM with a subset of the teacher's blocks (default every other one, as
  DistilBERT), initialised from the teacher with its adapter merged; all student weights train. It is
  saved as a *base* artefact (the subject's knowledge is in its weights; the endpoint serves it with no
  adapter, on an endpoint process of its own: docs/optimise.md).
- `adapter`: the student is a fresh LoRA of a lower rank on the same base; only it trains. Saved as an
  *adapter* artefact of the same base, so the running endpoint can load it as a new version.

Teacher logits are computed on the fly (one no-grad teacher forward per batch); the bytes a cache would
take are reported in the metrics (`teacher_cache_bytes`) beside the on-the-fly batch cost.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch import nn

from rlhf.callbacks import Callback, emit
from rlhf.manifest import canonical_json, read_manifest, verify, write_artifact
from rlhf.models import base_fingerprint, base_model_id, load_base, resolve_base_path
from rlhf.optimise.common import (
    OptimiseError,
    collate,
    dir_size,
    encode_pairs,
    source_lineage,
    write_variant_base,
)

MODES = ("layers", "adapter")
HARD_LABELS = ("reference", "teacher_greedy")


@dataclass
class DistilConfig:
    """Defaults: T=2, α=0.5, 150 steps of 8 dialogues on the subject, chosen by the measured sweep in
    docs/optimise.md (`benchmarks/distil_sweep.py`): T=2 gave the lowest held-out KL at every α, α=0.5 the
    lowest CE at T=2, and 150 steps twice the answer-key accuracy of 60."""

    mode: str = "layers"
    student_layers: tuple[int, ...] | None = None  # layers mode; None: every other teacher layer (0, 2, ...)
    student_rank: int = 2  # adapter mode: the student's LoRA rank (must be below the teacher's)
    temperature: float = 2.0
    alpha: float = 0.5
    hard_labels: str = "reference"
    steps: int = 150
    learning_rate: float = 5e-4
    batch_size: int = 8
    examples: int = 128  # training dialogues of the subject
    heldout_examples: int = 16
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptimiseError(f"unknown distillation mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if not isinstance(self.temperature, int | float) or self.temperature <= 0:
            raise OptimiseError(f"temperature T must be > 0; got {self.temperature!r}")
        if not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            raise OptimiseError(f"alpha must be in [0, 1]; got {self.alpha!r}")
        if self.hard_labels not in HARD_LABELS:
            raise OptimiseError(f"hard_labels must be one of {', '.join(HARD_LABELS)}")
        if self.student_layers is not None:
            self.student_layers = tuple(int(i) for i in self.student_layers)
            if not self.student_layers or len(set(self.student_layers)) != len(self.student_layers):
                raise OptimiseError("student_layers must be distinct teacher layer indices")
        for name in ("student_rank", "steps", "batch_size", "examples", "max_length"):
            if getattr(self, name) <= 0:
                raise OptimiseError(f"DistilConfig.{name} must be positive")
        if self.learning_rate <= 0:
            raise OptimiseError("learning_rate must be positive")

    def check_teacher(self, n_layer: int, teacher_rank: int | None) -> None:
        """Refuse a student that is not smaller than its teacher (before any training)."""
        if self.mode == "layers":
            layers = self.layers_for(n_layer)
            if len(layers) >= n_layer or max(layers) >= n_layer or min(layers) < 0:
                raise OptimiseError(f"the student must have fewer layers than the teacher's {n_layer}, each an index "
                                    f"in [0, {n_layer - 1}]; got {list(layers)}")
        elif teacher_rank is None:
            raise OptimiseError("adapter-mode distillation needs a LoRA teacher adapter")
        elif self.student_rank >= teacher_rank:
            raise OptimiseError(f"the student's LoRA rank {self.student_rank} must be below the teacher's {teacher_rank}")

    def layers_for(self, n_layer: int) -> tuple[int, ...]:
        return self.student_layers if self.student_layers is not None else tuple(range(0, n_layer, 2))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student_layers"] = list(self.student_layers) if self.student_layers is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DistilConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise OptimiseError(f"unknown DistilConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """α·T²·KL(p_t ‖ p_s) + (1−α)·CE over the label positions (labels −100 are ignored; HF's shift applied).

    Returns (loss, {"kl": KL at T, "ce": CE, "soft": T²·KL}).
    """
    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    y = labels[:, 1:]
    mask = y != -100
    if not bool(mask.any()):
        raise OptimiseError("no label positions in the batch")
    log_ps = F.log_softmax(s[mask] / temperature, dim=-1)
    log_pt = F.log_softmax(t[mask] / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1).mean()
    ce = F.cross_entropy(s[mask], y[mask])
    soft = temperature**2 * kl
    loss = alpha * soft + (1 - alpha) * ce
    return loss, {"kl": kl.item(), "ce": ce.item(), "soft": soft.item()}


def student_from_teacher(teacher: nn.Module, layers: tuple[int, ...]) -> nn.Module:
    """A BLOOM with the teacher's embeddings, final norm and the blocks `layers`, in that order (a copy)."""
    cfg = copy.deepcopy(teacher.config)
    cfg.n_layer = len(layers)
    student = type(teacher)(cfg)
    t_sd = teacher.state_dict()
    sd = {}
    for k in student.state_dict():
        if k.startswith("transformer.h."):
            i, rest = k.removeprefix("transformer.h.").split(".", 1)
            sd[k] = t_sd[f"transformer.h.{layers[int(i)]}.{rest}"].clone()
        else:
            sd[k] = t_sd[k].clone()
    student.load_state_dict(sd)
    student.tie_weights()
    return student


def _teacher(base: Path, adapter: Path) -> nn.Module:
    """Base + adapter, merged into plain weights (a frozen teacher forward without PEFT's extra matmuls)."""
    from peft import PeftModel

    model, _ = load_base(base, device="cpu", dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()


def distil(
    base: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    config: DistilConfig | None = None,
    callback: Callback | None = None,
    *,
    version: int | None = None,
) -> dict[str, Any]:
    """Distil the teacher (base + `adapter`) into a student artefact at `out_dir`.

    `version` (adapter mode): the student adapter's version number (default: the teacher's).
    Returns {"path", "kind": "base_model" | "adapter", "metrics", "curve"}; the partial output is removed on
    failure or `Cancelled`.
    """
    config = config or DistilConfig()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"student directory already exists: {out}")
    src = resolve_base_path(base)
    lineage = source_lineage(src, adapter)
    amanifest = verify(adapter)
    tcfg = amanifest.get("config", {})
    teacher_rank = tcfg.get("r") if amanifest.get("method") in ("lora", "qlora") else None
    from transformers import AutoConfig

    n_layer = AutoConfig.from_pretrained(str(src), local_files_only=True).n_layer
    config.check_teacher(n_layer, teacher_rank)  # refused before any work
    try:
        return _distil(src, Path(adapter), out, config, callback, lineage, tcfg, version)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _distil(src: Path, adapter: Path, out: Path, config: DistilConfig, callback: Callback | None,
            lineage: dict[str, Any], tcfg: dict[str, Any], version: int | None) -> dict[str, Any]:
    from rlhf.adapters import AdapterConfig, peft_config, sft_examples
    from rlhf.generation import generate

    subject = lineage.get("subject")
    torch.manual_seed(config.seed)
    emit(callback, 0, config.steps, "loading the teacher")
    teacher = _teacher(src, adapter)
    _, tok = load_base(src, device="cpu")
    rows = sft_examples(tok, subject, config.examples, config.seed + 1)
    held_rows = sft_examples(tok, subject, config.heldout_examples, config.seed + 7919)
    if config.hard_labels == "teacher_greedy":
        for rs in (rows, held_rows):
            gens = generate(teacher, tok, [r["prompt"] for r in rs], max_new_tokens=config.max_length // 2)
            for r, g in zip(rs, gens, strict=True):
                r["completion"] = g.text
    data_sha = hashlib.sha256(canonical_json({"train": rows, "heldout": held_rows})).hexdigest()
    train, held = encode_pairs(tok, rows, config.max_length), encode_pairs(tok, held_rows, config.max_length)
    pad = tok.pad_token_id

    if config.mode == "layers":
        layers = config.layers_for(teacher.config.n_layer)
        student = student_from_teacher(teacher, layers)
    else:
        from peft import get_peft_model

        layers = ()
        student_base, _ = load_base(src, device="cpu", dtype=torch.float32)
        acfg = AdapterConfig(r=config.student_rank, alpha=2 * config.student_rank,
                             target_modules=tuple(tcfg.get("target_modules") or ("query_key_value",)), dropout=0.0)
        student = get_peft_model(student_base, peft_config(acfg, src))
    params = [p for p in student.parameters() if p.requires_grad]

    @torch.no_grad()
    def heldout() -> dict[str, float]:
        student.eval()
        parts = []
        for i in range(0, len(held), config.batch_size):
            ids, mask, labels = collate(held[i : i + config.batch_size], pad)
            s = student(input_ids=ids, attention_mask=mask).logits
            t = teacher(input_ids=ids, attention_mask=mask).logits
            parts.append(distillation_loss(s, t, labels, config.temperature, config.alpha)[1])
        return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}

    before = heldout()
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    curve, max_t = [], 0
    for step in range(1, config.steps + 1):
        student.train()
        idx = torch.randint(0, len(train), (config.batch_size,), generator=g).tolist()
        ids, mask, labels = collate([train[i] for i in idx], pad)
        max_t = max(max_t, ids.shape[1])
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits  # on the fly, never cached
        loss, parts = distillation_loss(student(input_ids=ids, attention_mask=mask).logits, t_logits, labels,
                                        config.temperature, config.alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        point = {"distil_loss": loss.item(), **parts}
        curve.append(point)
        emit(callback, step, config.steps, f"distilling {subject} ({config.mode})", point)
    after = heldout()
    vocab = teacher.config.vocab_size
    metrics: dict[str, Any] = {
        **{f"heldout_{k}_before": v for k, v in before.items()}, **{f"heldout_{k}_after": v for k, v in after.items()},
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "student_trainable_parameters": sum(p.numel() for p in params),
        "teacher_logits": "on the fly",
        "teacher_batch_bytes": config.batch_size * max_t * vocab * 4,
        "teacher_cache_bytes": sum(len(ids) for ids, _ in train) * vocab * 4,
        "source_size_bytes": dir_size(src),
    }
    lineage = lineage | {"teacher_base_sha256": lineage["source_base_sha256"],
                         "teacher_adapter_sha256": lineage["source_adapter_sha256"], "temperature": config.temperature,
                         "alpha": config.alpha, "data_sha256": data_sha, "mode": config.mode,
                         "student_layers": list(layers)}
    emit(callback, config.steps, config.steps, "saving the student")
    if config.mode == "layers":
        def populate(tmp: Path) -> None:
            student.save_pretrained(str(tmp))
            shutil.copy2(src / "config.json", tmp / "teacher_config.json")

        write_variant_base(out, src, populate, method="distil", lineage=lineage, config=config.to_dict(),
                           metrics=metrics, dataset_sha256=data_sha)
        kind = "base_model"
    else:
        work = Path(tempfile.mkdtemp(prefix="distil-"))
        try:
            student.save_pretrained(str(work))
            amanifest = read_manifest(adapter)

            def populate(tmp: Path) -> None:
                for f in work.iterdir():
                    if f.name.startswith("adapter_"):
                        shutil.copy2(f, tmp / f.name)

            write_artifact(out, "adapter", populate, base_model=base_model_id(src),
                           base_model_sha256=base_fingerprint(src), parent=lineage["source_adapter_sha256"],
                           dataset_sha256=data_sha, config=config.to_dict(), metrics=metrics,
                           extra={"subject": subject, "version": version or amanifest.get("version"), "method": "lora",
                                  "optimise": {"method": "distil", **lineage}})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        kind = "adapter"
    metrics["size_bytes"] = dir_size(out)
    return {"path": str(out), "kind": kind, "metrics": metrics, "curve": curve}


__all__ = ["DistilConfig", "distil", "distillation_loss", "student_from_teacher"]

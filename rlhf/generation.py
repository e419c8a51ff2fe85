"""Batched generation and the answer-key accuracy of a policy (greedy, on held-out prompts).

Why here: the demo build, the CLI and the trainers all need "generate replies for these chat
prompts" with left padding and stop-at-EOS handled the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.chat import build_prompt
from rlhf.corpus import check_answer, eval_prompts, seed_prompts, well_formed


@dataclass
class Generation:
    text: str
    tokens: int
    finish_reason: str  # "stop" (EOS) or "length"


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
) -> list[Generation]:
    """Continue each already-formatted prompt (see `rlhf.chat.build_prompt`)."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[Generation] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                      "eos_token_id": eos_id, "pad_token_id": pad_id}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs = model.generate(**enc, **kwargs)
            for row in seqs[:, enc["input_ids"].shape[1] :].tolist():
                stop = eos_id in row
                kept = row[: row.index(eos_id)] if stop else [t for t in row if t != pad_id]
                out.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                                      "stop" if stop else "length"))
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return out


def answer_key_accuracy(model: Any, tokenizer: Any, subject: str, n: int = 60, seed: int = 0,
                        max_new_tokens: int = 48, batch_size: int = 32) -> dict[str, Any]:
    """Greedy replies to `n` held-out prompts; share whose answer key checks, and share in format.

    "In format" means the reply ended with EOS within the budget (and, for mathematics, has a
    final `#### n` line).
    """
    items = eval_prompts(subject, n, seed)
    prompts = [build_prompt(tokenizer, subject, [{"role": "user", "content": it.question}]) for it in items]
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [check_answer(subject, it.key, g.text) for it, g in zip(items, gens, strict=True)]
    in_format = [g.finish_reason == "stop" and (subject != "mathematics" or "####" in g.text) for g in gens]
    k = max(1, len(items))
    return {
        "subject": subject,
        "n": len(items),
        "accuracy": sum(correct) / k,
        "in_format": sum(in_format) / k,
        "examples": [{"question": it.question, "key": it.key, "reply": g.text, "correct": c}
                     for it, g, c in list(zip(items, gens, correct, strict=True))[:3]],
    }


def well_formed_share(model: Any, tokenizer: Any, subject: str, *, temperature: float, top_p: float = 1.0,
                      n: int = 32, seed: int = 0, max_new_tokens: int = 64) -> dict[str, Any]:
    """Sampled replies to `n` labeling-pool prompts; the share that `rlhf.corpus.well_formed` passes.

    Why: comparison tasks show labelers sampled replies; this is how readable they are at the
    sampling temperature the labeling pool uses.
    """
    items = seed_prompts(subject, n, seed)
    prompts = [build_prompt(tokenizer, subject, [{"role": "user", "content": it.question}]) for it in items]
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                    temperature=temperature, top_p=top_p, seed=seed)
    ok = [g.finish_reason == "stop" and well_formed(g.text) for g in gens]
    return {"subject": subject, "n": len(gens), "temperature": temperature, "top_p": top_p,
            "well_formed": sum(ok) / max(1, len(gens)),
            "examples": [{"question": it.question, "reply": g.text, "well_formed": w}
                         for it, g, w in list(zip(items, gens, ok, strict=True))[:3]]}

"""Greedy decoding through the endpoint's own runner (`serving.engine.BloomRunner`), for the optimise tests.

Why the runner and not HF `generate`: the endpoint serves a variant through this decode loop (its own
KV cache, LoRA banks applied in fp32 on top of the base's Linear layers), so that is what must agree.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf.chat import build_prompt
from rlhf.corpus import eval_prompts
from serving.engine import BloomRunner


def runner_with_adapters(model: Any, adapters: list) -> BloomRunner:
    """A runner with adapter i in slot i + 1 (slot 0 = the bare base)."""
    runner = BloomRunner(model)
    for i, path in enumerate(adapters, start=1):
        runner.install(i, runner.read_adapter(path))
    return runner


def greedy(runner: BloomRunner, prompts: list[list[int]], slots: list[int], max_new: int, eos: int) -> list[list[int]]:
    """Greedy continuation of every prompt in one batch (rows finish at EOS)."""
    logits, cache = runner.prefill(prompts, slots, max_new)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    slot_t = torch.tensor(slots)
    for _ in range(max_new):
        tok = logits.argmax(-1)
        for i, t in enumerate(tok.tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = t == eos
        if all(done):
            break
        logits = runner.decode(tok, cache, slot_t)
    return [o[:-1] if o and o[-1] == eos else o for o in out]


def forced_agreement(runner: BloomRunner, prompts: list[list[int]], slots: list[int], refs: list[list[int]],
                     eos: int) -> float:
    """Teacher-forced top-1 agreement: feed each reference continuation (plus EOS) and count the positions
    where this runner's argmax is the reference token (no cascade after a first divergence)."""
    max_new = max(len(r) for r in refs) + 1
    targets = [r + [eos] for r in refs]
    logits, cache = runner.prefill(prompts, slots, max_new)
    same = total = 0
    slot_t = torch.tensor(slots)
    for step in range(max_new):
        pred = logits.argmax(-1).tolist()
        for i, t in enumerate(targets):
            if step < len(t):
                same += int(pred[i] == t[step])
                total += 1
        feed = torch.tensor([t[step] if step < len(t) else eos for t in targets])
        logits = runner.decode(feed, cache, slot_t)
    return same / max(1, total)


def demo_prompts(tokenizer: Any, subjects: tuple[str, ...], n: int) -> list[tuple[str, list[int]]]:
    """(subject, prompt ids) for `n` held-out questions per subject."""
    out = []
    for s in subjects:
        for it in eval_prompts(s, n, 0):
            text = build_prompt(tokenizer, s, [{"role": "user", "content": it.question}])
            out.append((s, tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two greedy outputs agree, counted up to the longer output."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        n = max(len(x), len(y), 1)
        same += sum(1 for i in range(min(len(x), len(y))) if x[i] == y[i])
        total += n
    return same / total

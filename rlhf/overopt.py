"""The over-optimisation alarm: a gold signal the policy never trains on, watched beside the proxy reward.

A reward model is a proxy for the labelers' preference; pushed too hard, the policy learns what the proxy
over-rates (reward hacking, Gao et al. 2022 "Scaling laws for reward model overoptimization"): the proxy
keeps rising while the true preference falls. Every ``alarm_every`` optimiser steps the trainer answers a
fixed set of held-out prompts (greedy, so the check measures the policy and not the dice) and scores the
same answers twice: with the proxy (the reward it trains on) and with a gold signal it never sees —

* the corpus answer key (``rlhf.corpus.check_answer``) where the prompts have one (every demo subject), or
* a second reward model trained on a disjoint part of the snapshot (``gold_reward_model_path``).

A check *diverges* when the proxy rose since the previous check while the gold is below its best so far
(by more than ``alarm_tolerance``). After ``alarm_patience`` diverging checks in a row the alarm fires:
training stops, the adapter weights of the best check by gold are put back (the starting version counts:
check 0 runs before the first step), and the run's metrics carry the flag and both curves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RewardFn = Callable[[list[str], list[Any], list[str]], list[float]]

# where the gold signal comes from: the corpus answer key, or a second reward model trained on the other half of
# the snapshot's prompts (the training pipeline trains it beside the proxy when a run asks for it)
GOLDS = ("answer_key", "reward_model")


@dataclass
class AlarmConfig:
    """The alarm's settings (the ``alarm_*`` fields of PPOConfig / AltConfig)."""

    every: int = 0  # check every N optimiser steps; 0 = off
    prompts: int = 16  # held-out prompts answered at each check
    patience: int = 2  # diverging checks in a row before the alarm fires
    tolerance: float = 0.0  # gold may sit this far below its best without counting as a fall
    stop: bool = True  # stop early and keep the best-by-gold weights (False: only flag)
    gold: str = "answer_key"  # GOLDS

    def __post_init__(self) -> None:
        if self.every < 0 or self.prompts < 1 or self.patience < 1 or self.tolerance < 0:
            raise ValueError("alarm_every must be >= 0, alarm_prompts >= 1, alarm_patience >= 1, alarm_tolerance >= 0")
        if self.gold not in GOLDS:
            raise ValueError(f"alarm_gold must be one of {', '.join(GOLDS)}, not {self.gold!r}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


def alarm_config_of(cfg: Any) -> AlarmConfig:
    """The AlarmConfig of a PPOConfig / AltConfig (their ``alarm_*`` fields)."""
    return AlarmConfig(every=cfg.alarm_every, prompts=cfg.alarm_prompts, patience=cfg.alarm_patience,
                       tolerance=cfg.alarm_tolerance, stop=cfg.alarm_stop, gold=cfg.alarm_gold)


def validate_alarm_fields(cfg: Any) -> None:
    """Raise ValueError on bad ``alarm_*`` fields (called from the config dataclasses' ``__post_init__``)."""
    alarm_config_of(cfg)


def answer_key_gold(subject: str, n: int, seed: int = 0) -> tuple[list[str], RewardFn]:
    """Held-out corpus questions of ``subject`` (never trained on) and a 1/0 answer-key score for replies to them."""
    from rlhf.corpus import check_answer, eval_prompts

    items = eval_prompts(subject, n, seed)
    keys = {it.question: it.key for it in items}

    def gold(subjects: list[str], prompts: list[Any], responses: list[str]) -> list[float]:
        out = []
        for s, prompt, response in zip(subjects, prompts, responses, strict=True):
            question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            out.append(1.0 if check_answer(s, keys[question], response) else 0.0)
        return out

    return [it.question for it in items], gold


def gold_signal(subject: str, cfg: AlarmConfig, seed: int, *, prompts: Sequence[Any] | None = None,
                gold_fn: RewardFn | None = None, gold_reward_model_path: Any = None) -> tuple[str, list[Any], RewardFn]:
    """(name, held-out prompts, gold scorer): an explicit ``gold_fn``, a second reward model, else the answer key.

    The alarm's prompts are drawn with ``seed + 1`` so they are not simply the gate's first questions.
    ``cfg.gold == "reward_model"`` without a ``gold_reward_model_path`` is an error, not a silent answer key.
    """
    if gold_fn is not None:
        if not prompts:
            raise ValueError("a gold_fn needs its held-out prompts (alarm_prompts)")
        return "custom", list(prompts)[: cfg.prompts], gold_fn
    if gold_reward_model_path is not None:
        from rlhf.reward import RewardScorer

        if not prompts:
            raise ValueError("a gold reward model needs held-out prompts (alarm_prompts)")
        return "reward_model", list(prompts)[: cfg.prompts], RewardScorer(gold_reward_model_path).score
    if cfg.gold == "reward_model":
        raise ValueError("alarm_gold='reward_model' needs a gold reward model (gold_reward_model_path) and its "
                         "held-out prompts; the training pipeline trains one when a run asks for it")
    held, fn = answer_key_gold(subject, cfg.prompts, seed + 1)
    if not held:
        raise ValueError(f"{subject} has no answer-key questions: pass gold_reward_model_path for its gold signal")
    return "answer_key", held, fn


def prompt_half(prompt: str, context: str) -> str:
    """"proxy" or "gold": a stable half of the prompts (by hash), so no prompt trains both reward models."""
    digest = hashlib.sha256(f"{context}\x1f{prompt}".encode()).digest()
    return "gold" if digest[0] & 1 else "proxy"


def split_for_gold(dataset_path: Any, out_dir: Any) -> tuple[str, str, dict[str, int]]:
    """Write the snapshot's train split as two prompt-disjoint halves (each with the whole test split).

    The proxy reward model trains on one half, the gold one on the other: a policy that games what the proxy
    learnt from its pairs is judged by a model that never saw them. Returns (proxy path, gold path, row counts).
    Raises ValueError when either half has no pair (too small a snapshot for a gold reward model).
    """
    from pathlib import Path

    from datasets import DatasetDict

    from rlhf.reward import load_preference_dataset

    ds = load_preference_dataset(dataset_path)
    halves = [prompt_half(r["prompt"], r["context"]) for r in ds["train"]]
    out = Path(out_dir)
    rows = {name: [i for i, h in enumerate(halves) if h == name] for name in ("proxy", "gold")}
    counts = {name: len(idx) for name, idx in rows.items()}
    if not all(counts.values()):  # checked before anything is written
        raise ValueError(f"the snapshot's {len(halves)} train pairs fall in one half of the prompts ({counts}): a "
                         "gold reward model needs more distinct prompts (or use alarm_gold='answer_key')")
    for name, idx in rows.items():
        split = {"train": ds["train"].select(idx)}
        if "test" in ds and len(ds["test"]):  # an empty split does not survive save/load
            split["test"] = ds["test"]
        DatasetDict(split).save_to_disk(str(out / name))
    return str(out / "proxy"), str(out / "gold"), counts


def snapshot_prompts(dataset_path: Any, subject: str, split: str = "train") -> list[Any]:
    """The distinct prompts of ``subject`` in a snapshot split, each a str or (with its context) a message list."""
    import json

    from datasets import load_from_disk

    ds = load_from_disk(str(dataset_path))
    seen, prompts = set(), []
    for row in ds.get(split, []):
        if row["subject"] != subject or (row["prompt"], row["context"]) in seen:
            continue
        seen.add((row["prompt"], row["context"]))
        context = json.loads(row["context"] or "[]")
        prompts.append(context + [{"role": "user", "content": row["prompt"]}] if context else row["prompt"])
    return prompts


def held_out_prompts(dataset_path: Any, subject: str, n: int, seed: int = 0) -> list[Any]:
    """Up to ``n`` prompts of ``subject`` from the snapshot's test split (neither reward model trained on them),
    topped up with held-out corpus questions: the alarm's prompts when the gold is a second reward model."""
    import random

    from rlhf.corpus import eval_prompts

    prompts = snapshot_prompts(dataset_path, subject, "test")
    random.Random(seed).shuffle(prompts)
    if len(prompts) < n:
        prompts += [it.question for it in eval_prompts(subject, n - len(prompts), seed + 1)]
    return prompts[:n]


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A copy of the trainable (adapter) weights: what a checkpoint of a PEFT policy is."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def restore_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


@dataclass
class OveroptimisationAlarm:
    """Records proxy and gold at each check, keeps the best-by-gold weights, and decides when to stop."""

    config: AlarmConfig
    gold_name: str = "answer_key"
    checks: list[dict[str, float]] = field(default_factory=list)
    streak: int = 0
    fired: bool = False
    fired_at: int | None = None
    best_index: int = -1
    _best_state: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return self.config.enabled and not self.fired and step % self.config.every == 0

    def record(self, step: int, proxy: float, gold: float, model=None) -> bool:
        """Add one check (``model``: its adapter weights are kept when this is the best by gold). True: stop now."""
        prev = self.checks[-1] if self.checks else None
        best_gold = self.checks[self.best_index]["gold"] if self.best_index >= 0 else None
        diverging = bool(prev is not None and best_gold is not None and proxy > prev["proxy"]
                         and gold < best_gold - self.config.tolerance)
        self.streak = self.streak + 1 if diverging else 0
        row = {"step": step, "proxy": float(proxy), "gold": float(gold), "diverging": diverging}
        if model is not None:
            state = adapter_state(model)
            row["weights"] = state_digest(state)
        self.checks.append(row)
        if best_gold is None or gold > best_gold:  # ties keep the earlier (less optimised) checkpoint
            self.best_index = len(self.checks) - 1
            if model is not None:
                self._best_state = state
        if self.streak >= self.config.patience and not self.fired:
            self.fired, self.fired_at = True, step
            return self.config.stop
        return False

    def restore_best(self, model) -> bool:
        """Put the best-by-gold weights back (when the alarm fired and stops); True when weights changed."""
        if not (self.fired and self.config.stop) or self._best_state is None:
            return False
        restore_adapter_state(model, self._best_state)
        return True

    def summary(self) -> dict[str, Any]:
        best = self.checks[self.best_index] if self.best_index >= 0 else None
        return {
            "enabled": self.config.enabled, "gold": self.gold_name, "every": self.config.every,
            "patience": self.config.patience, "fired": self.fired, "fired_at_step": self.fired_at,
            "stopped_early": self.fired and self.config.stop,
            "best_step": best["step"] if best else None, "best_gold": best["gold"] if best else None,
            "best_weights": best.get("weights") if best else None,
            "kept": "best_by_gold" if self.fired and self.config.stop else "last",
            "checks": list(self.checks),
        }


def measure(model, tokenizer, subject: str, prompts: Sequence[Any], proxy: RewardFn, gold: RewardFn,
            max_new_tokens: int, seed: int) -> tuple[float, float]:
    """Greedy answers to the held-out prompts, scored by the proxy and by the gold signal (means)."""
    from rlhf.ppo import evaluate_policy

    gold_scores: list[float] = []

    def both(subjects: list[str], ps: list[Any], texts: list[str]) -> list[float]:
        gold_scores.extend(float(g) for g in gold(subjects, ps, texts))
        return proxy(subjects, ps, texts)

    proxy_mean = evaluate_policy(model, tokenizer, subject, prompts, both, max_new_tokens, seed=seed)["reward"]
    return proxy_mean, sum(gold_scores) / max(len(gold_scores), 1)

"""PPO for a causal LM with one PEFT adapter per subject — our own, because TRL removed its PPOTrainer.

Reads top to bottom, in the CleanRL / "The N Implementation Details of RLHF with PPO" style:

1. policy    = frozen base + the subject's trainable adapter (loaded from version N);
   reference = a frozen copy of the starting adapter (``reference="adapter"``, the InstructGPT choice: the KL
   penalty keeps the new version close to the version it starts from) or the same model with the adapter
   disabled (``reference="base"``); either way the base is in memory once. Critic = a small value head on
   the policy's last hidden state.
2. rollout: sample a response per prompt, cut it after the first EOS, score prompt+response with the
   reward model (or a reward function), optionally penalise a missing EOS.
3. per-token reward = -kl_coef * (logp_policy - logp_ref), plus the score on the last response token.
4. GAE advantages and returns, advantages whitened over the batch.
5. a few PPO epochs over shuffled minibatches: clipped policy loss + clipped value loss, gradient clipping.
6. (optional) adaptive KL coefficient (Ziegler et al. 2019).

Helpers (``kl_per_token``, ``whiten``, ``compute_gae``, ``clipped_policy_loss``, ``clipped_value_loss``,
``masked_mean``) are small pure functions so they can be tested against hand-computed numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

RewardFn = Callable[[list[str], list[Any], list[str]], list[float]]
"""``reward_fn(subjects, prompts_or_messages, responses) -> scores`` — same shape as ``RewardScorer.score``."""


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """PPO hyper-parameters. Defaults are sized for the demo model on 2 CPU cores (seconds a step).

    GPU + ``bigscience/bloomz-560m`` (LoRA r=16): ``steps=200, batch_size=64, mini_batch_size=16,
    ppo_epochs=4, learning_rate=1e-4, value_learning_rate=1e-4, max_new_tokens=128, kl_coef=0.05,
    adaptive_kl=True, target_kl=6.0, missing_eos_penalty=1.0, bf16 autocast`` — see docs/ppo.md.
    """

    steps: int = 40  # rollout + update iterations
    batch_size: int = 16  # responses per rollout (batch_size / samples_per_prompt distinct prompts)
    # Responses sampled per prompt. With k > 1 each score becomes its margin over the mean of the prompt's other
    # k - 1 responses (a leave-one-out baseline, as in RLOO): a Bradley-Terry reward model only ranks replies
    # *to the same prompt* and its level differs from prompt to prompt, noise the critic cannot learn from a few
    # hundred rollouts. Measured on the demo model (500 simulated-labeler pairs, mathematics): k=1 lost answer-key
    # accuracy in 6 of 9 runs (seeds x learning rates), k=4 in 0 of 3 (docs/ppo.md).
    samples_per_prompt: int = 4
    mini_batch_size: int = 8
    ppo_epochs: int = 2
    # adapter (LoRA) learning rate. At 2e-3 the demo model forgot answers (history accuracy 0.69 -> 0.34); at 5e-4
    # (20 steps) language lost accuracy in its copying; 2e-4 x 40 steps lost the least (docs/ppo.md)
    learning_rate: float = 2e-4
    value_learning_rate: float = 2e-3
    max_new_tokens: int = 32
    # sampling temperature; logprobs use the same temperature (N-details #23). 0.7: the chat's (TUTOR_CHAT_TEMPERATURE),
    # so PPO improves the answers students get; at 1.0 the demo model's rollouts are mostly noise the reward
    # model cannot judge, and held-out accuracy fell (docs/ppo.md)
    temperature: float = 0.7
    # beta: weight of the per-token KL penalty against the reference. 0.3 on the demo model: at 0.05 PPO traded
    # answer-key accuracy for the reward model's format preference (history 0.45 -> 0.31)
    kl_coef: float = 0.3
    # "adapter": KL to a frozen copy of the starting version (v_N). "base": KL to the base with the adapter disabled,
    # which pulls every round back toward the base: on the demo model it undid v1's SFT (history accuracy
    # 0.45 -> 0.31-0.39, KL to the base 7.1 -> 0.5-3.6 nats in 20 steps; docs/ppo.md)
    reference: str = "adapter"
    adaptive_kl: bool = False
    target_kl: float = 6.0  # target sequence KL (nats) for the adaptive controller
    kl_horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None  # subtracted from the score of a response without EOS
    eval_samples: int = 0  # held-out evaluation: 0 = greedy answers, k = k sampled answers per prompt (fixed seed)
    seed: int = 0
    # The over-optimisation alarm (rlhf/overopt.py): every `alarm_every` steps, greedy answers to `alarm_prompts`
    # held-out prompts are scored by the reward model (the proxy) and by a gold signal PPO never trains on (the
    # answer key, or a second reward model); after `alarm_patience` checks in a row where the proxy rose while
    # gold sat below its best (minus `alarm_tolerance`), training stops and keeps the best-by-gold weights
    # (`alarm_stop`; False only flags). 0 = off.
    alarm_every: int = 0
    alarm_prompts: int = 16
    alarm_patience: int = 2
    alarm_tolerance: float = 0.0
    alarm_stop: bool = True
    alarm_gold: str = "answer_key"  # or "reward_model": a second RM on the snapshot's other half (rlhf/overopt.py)

    def __post_init__(self) -> None:
        from rlhf.overopt import validate_alarm_fields

        validate_alarm_fields(self)
        if self.learning_rate <= 0 or self.value_learning_rate <= 0 or self.kl_coef < 0:
            raise ValueError("learning_rate and value_learning_rate must be > 0, kl_coef >= 0")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})")
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt "
                             f"({self.samples_per_prompt}), which must be >= 1")
        for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.reference not in ("adapter", "base"):
            raise ValueError(f"reference must be 'adapter' or 'base', got {self.reference!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PPOConfig fields: {sorted(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------------------------
# Pure maths (unit-tested against hand-computed examples)
# ----------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (padding after EOS does not count)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise to unit variance over the masked positions (unbiased variance); zero outside the mask."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp_min(1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k1 estimator log pi(a|s) - log pi_ref(a|s) of the sampled tokens (exactly 0 when pi == pi_ref)."""
    return logprobs - ref_logprobs


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns ``(advantages, returns)``.

    ``rewards``, ``values``, ``mask``: (batch, T). Positions where ``mask`` is 0 (after EOS) are terminal:
    their value and reward are treated as 0, so the bootstrap stops at the last real token.
    """
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip surrogate ``max(-A r, -A clip(r, 1-eps, 1+eps))``; returns ``(loss, clip_fraction, approx_kl)``."""
    ratio = torch.exp(logprobs - old_logprobs)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_fraction = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2)``; returns ``(loss, clip_fraction)``."""
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_fraction = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clip_fraction


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical distribution given by ``logits`` (..., vocab)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits`` (batch, T, vocab) for ``tokens`` (batch, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def response_mask_after_eos(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real response tokens (up to and including the first EOS) and whether each row has an EOS."""
    is_eos = responses == eos_token_id
    has_eos = is_eos.any(dim=1)
    # position of the first EOS, or T when none
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, responses.shape[1], dtype=torch.long))
    positions = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
    return (positions <= first.unsqueeze(1)).long(), has_eos


class AdaptiveKLController:
    """Ziegler et al. (2019): move the KL coefficient so the observed sequence KL tracks ``target``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class ValueHead(nn.Module):
    """The critic: a small scalar head on the policy's last hidden state (zero-initialised output)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float()).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Model plumbing
# ----------------------------------------------------------------------------------------------------------------


def _is_prompt_learning(model) -> bool:
    cfg = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return bool(getattr(cfg, "is_prompt_learning", False)) and not getattr(model, "_adapters_disabled", False)


def _virtual_tokens(model) -> int:
    """Soft-prompt adapters prepend virtual tokens to the logits; LoRA adds none."""
    cfg = model.peft_config[model.active_adapter]
    return int(cfg.num_virtual_tokens) if getattr(cfg, "is_prompt_learning", False) else 0


def forward_response(
    model, value_head: ValueHead | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    prompt_len: int, temperature: float, skip: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs of the response tokens (positions ``prompt_len:``), their values and entropies.

    The logits at position ``t-1`` predict token ``t``; they are divided by the sampling temperature so the
    log-probs are those of the distribution the tokens were sampled from. ``skip``: virtual tokens to drop.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=value_head is not None,
                use_cache=False)
    logits = out.logits[:, skip:][:, prompt_len - 1 : -1].float() / temperature
    responses = input_ids[:, prompt_len:]
    logprobs = logprobs_from_logits(logits, responses)
    entropy = entropy_from_logits(logits)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, skip:][:, prompt_len - 1 : -1]
        values = value_head(hidden)
    return logprobs, values, entropy


def frozen_weights_digest(model) -> str:
    """SHA-256 over every frozen (base) parameter: PPO must leave it unchanged."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _sha_or_none(path: str | Path | None) -> str | None:
    from rlhf.manifest import ArtifactError, artifact_sha256

    if path is None or not Path(path).is_dir():
        return None
    try:
        return artifact_sha256(path)
    except ArtifactError:
        return None


def _prompt_texts(tokenizer, subject: str, prompts: Sequence[Any]) -> list[str]:
    from rlhf.chat import build_prompt

    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        out.append(build_prompt(tokenizer, subject, messages))
    return out


@torch.no_grad()
def generate(
    model, tokenizer, prompt_texts: Sequence[str], max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded batch generation; returns ``(sequences, prompt_attention_mask, prompt_len)``.

    Sampling is pure (top_k=0, top_p=1): PPO's log-probs must be those of the sampling distribution.
    """
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer(list(prompt_texts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    kwargs: dict[str, Any] = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    if _is_prompt_learning(model):
        kwargs["use_cache"] = False  # PEFT soft prompts + BLOOM's alibi break with the KV cache in generate()
    seq = model.generate(
        **enc, max_new_tokens=max_new_tokens, min_new_tokens=1, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, **kwargs,
    )
    prompt_len = enc["input_ids"].shape[1]
    # generate() may stop early when every row hit EOS; pad to a fixed width for simple batching
    if seq.shape[1] < prompt_len + max_new_tokens:
        pad = torch.full((seq.shape[0], prompt_len + max_new_tokens - seq.shape[1]), tokenizer.pad_token_id,
                         dtype=seq.dtype, device=seq.device)
        seq = torch.cat([seq, pad], dim=1)
    return seq, enc["attention_mask"], prompt_len


def decode_responses(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response text up to (not including) EOS."""
    return [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(responses, mask, strict=True)]


@torch.no_grad()
def evaluate_policy(
    model, tokenizer, subject: str, prompts: Sequence[Any], reward_fn: RewardFn, max_new_tokens: int,
    batch_size: int = 32, samples: int = 0, temperature: float = 1.0, seed: int = 0,
) -> dict[str, float]:
    """Mean reward on held-out prompts: greedy answers (``samples=0``), or ``samples`` sampled answers per
    prompt drawn with a fixed seed (the same random numbers before and after training, so the comparison
    measures the policy and not the dice)."""
    model.eval()
    scores: list[float] = []
    eos_hits = 0
    rows = [p for p in prompts for _ in range(max(samples, 1))]
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            seq, _, plen = generate(model, tokenizer, _prompt_texts(tokenizer, subject, chunk), max_new_tokens,
                                    temperature, greedy=samples == 0)
            mask, has_eos = response_mask_after_eos(seq[:, plen:], tokenizer.eos_token_id)
            texts = decode_responses(tokenizer, seq[:, plen:], mask * (seq[:, plen:] != tokenizer.eos_token_id))
            scores.extend(float(s) for s in reward_fn([subject] * len(chunk), chunk, texts))
            eos_hits += int(has_eos.sum())
    finally:
        torch.random.set_rng_state(rng_state)
    return {"reward": sum(scores) / max(len(scores), 1), "eos_rate": eos_hits / max(len(scores), 1)}


def _reward_fn_for(reward_model_path: str | Path | None, reward_fn: RewardFn | None) -> RewardFn:
    if reward_fn is not None:
        return reward_fn
    if reward_model_path is None:
        raise ValueError("PPO needs a reward: pass reward_model_path (a reward_model artefact) or reward_fn")
    from rlhf.reward import RewardScorer

    return RewardScorer(reward_model_path).score


REFERENCE_ADAPTER = "reference"


@contextmanager
def reference_policy(model) -> Iterator[None]:
    """Run the reference policy inside: the frozen ``reference`` adapter when loaded, else the adapter disabled.

    PEFT's ``set_adapter`` also flips which adapter is trainable; every ``requires_grad`` is put back after.
    """
    if REFERENCE_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(active)
        for p, flag in grads:
            p.requires_grad_(flag)


def load_policy(base_path: str | Path, adapter_path: str | Path):
    """Frozen base + the subject adapter (verified) loaded as trainable; one copy of the base in memory."""
    from rlhf.adapters import load_policy as wrap_adapter
    from rlhf.models import load_base

    base, tokenizer = load_base(str(base_path))
    for p in base.parameters():
        p.requires_grad_(False)
    peft_type = json.loads(Path(adapter_path, "adapter_config.json").read_text()).get("peft_type", "")
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        # PEFT refuses to load a prompt-learning adapter as trainable; load it, then unfreeze the soft prompt
        model = wrap_adapter(base, adapter_path, trainable=False)
        for name, p in model.named_parameters():
            if "prompt_encoder" in name:
                p.requires_grad_(True)
    else:
        model = wrap_adapter(base, adapter_path, trainable=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_adapter_version(
    model, out_dir: Path, *, base_path: str | Path, adapter_path: str | Path, parent_manifest: dict[str, Any],
    subject: str, config: dict[str, Any], metrics: dict[str, Any], reward_model_path: str | Path | None,
    dataset_sha256: str | None = None, overwrite: bool = False,
) -> Path:
    """Write the trained adapter as the next version's verified artefact (parent = the input adapter)."""
    import re

    from rlhf.manifest import write_artifact
    from rlhf.models import base_fingerprint, base_model_id

    match = re.fullmatch(r"v(\d+)", out_dir.name)
    version = int(match.group(1)) if match else int(parent_manifest.get("version") or 0) + 1
    method = parent_manifest.get("method", "lora")

    def populate(tmp: Path) -> None:
        model.save_pretrained(str(tmp), selected_adapters=["default"])
        (tmp / "adapter_meta.json").write_text(json.dumps({"subject": subject, "version": version, "method": method},
                                                          indent=2))

    return write_artifact(
        out_dir,
        "adapter",
        populate,
        base_model=parent_manifest.get("base_model") or base_model_id(str(base_path)),
        base_model_sha256=parent_manifest.get("base_model_sha256") or base_fingerprint(base_path),
        parent=_sha_or_none(adapter_path) or str(adapter_path),
        dataset_sha256=dataset_sha256,
        config=config,
        metrics=metrics,
        extra={
            "subject": subject,
            "version": version,
            "method": method,
            "parent_path": str(adapter_path),
            "parent_version": parent_manifest.get("version"),
            "reward_model": str(reward_model_path) if reward_model_path else None,
            "reward_model_sha256": _sha_or_none(reward_model_path),
        },
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------


def train_ppo(
    base_path: str | Path,
    adapter_path: str | Path,
    reward_model_path: str | Path | None,
    prompts: Sequence[Any],
    out_dir: str | Path,
    config: PPOConfig | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    *,
    subject: str | None = None,
    reward_fn: RewardFn | None = None,
    eval_prompts: Sequence[Any] | None = None,
    overwrite: bool = False,
    alarm_prompts: Sequence[Any] | None = None,
    gold_fn: RewardFn | None = None,
    gold_reward_model_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run PPO on one subject's adapter and save the new adapter version as a verified artefact.

    ``prompts``: user messages (str) or message lists for that subject. ``reward_fn`` (optional) replaces
    the reward model, e.g. an answer-key check. ``eval_prompts``: held-out prompts scored greedily before
    and after training (``eval_reward_before`` / ``eval_reward_after`` in the metrics).
    Raising ``rlhf.callbacks.Cancelled`` from ``callback`` stops between steps and writes nothing.
    With ``cfg.alarm_every`` the over-optimisation alarm watches held-out answers (rlhf/overopt.py): its gold
    signal is ``gold_fn`` on ``alarm_prompts``, a second reward model (``gold_reward_model_path``) on
    ``alarm_prompts``, or by default the subject's answer key on held-out corpus questions.
    """
    from rlhf import SUBJECTS
    from rlhf.callbacks import emit
    from rlhf.manifest import read_manifest
    from rlhf.overopt import OveroptimisationAlarm, alarm_config_of, gold_signal, measure

    cfg = config or PPOConfig()
    out_dir = Path(out_dir)
    # -- validate everything before loading a model ------------------------------------------------------------
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"artefact already exists: {out_dir}")
    if not Path(adapter_path).is_dir():
        raise FileNotFoundError(f"adapter not found: {adapter_path}")
    if reward_fn is None and reward_model_path is not None and not Path(reward_model_path).is_dir():
        raise FileNotFoundError(f"reward model not found: {reward_model_path}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    parent_manifest = read_manifest(adapter_path)
    subject = subject or parent_manifest.get("subject")
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; pass subject= one of {', '.join(SUBJECTS)}")
    score = _reward_fn_for(reward_model_path, reward_fn)
    alarm_cfg = alarm_config_of(cfg)
    if alarm_cfg.enabled:
        gold_name, alarm_held, gold = gold_signal(subject, alarm_cfg, cfg.seed, prompts=alarm_prompts,
                                                  gold_fn=gold_fn, gold_reward_model_path=gold_reward_model_path)

    # -- 1. policy (base + trainable adapter), reference (adapter disabled), critic ---------------------------------
    rng = random.Random(cfg.seed)  # prompt order; torch's generator drives sampling
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy(base_path, adapter_path)
    if cfg.reference == "adapter":  # a frozen second copy of v_N, next to the trainable one
        model.load_adapter(str(adapter_path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    device = next(model.parameters()).device
    model.eval()  # no dropout anywhere: the logprobs of rollout and update must agree (N-details #2)
    skip = _virtual_tokens(model)
    ref_skip = skip if cfg.reference == "adapter" else 0  # a prompt-tuning reference adds its virtual tokens too
    value_head = ValueHead(model.get_base_model().config.hidden_size).to(device)
    adapter_params = [p for p in model.parameters() if p.requires_grad]
    if not adapter_params:
        raise ValueError(f"{adapter_path}: the adapter has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [{"params": adapter_params, "lr": cfg.learning_rate},
         {"params": list(value_head.parameters()), "lr": cfg.value_learning_rate}], eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl else None
    kl_coef = cfg.kl_coef
    eos_id = tokenizer.eos_token_id
    base_digest = frozen_weights_digest(model)

    metrics: dict[str, Any] = {"subject": subject}
    if eval_prompts:
        before = evaluate_policy(model, tokenizer, subject, eval_prompts, score, cfg.max_new_tokens,
                                 samples=cfg.eval_samples, temperature=cfg.temperature, seed=cfg.seed)
        metrics.update(eval_reward_before=before["reward"], eval_eos_rate_before=before["eos_rate"])
    alarm = OveroptimisationAlarm(alarm_cfg, gold_name) if alarm_cfg.enabled else None
    first_check: dict[str, float] = {}
    if alarm is not None:  # check 0: the starting version is a candidate for the best-by-gold checkpoint
        proxy0, gold0 = measure(model, tokenizer, subject, alarm_held, score, gold, cfg.max_new_tokens, cfg.seed)
        alarm.record(0, proxy0, gold0, model)
        first_check = {"proxy_reward": proxy0, "gold_score": gold0}
    emit(callback, 0, cfg.steps, "ppo: starting", {**metrics, **first_check})

    order: list[int] = []
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        # -- 2. rollout: sample responses from the policy and score them -----------------------------------------
        batch = []
        k = cfg.samples_per_prompt
        for _ in range(cfg.batch_size // k):
            if not order:
                order = rng.sample(range(len(prompts)), len(prompts))
            batch += [prompts[order.pop()]] * k  # a group of k responses to one prompt
        with torch.no_grad():
            seq, prompt_mask, plen = generate(model, tokenizer, _prompt_texts(tokenizer, subject, batch),
                                              cfg.max_new_tokens, cfg.temperature)
            responses = seq[:, plen:]
            mask, has_eos = response_mask_after_eos(responses, eos_id)
            responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
            seq = torch.cat([seq[:, :plen], responses], dim=1)
            attn = torch.cat([prompt_mask, mask], dim=1)
            logprobs, values, _ = forward_response(model, value_head, seq, attn, plen, cfg.temperature, skip)
            with reference_policy(model):
                ref_logprobs, _, _ = forward_response(model, None, seq, attn, plen, cfg.temperature, ref_skip)
            texts = decode_responses(tokenizer, responses, mask * (responses != eos_id))
            scores = torch.tensor([float(s) for s in score([subject] * len(batch), batch, texts)], device=device)
            if cfg.missing_eos_penalty is not None:
                scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
            raw_scores = scores
            if k > 1:  # margin over the leave-one-out mean of the same prompt's responses
                groups = scores.view(-1, k)
                scores = (groups - (groups.sum(1, keepdim=True) - groups) / (k - 1)).reshape(-1)

            # -- 3. per-token rewards: KL penalty everywhere, the score on the last real token ----------------------
            kl = kl_per_token(logprobs, ref_logprobs) * mask
            rewards = -kl_coef * kl
            last = mask.sum(1) - 1
            rewards[torch.arange(len(batch), device=device), last] += scores
            if cfg.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)

            # -- 4. advantages ------------------------------------------------------------------------------------
            advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask)

        # -- 5. PPO epochs over minibatches ---------------------------------------------------------------------------
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "clip_fraction",
                                                          "value_clip_fraction", "approx_kl")}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(batch), device=device)
            for i in range(0, len(batch), cfg.mini_batch_size):
                idx = perm[i : i + cfg.mini_batch_size]
                new_logprobs, new_values, entropy = forward_response(
                    model, value_head, seq[idx], attn[idx], plen, cfg.temperature, skip)
                m = mask[idx]
                pg_loss, clipfrac, approx_kl = clipped_policy_loss(
                    new_logprobs, logprobs[idx], advantages[idx], m, cfg.cliprange)
                vf_loss, vf_clipfrac = clipped_value_loss(new_values, values[idx], returns[idx], m, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(adapter_params + list(value_head.parameters()), cfg.max_grad_norm)
                optimizer.step()
                for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", masked_mean(entropy, m)),
                             ("clip_fraction", clipfrac), ("value_clip_fraction", vf_clipfrac), ("approx_kl", approx_kl)):
                    stats[k].append(float(v.detach()))

        # -- 6. bookkeeping, adaptive KL, progress (the caller may cancel here) ---------------------------------
        seq_kl = float(kl.sum(1).mean())
        if kl_ctl is not None:
            kl_ctl.update(seq_kl, cfg.batch_size)
            kl_coef = kl_ctl.value
        row = {
            "step": step,
            "reward": float(raw_scores.mean()),
            "kl": seq_kl,
            "kl_coef": kl_coef,
            "response_length": float(mask.sum(1).float().mean()),
            "eos_rate": float(has_eos.float().mean()),
            **{k: sum(v) / len(v) for k, v in stats.items()},
        }
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"PPO diverged at step {step}: {row}")
        stop = False
        if alarm is not None and alarm.due(step):  # proxy and gold on the same held-out answers
            proxy_now, gold_now = measure(model, tokenizer, subject, alarm_held, score, gold, cfg.max_new_tokens,
                                          cfg.seed)
            row.update(proxy_reward=proxy_now, gold_score=gold_now)
            stop = alarm.record(step, proxy_now, gold_now, model)
        history.append(row)
        emit(callback, step, cfg.steps, f"ppo step {step}/{cfg.steps}", {k: v for k, v in row.items() if k != "step"})
        if stop:
            break

    metrics["train_seconds"] = round(time.perf_counter() - start, 3)
    if frozen_weights_digest(model) != base_digest:  # a bug guard: only adapter (and critic) weights may train
        raise RuntimeError("PPO changed frozen base weights; refusing to save")
    metrics["base_weights_unchanged"] = True
    metrics["history"] = history
    metrics.update({f"final_{k}": v for k, v in history[-1].items() if k != "step"})
    metrics["steps_run"] = len(history)
    if alarm is not None:
        alarm.restore_best(model)
        metrics["overoptimisation"] = summary = alarm.summary()
        if summary["fired"]:
            emit(callback, len(history), cfg.steps,
                 f"ppo: over-optimisation alarm at step {summary['fired_at_step']}: the proxy kept rising while "
                 f"{summary['gold']} fell; " + (f"stopped, keeping step {summary['best_step']} "
                                                f"(gold {summary['best_gold']:.3f})" if summary["stopped_early"]
                                                else "flagged (alarm_stop is off)"), {})
    if eval_prompts:
        after = evaluate_policy(model, tokenizer, subject, eval_prompts, score, cfg.max_new_tokens,
                                samples=cfg.eval_samples, temperature=cfg.temperature, seed=cfg.seed)
        metrics.update(eval_reward_after=after["reward"], eval_eos_rate_after=after["eos_rate"])

    # -- 7. save the new adapter version (adapter files only; the base is untouched) -----------------------------
    save_adapter_version(
        model, out_dir, base_path=base_path, adapter_path=adapter_path, parent_manifest=parent_manifest,
        subject=subject, config={"algorithm": "ppo", **cfg.to_dict()}, metrics=metrics,
        reward_model_path=reward_model_path, overwrite=overwrite,
    )
    emit(callback, cfg.steps, cfg.steps, "ppo: saved", {k: v for k, v in metrics.items() if k != "history"})
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# A checkable reward (tests, the CLI, comparisons) and the CLI: python -m rlhf ppo
# ----------------------------------------------------------------------------------------------------------------


def answer_key_reward(items: Sequence[Any]) -> RewardFn:
    """Reward 1.0 when a response passes the question's answer key (``rlhf.corpus.check_answer``), else 0.0.

    ``items``: corpus items (``.subject``, ``.question``, ``.key``); prompts are their ``.question`` strings.
    """
    from rlhf.corpus import check_answer

    keys = {it.question: it.key for it in items}

    def reward(subjects: list[str], prompts: list[Any], responses: list[str]) -> list[float]:
        out = []
        for subject, prompt, response in zip(subjects, prompts, responses, strict=True):
            question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            if question not in keys:
                raise KeyError(f"no answer key for prompt {question!r}")
            out.append(1.0 if check_answer(subject, keys[question], response) else 0.0)
        return out

    return reward


def _cli_arguments(p) -> None:
    from rlhf import SUBJECTS

    p.add_argument("--subject", choices=SUBJECTS, required=True)
    p.add_argument("--algo", choices=("ppo", "rloo", "grpo", "dpo"), default="ppo",
                   help="ppo (default, ours) or one of TRL's alternatives")
    p.add_argument("--base", default=None, help="base model id or path (default: TUTOR_BASE_MODEL or demo)")
    p.add_argument("--adapter", type=Path, default=None, help="input adapter (default: latest verified version)")
    p.add_argument("--reward-model", type=Path, default=None,
                   help="reward_model artefact (default: the newest verified one under var/models/reward)")
    p.add_argument("--reward", choices=("model", "answer-key"), default="model",
                   help="score rollouts with the reward model, or with the corpus answer key")
    p.add_argument("--dataset", type=Path, default=None, help="preference snapshot (DPO only)")
    p.add_argument("--prompts", type=int, default=256, help="training prompts from the subject's corpus")
    p.add_argument("--eval", type=int, default=32, help="held-out prompts scored before/after (0: skip)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="output adapter (default: next version)")
    p.add_argument("--config", type=Path, default=None, help="JSON file with PPOConfig (or AltConfig) fields")


def _newest_reward_model() -> Path | None:
    from rlhf.manifest import ArtifactError, verify
    from rlhf.paths import reward_models_dir

    root = reward_models_dir()
    for path in sorted(root.iterdir() if root.is_dir() else [], key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            if verify(path).get("kind") == "reward_model":
                return path
        except ArtifactError:
            continue
    return None


def _register_cli() -> None:
    from rlhf.cli import ProgressBar, command

    @command("ppo", "RLHF one subject's adapter: PPO (default) or --algo rloo|grpo|dpo", _cli_arguments)
    def cmd_ppo(args) -> int:
        from rlhf.adapters import latest_adapter, next_version_dir
        from rlhf.corpus import eval_prompts, seed_prompts
        from rlhf.models import resolve_base_path

        adapter = args.adapter or latest_adapter(args.subject)
        if adapter is None:
            raise SystemExit(f"no adapter for {args.subject}: run `python -m rlhf sft --subject {args.subject}` first")
        base = resolve_base_path(args.base)
        train_items = seed_prompts(args.subject, args.prompts)
        held = eval_prompts(args.subject, args.eval) if args.eval else []
        reward_fn = answer_key_reward([*train_items, *held]) if args.reward == "answer-key" else None
        reward_model = args.reward_model  # DPO: optional, only for the before/after evaluation
        if reward_fn is None and args.algo != "dpo":
            reward_model = args.reward_model or _newest_reward_model()
            if reward_model is None:
                raise SystemExit("no reward model: run `python -m rlhf reward-model train` or pass --reward answer-key")
        out = args.out or next_version_dir(args.subject)
        data = json.loads(args.config.read_text()) if args.config else {}
        if args.steps is not None:
            data["steps"] = args.steps
        bar = ProgressBar(f"{args.algo} {args.subject}")
        try:
            if args.algo == "ppo":
                metrics = train_ppo(base, adapter, reward_model, [it.question for it in train_items], out,
                                    PPOConfig.from_dict(data), bar, subject=args.subject, reward_fn=reward_fn,
                                    eval_prompts=[it.question for it in held] or None)
            else:
                from rlhf.alternatives import AltConfig, train_alternative

                metrics = train_alternative(
                    base, adapter, out, AltConfig.from_dict({**data, "algo": args.algo}), bar,
                    subject=args.subject, prompts=[it.question for it in train_items],
                    reward_model_path=reward_model, reward_fn=reward_fn, dataset_path=args.dataset,
                    eval_prompts=[it.question for it in held] or None)
        finally:
            bar.close()
        shown = {k: v for k, v in metrics.items() if k.startswith(("eval_", "final_reward", "final_kl"))}
        print(json.dumps(shown))
        print(f"adapter written: {out}")
        return 0


_register_cli()

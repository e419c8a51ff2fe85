"""The over-optimisation alarm: proxy vs gold on held-out answers, stop early, keep the best-by-gold weights.

Why: a reward model is a proxy; pushed too hard the policy games it. The constructed run below trains PPO on an
adversarial proxy (the share of digits in a reply, which the tiny model learns within a few steps) while the
gold signal prefers the opposite (no digits): the proxy rises as the gold falls, and the alarm must stop the run
at the configured point and save the weights of the best check by gold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.overopt import (
    AlarmConfig,
    OveroptimisationAlarm,
    gold_signal,
    held_out_prompts,
    prompt_half,
    split_for_gold,
    state_digest,
)
from rlhf.ppo import PPOConfig, train_ppo


def digit_share(subjects, prompts, responses) -> list[float]:
    return [sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses]


def no_digits(subjects, prompts, responses) -> list[float]:  # the gold: the opposite of the proxy
    return [1.0 - s for s in digit_share(subjects, prompts, responses)]


def first_firing(checks: list[dict], patience: int, tolerance: float = 0.0) -> int | None:
    """The rule, restated: the step of the first check ending `patience` diverging checks in a row."""
    streak, best = 0, None
    for i, c in enumerate(checks):
        diverging = i > 0 and c["proxy"] > checks[i - 1]["proxy"] and c["gold"] < best - tolerance
        streak = streak + 1 if diverging else 0
        best = c["gold"] if best is None else max(best, c["gold"])
        if streak >= patience:
            return c["step"]
    return None


def test_the_alarm_fires_after_patience_diverging_checks_and_remembers_the_best() -> None:
    alarm = OveroptimisationAlarm(AlarmConfig(every=1, patience=2))
    curve = [(0, 0.1, 0.50), (1, 0.2, 0.60), (2, 0.3, 0.55), (3, 0.25, 0.50), (4, 0.4, 0.45), (5, 0.5, 0.40)]
    stops = [alarm.record(step, proxy, gold) for step, proxy, gold in curve]
    # step 2 diverges, step 3 does not (the proxy fell), steps 4 and 5 diverge: fires at 5
    assert stops == [False] * 5 + [True]
    s = alarm.summary()
    assert s["fired"] and s["fired_at_step"] == 5 and s["best_step"] == 1 and s["best_gold"] == 0.60
    assert [c["diverging"] for c in s["checks"]] == [False, False, True, False, True, True]
    flag_only = OveroptimisationAlarm(AlarmConfig(every=1, patience=2, stop=False))
    assert not any(flag_only.record(step, proxy, gold) for step, proxy, gold in curve)
    assert flag_only.summary()["fired"] and flag_only.summary()["kept"] == "last"
    calm = OveroptimisationAlarm(AlarmConfig(every=1, patience=2, tolerance=0.2))
    assert not any(calm.record(step, proxy, gold) for step, proxy, gold in curve)


@pytest.mark.parametrize("bad", [{"alarm_every": -1}, {"alarm_patience": 0}, {"alarm_prompts": 0},
                                 {"alarm_tolerance": -0.1}, {"alarm_gold": "labelers"}])
def test_bad_alarm_settings_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="alarm_"):
        PPOConfig(**bad)


@pytest.mark.ml
def test_a_gamed_proxy_stops_ppo_and_keeps_the_best_by_gold_weights(
    tiny_base_path: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from rlhf.corpus import eval_prompts, seed_prompts
    from rlhf.overopt import measure
    from rlhf.ppo import load_policy

    held = [it.question for it in eval_prompts("mathematics", 8, seed=3)]
    cfg = PPOConfig(steps=12, batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=12,
                    learning_rate=1e-2, kl_coef=0.01, seed=0, alarm_every=1, alarm_prompts=8, alarm_patience=2)
    events: list[dict] = []
    metrics = train_ppo(tiny_base_path, tiny_adapters["mathematics"], None,
                        [it.question for it in seed_prompts("mathematics", 64)], tmp_path / "v2", cfg, events.append,
                        reward_fn=digit_share, gold_fn=no_digits, alarm_prompts=held)
    alarm = metrics["overoptimisation"]
    checks = alarm["checks"]
    assert alarm["gold"] == "custom" and checks[0]["step"] == 0 and len(checks) == metrics["steps_run"] + 1
    assert checks[-1]["proxy"] > checks[0]["proxy"] and checks[-1]["gold"] < max(c["gold"] for c in checks)
    # it stopped where the rule says, before the configured 12 steps
    assert alarm["fired"] and alarm["stopped_early"] and alarm["kept"] == "best_by_gold"
    assert alarm["fired_at_step"] == first_firing(checks, patience=2) == metrics["steps_run"] < cfg.steps
    assert len(metrics["history"]) == alarm["fired_at_step"]
    # both curves reached the job's metrics at every step, and the alarm said so
    assert all("proxy_reward" in e["metrics"] and "gold_score" in e["metrics"] for e in events[1:alarm["fired_at_step"] + 1])
    assert any("over-optimisation alarm" in e["message"] for e in events)
    # the saved adapter is the best check by gold: the same weights, the same gold on the held-out prompts
    best = next(c for c in checks if c["step"] == alarm["best_step"])
    assert best["gold"] == alarm["best_gold"] == max(c["gold"] for c in checks)
    model, tok = load_policy(tiny_base_path, tmp_path / "v2")
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert state_digest(state) == best["weights"] == alarm["best_weights"]
    _, gold_again = measure(model, tok, "mathematics", held, digit_share, no_digits, cfg.max_new_tokens, cfg.seed)
    assert gold_again == pytest.approx(alarm["best_gold"])
    saved = load_file(tmp_path / "v2" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


@pytest.mark.ml
def test_rloo_stops_on_the_alarm_and_keeps_the_best_by_gold_weights(
    tiny_base_path: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """The same alarm inside TRL's loop (a TrainerCallback): RLOO on the gamed proxy stops where the rule says."""
    from rlhf.alternatives import AltConfig, train_alternative
    from rlhf.corpus import eval_prompts, seed_prompts
    from rlhf.ppo import load_policy

    held = [it.question for it in eval_prompts("mathematics", 8, seed=3)]
    cfg = AltConfig(algo="rloo", steps=10, batch_size=8, num_generations=4, max_new_tokens=12, learning_rate=1e-2,
                    beta=0.01, alarm_every=1, alarm_prompts=8, alarm_patience=1)
    metrics = train_alternative(tiny_base_path, tiny_adapters["mathematics"], tmp_path / "v2", cfg, subject="mathematics",
                                prompts=[it.question for it in seed_prompts("mathematics", 32)], reward_fn=digit_share,
                                gold_fn=no_digits, alarm_prompts=held)
    alarm = metrics["overoptimisation"]
    checks = alarm["checks"]
    assert alarm["fired"] and alarm["stopped_early"], checks
    assert alarm["fired_at_step"] == first_firing(checks, patience=1) == checks[-1]["step"] < cfg.steps
    model, _ = load_policy(tiny_base_path, tmp_path / "v2")
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert state_digest(state) == alarm["best_weights"]


def test_a_gold_reward_model_needs_its_model_rather_than_silently_using_the_answer_key() -> None:
    with pytest.raises(ValueError, match="needs a gold reward model"):
        gold_signal("history", AlarmConfig(every=1, gold="reward_model"), seed=0)
    name, prompts, _ = gold_signal("history", AlarmConfig(every=1, prompts=3), seed=0)
    assert name == "answer_key" and len(prompts) == 3


def test_the_gold_split_is_prompt_disjoint_keeps_every_pair_and_the_test_split(tmp_path: Path) -> None:
    """Why: a gold model that saw the proxy's prompts would share its blind spots; no pair may be lost either."""
    from datasets import load_from_disk

    from rlhf.reward import synthetic_preference_dataset

    snap = synthetic_preference_dataset(tmp_path / "snap", n_per_subject=24, n_test_per_subject=4, seed=3)
    proxy, gold, counts = split_for_gold(snap, tmp_path / "halves")
    full, a, b = load_from_disk(str(snap)), load_from_disk(proxy), load_from_disk(gold)
    assert counts == {"proxy": len(a["train"]), "gold": len(b["train"])} and min(counts.values()) > 0
    assert len(a["train"]) + len(b["train"]) == len(full["train"])
    keys = [{(r["prompt"], r["context"]) for r in half["train"]} for half in (a, b)]
    assert not keys[0] & keys[1]
    assert a["test"]["prompt"] == b["test"]["prompt"] == full["test"]["prompt"]
    assert prompt_half("What is 2 + 2?", "[]") == prompt_half("What is 2 + 2?", "[]")  # stable across runs
    # the alarm's prompts: the test split's (never trained on by either model), topped up from held-out questions
    held = held_out_prompts(snap, "history", 10, seed=0)
    test_history = {r["prompt"] for r in full["test"] if r["subject"] == "history"}
    assert len(held) == 10 and test_history <= set(held)
    assert not set(held) & {r["prompt"] for r in full["train"]}


def test_a_snapshot_too_small_for_two_halves_is_refused(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    row = {"prompt": "Who built the pyramids?", "context": "[]", "chosen": "a", "rejected": "b", "weight": 1.0,
           "subject": "history"}
    DatasetDict({"train": Dataset.from_list([row, row]), "test": Dataset.from_list([row])}).save_to_disk(
        str(tmp_path / "snap"))
    with pytest.raises(ValueError, match="needs more distinct prompts"):
        split_for_gold(tmp_path / "snap", tmp_path / "halves")
    assert not (tmp_path / "halves").exists()

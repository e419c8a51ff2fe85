"""RLOO, GRPO and DPO through TRL's maintained trainers, as configurable alternatives to our PPO.

Same conventions as ``rlhf.ppo``: policy = frozen base + the subject's trainable adapter; the reference
is a frozen copy of the starting adapter version (``reference="adapter"``, TRL's own default for a
pretrained adapter: a second "ref" adapter). ``reference="base"`` deletes that copy so TRL's
``use_adapter(model, None)`` path — adapters disabled — is taken instead (KL to the base).

- RLOO / GRPO: prompts in, our reward model (or any reward function) as TRL's reward function.
- DPO: straight from the preference pairs (no reward model). TRL's DPO has no per-pair weights,
  so ``weight`` is ignored here (documented in docs/ppo.md).

Each saves the new adapter version as a verified artefact with the same manifest fields as PPO.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.ppo import (
    RewardFn,
    _prompt_texts,
    _reward_fn_for,
    evaluate_policy,
    load_policy,
    save_adapter_version,
)

ALGORITHMS = ("rloo", "grpo", "dpo")


@dataclass
class AltConfig:
    """Settings shared by the TRL alternatives; defaults sized for the demo model on CPU.

    GPU + BLOOM-560m: ``steps=300, learning_rate=1e-5 (DPO 5e-6), batch_size=32, num_generations=8,
    max_new_tokens=128, beta=0.05 (DPO 0.1), bf16=True``.
    """

    algo: str = "rloo"
    steps: int = 20  # optimiser steps (TRL max_steps)
    learning_rate: float = 1e-3
    batch_size: int = 8  # completions per step for RLOO/GRPO (a multiple of num_generations); pairs for DPO
    num_generations: int = 4  # completions per prompt (the RLOO/GRPO group)
    max_new_tokens: int = 32
    temperature: float = 1.0
    beta: float = 0.05  # KL coefficient (RLOO/GRPO) or DPO's beta
    reference: str = "adapter"  # "adapter": a frozen copy of the input adapter (as PPO) | "base": adapter disabled
    max_length: int = 384  # DPO: prompt + reply tokens
    bf16: bool = False
    seed: int = 0
    # the over-optimisation alarm, as PPOConfig's alarm_* fields (rlhf/overopt.py); RLOO/GRPO only
    alarm_every: int = 0
    alarm_prompts: int = 16
    alarm_patience: int = 2
    alarm_tolerance: float = 0.0
    alarm_stop: bool = True
    alarm_gold: str = "answer_key"  # or "reward_model": a second RM on the snapshot's other half (rlhf/overopt.py)

    def __post_init__(self) -> None:
        from rlhf.overopt import validate_alarm_fields

        validate_alarm_fields(self)
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; expected one of {ALGORITHMS}")
        if self.reference not in ("base", "adapter"):
            raise ValueError("reference must be 'base' or 'adapter'")
        if self.algo != "dpo" and (self.batch_size % self.num_generations or self.num_generations < 2):
            raise ValueError("batch_size must be a multiple of num_generations, and num_generations >= 2")
        if self.steps < 1 or self.learning_rate <= 0:
            raise ValueError("steps must be >= 1 and learning_rate > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AltConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AltConfig fields: {sorted(unknown)}")
        return cls(**data)


def _common_args(cfg: AltConfig, run_dir: str) -> dict[str, Any]:
    use_cuda = torch.cuda.is_available()
    return {
        "output_dir": run_dir,
        "max_steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": cfg.seed,
        "bf16": cfg.bf16 and use_cuda,
        "use_cpu": not use_cuda,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "beta": cfg.beta,
    }


def _online_trainer(cfg: AltConfig, model, tokenizer, subject: str, prompts: Sequence[Any], score: RewardFn,
                    run_dir: str, callbacks: list):
    """RLOO or GRPO over formatted prompts with ``score`` as the reward function."""
    import trl
    from datasets import Dataset

    texts = _prompt_texts(tokenizer, subject, prompts)
    dataset = Dataset.from_dict({
        "prompt": texts,
        "subject": [subject] * len(prompts),
        "raw_prompt": [p if isinstance(p, str) else json_dumps(p) for p in prompts],
    })

    def reward_model(prompts: list[str], completions: list[str], subject: list[str], raw_prompt: list[str],
                     **_: Any) -> list[float]:
        return [float(s) for s in score(list(subject), [json_loads_maybe(p) for p in raw_prompt], list(completions))]

    generation = {
        "per_device_train_batch_size": cfg.batch_size,
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "disable_dropout": True,
    }
    if cfg.algo == "rloo":
        args = trl.RLOOConfig(**_common_args(cfg, run_dir), **generation)
        cls = trl.RLOOTrainer
    else:
        args = trl.GRPOConfig(**_common_args(cfg, run_dir), **generation)
        cls = trl.GRPOTrainer
    return cls(model=model, reward_funcs=reward_model, args=args, train_dataset=dataset,
               processing_class=tokenizer, callbacks=callbacks)


def _dpo_trainer(cfg: AltConfig, model, tokenizer, dataset_path: str | Path, subject: str | None, run_dir: str,
                 callbacks: list):
    import trl

    from rlhf.reward import load_preference_dataset, to_trl_format

    ds = load_preference_dataset(dataset_path)
    train = ds["train"]
    if subject is not None:
        train = train.filter(lambda row: row["subject"] == subject)
        if len(train) == 0:
            raise ValueError(f"{dataset_path}: no training pairs for subject {subject!r}")
    train = to_trl_format(train, tokenizer, use_weights=False)
    args = trl.DPOConfig(**_common_args(cfg, run_dir), per_device_train_batch_size=cfg.batch_size,
                         max_length=cfg.max_length)
    return trl.DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                          callbacks=callbacks)


def json_dumps(value: Any) -> str:
    import json

    return json.dumps(value)


def json_loads_maybe(value: str) -> Any:
    """Raw prompts travel through the dataset as str; message lists as JSON."""
    import json

    if value.startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def train_alternative(
    base_path: str | Path,
    adapter_path: str | Path,
    out_dir: str | Path,
    config: AltConfig | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    *,
    subject: str | None = None,
    prompts: Sequence[Any] | None = None,
    reward_model_path: str | Path | None = None,
    reward_fn: RewardFn | None = None,
    dataset_path: str | Path | None = None,
    eval_prompts: Sequence[Any] | None = None,
    overwrite: bool = False,
    alarm_prompts: Sequence[Any] | None = None,
    gold_fn: RewardFn | None = None,
    gold_reward_model_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train one subject's adapter with RLOO/GRPO (``prompts`` + reward) or DPO (``dataset_path``).

    RLOO/GRPO with ``cfg.alarm_every``: the over-optimisation alarm checks held-out answers every N optimiser
    steps (proxy = the training reward, gold as in ``rlhf.ppo.train_ppo``) and stops TRL's loop when it fires.

    Returns metrics (per-step ``history`` from TRL's logs; ``eval_reward_before/after`` when ``eval_prompts``
    and a reward are given) and writes a verified ``adapter`` artefact at ``out_dir``.
    """
    from transformers import PrinterCallback, TrainerCallback

    from rlhf import SUBJECTS
    from rlhf.callbacks import ProgressBridge, emit
    from rlhf.manifest import read_manifest
    from rlhf.reward import dataset_hash

    cfg = config or AltConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"artefact already exists: {out_dir}")
    if not Path(adapter_path).is_dir():
        raise FileNotFoundError(f"adapter not found: {adapter_path}")
    parent_manifest = read_manifest(adapter_path)
    subject = subject or parent_manifest.get("subject")
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; pass subject= one of {', '.join(SUBJECTS)}")
    score: RewardFn | None = None
    if cfg.algo == "dpo":
        if dataset_path is None:
            raise ValueError("DPO trains from preference pairs: pass dataset_path")
        if reward_fn is not None or reward_model_path is not None:
            score = _reward_fn_for(reward_model_path, reward_fn)  # only for the before/after evaluation
    else:
        if not prompts:
            raise ValueError(f"{cfg.algo.upper()} needs prompts")
        score = _reward_fn_for(reward_model_path, reward_fn)

    from rlhf.overopt import OveroptimisationAlarm, alarm_config_of, gold_signal, measure

    alarm_cfg = alarm_config_of(cfg)
    alarm = None
    if alarm_cfg.enabled and cfg.algo != "dpo":
        gold_name, alarm_held, gold = gold_signal(subject, alarm_cfg, cfg.seed, prompts=alarm_prompts,
                                                  gold_fn=gold_fn, gold_reward_model_path=gold_reward_model_path)
        alarm = OveroptimisationAlarm(alarm_cfg, gold_name)

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy(base_path, adapter_path)
    metrics: dict[str, Any] = {"subject": subject, "algorithm": cfg.algo}
    if eval_prompts and score is not None:
        metrics["eval_reward_before"] = evaluate_policy(model, tokenizer, subject, eval_prompts, score,
                                                        cfg.max_new_tokens)["reward"]
    bridge = ProgressBridge(callback, cfg.algo)
    history: list[dict[str, Any]] = []

    class _Log(TrainerCallback):  # collects TRL's logged metrics as the run's history
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "train_runtime" not in logs:
                history.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                               if isinstance(v, int | float)}})

    class _Alarm(TrainerCallback):  # proxy vs gold on held-out answers; TRL's loop stops when the alarm fires
        def _check(self, step: int) -> bool:
            proxy_now, gold_now = measure(model, tokenizer, subject, alarm_held, score, gold, cfg.max_new_tokens,
                                          cfg.seed)
            stop = alarm.record(step, proxy_now, gold_now, model)
            emit(callback, step, cfg.steps, f"{cfg.algo}: alarm check at step {step}",
                 {"proxy_reward": proxy_now, "gold_score": gold_now})
            return stop

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self._check(0)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if alarm.due(state.global_step) and self._check(state.global_step):
                control.should_training_stop = True

    callbacks = [bridge, _Log()] + ([_Alarm()] if alarm is not None else [])
    with tempfile.TemporaryDirectory(prefix=f"{cfg.algo}-run-") as run_dir:
        if cfg.algo == "dpo":
            trainer = _dpo_trainer(cfg, model, tokenizer, dataset_path, subject, run_dir, callbacks)
        else:
            trainer = _online_trainer(cfg, model, tokenizer, subject, prompts, score, run_dir, callbacks)
        trainer.remove_callback(PrinterCallback)  # progress goes through our callback
        if cfg.reference == "base" and "ref" in model.peft_config:
            model.delete_adapter("ref")  # TRL then falls back to the adapter-disabled base as reference
            model.set_adapter("default")
        start = time.perf_counter()
        trainer.train()
        metrics["train_seconds"] = round(time.perf_counter() - start, 3)

    metrics["history"] = history
    if alarm is not None:
        alarm.restore_best(model)
        metrics["overoptimisation"] = summary = alarm.summary()
        if summary["fired"]:
            emit(callback, cfg.steps, cfg.steps,
                 f"{cfg.algo}: over-optimisation alarm at step {summary['fired_at_step']}: the proxy kept rising while "
                 f"{summary['gold']} fell; " + (f"stopped, keeping step {summary['best_step']}"
                                                if summary["stopped_early"] else "flagged (alarm_stop is off)"), {})
    if eval_prompts and score is not None:
        metrics["eval_reward_after"] = evaluate_policy(model, tokenizer, subject, eval_prompts, score,
                                                       cfg.max_new_tokens)["reward"]
    save_adapter_version(
        model, out_dir, base_path=base_path, adapter_path=adapter_path, parent_manifest=parent_manifest,
        subject=subject, config={"algorithm": cfg.algo, **cfg.to_dict()}, metrics=metrics,
        reward_model_path=reward_model_path,
        dataset_sha256=dataset_hash(dataset_path) if dataset_path is not None else None, overwrite=overwrite,
    )
    emit(callback, cfg.steps, cfg.steps, f"{cfg.algo}: saved", {k: v for k, v in metrics.items() if k != "history"})
    return metrics


def train_rloo(base_path, adapter_path, out_dir, config: AltConfig | None = None, callback=None, **kw) -> dict[str, Any]:
    """RLOO with our reward model (``prompts=``, ``reward_model_path=`` or ``reward_fn=``)."""
    return train_alternative(base_path, adapter_path, out_dir, dataclasses.replace(config or AltConfig(), algo="rloo"),
                             callback, **kw)


def train_grpo(base_path, adapter_path, out_dir, config: AltConfig | None = None, callback=None, **kw) -> dict[str, Any]:
    """GRPO with our reward model (``prompts=``, ``reward_model_path=`` or ``reward_fn=``)."""
    return train_alternative(base_path, adapter_path, out_dir, dataclasses.replace(config or AltConfig(), algo="grpo"),
                             callback, **kw)


def train_dpo(base_path, adapter_path, out_dir, config: AltConfig | None = None, callback=None, **kw) -> dict[str, Any]:
    """DPO straight from a preference snapshot (``dataset_path=``)."""
    cfg = config or AltConfig(beta=0.1)
    return train_alternative(base_path, adapter_path, out_dir, dataclasses.replace(cfg, algo="dpo"), callback, **kw)

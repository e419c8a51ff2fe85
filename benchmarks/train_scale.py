"""One reward-model step, one SFT step and one PPO step (rollout + update) at bloom-560m's shape, on CPU.

    .venv/bin/python benchmarks/train_scale.py [--shape bloom-560m] [--phases load,sft,ppo,ppo-base,rm,rm-gc]

Not a test. Each phase runs the project's real trainer (`rlhf.adapters.train_sft`, `rlhf.ppo.train_ppo`,
`rlhf.reward.train_reward_model`) in a fresh process on a seeded random-weight BLOOM of the shape
(`rlhf.shaped_base`; the demo tokenizer), with the smallest batch that makes one optimiser step, and
reports the wall time and the process's peak resident memory (`ru_maxrss`). The `load` phase only
loads the base: its peak is "one copy of the base", the yardstick for the others:

- SFT and PPO train a LoRA adapter (r=16 on the four BLOOM projections) on a frozen base;
- PPO's reference is a frozen second adapter (`reference="adapter"`, the default) or the adapter
  disabled (`ppo-base`); either way the base should be in memory once;
- the reward model fine-tunes the whole backbone (weights + gradients + two AdamW moments = ~4x the
  weights), with and without gradient checkpointing (`rm-gc`).

Weights are random, so losses are meaningless; only time and memory are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def shaped_base(shape_name: str, vocab: int | None = None) -> Path:
    from rlhf.demo_model import DemoRecipe, build_demo_model
    from rlhf.paths import var_dir
    from rlhf.shaped_base import BloomShape, ensure_shaped_base

    shape = replace(BloomShape.named(shape_name), init_std=0.1)
    if vocab:
        shape = replace(shape, vocab_size=vocab)
    return ensure_shaped_base(shape, build_demo_model(DemoRecipe.tiny()), var_dir() / "models" / "base")


def phase(name: str, base: Path, work: Path, threads: int) -> dict:
    """Run one phase in this process; returns its seconds (without the base load where it can tell)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out: dict = {}
    if name == "load":
        from rlhf.models import load_base

        model, _ = load_base(base, device="cpu")
        out["parameters"] = sum(p.numel() for p in model.parameters())
        with torch.inference_mode():  # touch every weight: safetensors pages are mapped lazily
            model(torch.tensor([[1, 2, 3]]))
    elif name == "sft":
        from rlhf.adapters import AdapterConfig, train_sft

        cfg = AdapterConfig(r=16, alpha=32, target_modules=TARGETS, n_examples=2, steps=1, batch_size=2,
                            max_length=64, threads=threads, logging_steps=1)
        train_sft(base, "history", work / "history" / "v1", cfg)
    elif name in ("ppo", "ppo-base"):
        from rlhf.corpus import seed_prompts
        from rlhf.ppo import PPOConfig, train_ppo

        cfg = PPOConfig(steps=1, batch_size=2, mini_batch_size=2, samples_per_prompt=2, ppo_epochs=1,
                        max_new_tokens=8, reference="adapter" if name == "ppo" else "base")
        metrics = train_ppo(base, work / "history" / "v1", None, [it.question for it in seed_prompts("history", 4)],
                            work / "history" / f"v2-{name}", cfg, subject="history",
                            reward_fn=lambda subjects, prompts, responses: [float(len(r) % 7) for r in responses])
        out["base_weights_unchanged"] = metrics.get("base_weights_unchanged")
    elif name in ("rm", "rm-gc"):
        from rlhf.reward import RewardConfig, synthetic_preference_dataset, train_reward_model

        ds = synthetic_preference_dataset(work / f"ds-{name}", n_per_subject=2, n_test_per_subject=1,
                                          subjects=["history"], wrong="other_subject")
        cfg = RewardConfig(epochs=1, batch_size=2, eval_batch_size=2, max_length=64, logging_steps=1,
                           gradient_checkpointing=name == "rm-gc")
        train_reward_model(ds, work / f"rm-{name}", cfg, base_model=str(base))
    else:
        raise SystemExit(f"unknown phase {name!r}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    from tqdm import tqdm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="bloom-560m", help="bloom-560m or bloom-560m-L<layers>")
    p.add_argument("--phases", default="load,sft,ppo,ppo-base,rm,rm-gc")
    p.add_argument("--vocab", type=int, default=None, help="override the vocabulary size (smoke runs)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    base = shaped_base(a.shape, a.vocab)
    size_mib = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    print(f"base: {base.name} ({a.shape}, random weights, fp32 weights file {size_mib:.0f} MiB), "
          f"{a.threads} threads, load average {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-scale-") as work:
        for name in tqdm(a.phases.split(","), desc="phases", file=sys.stderr):
            proc = subprocess.run([sys.executable, __file__, "--phase", name, str(base), work, str(a.threads)],
                                  cwd=REPO_ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: FAILED\n{proc.stderr[-3000:]}")
                rows.append((name, None))
                continue
            rows.append((name, json.loads(proc.stdout.strip().splitlines()[-1])))
    load = next((r for n, r in rows if n == "load" and r), None)
    print("\n| phase | wall s (incl. loading the base) | peak RSS MiB | peak RSS / one loaded base |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows:
        if r is None:
            print(f"| {name} | failed | | |")
            continue
        rel = f"{r['peak_rss_mib'] / load['peak_rss_mib']:.2f}x" if load else "–"
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {rel} |")
    print(json.dumps(dict(rows)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        result = phase(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(result))
    else:
        main()

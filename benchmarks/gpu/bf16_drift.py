"""Is a bf16 divergence from `generate` ours, or bf16's? Both paths in bf16 against an fp32 reference.

    python benchmarks/gpu/bf16_drift.py [--device cuda] [--new-tokens 16]

At bloom-560m's shape with random weights the top logits are close, so bf16 rounding alone can flip a
greedy token. For each case this prints where `generate` in bf16 and the endpoint's runner in bf16 first
leave the fp32 `generate` tokens, and the fp32 gap between the two best first-token logits: if our runner
leaves fp32 no earlier than `generate` does, the bf16 difference is the format's, not the runner's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def first_diff(a: list[int], b: list[int]) -> int | None:
    return next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def main() -> int:
    from rlhf.demo_model import DemoRecipe, build_demo_model
    from rlhf.models import load_base
    from rlhf.paths import var_dir
    from rlhf.shaped_base import ensure_shaped_base
    from serving.engine import BloomRunner
    from tests.serving.test_engine_scale import (
        SLOW_LORA_STD,
        SLOW_SHAPE,
        make_adapters,
        prompts_of,
        reference_greedy,
        runner_greedy,
    )

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--new-tokens", type=int, default=16)
    a = p.parse_args()
    base = ensure_shaped_base(SLOW_SHAPE, build_demo_model(DemoRecipe.tiny()), var_dir() / "models" / "base")
    slot_of = {"base": 0, "lora_wide": 1, "lora_attn": 2, "prompt": 3}
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = load_base(base, device=a.device, dtype=torch.float32)
        adapters = make_adapters(model, Path(tmp), lora_std=SLOW_LORA_STD)
        cases = list(zip(prompts_of(tok, [300, 130, 40, 7]), list(slot_of), strict=True))
        ref32 = reference_greedy(model, tok, adapters, cases, a.new_tokens)
        with torch.inference_mode():  # fp32 top-2 gap of the first new token, bare base only (a cheap closeness figure)
            top2 = [torch.topk(model(torch.tensor([ids], device=a.device)).logits[0, -1].float(), 2).values for ids, _ in cases]
        del model
        model, tok = load_base(base, device=a.device, dtype=torch.bfloat16)
        ref16 = reference_greedy(model, tok, adapters, cases, a.new_tokens)
        runner = BloomRunner(model)
        for name, slot in slot_of.items():
            if name != "base":
                runner.install(slot, runner.read_adapter(adapters[name]))
        ours16 = runner_greedy(runner, [ids for ids, _ in cases], [slot_of[k] for _, k in cases], a.new_tokens)
    worse = 0
    for i, (ids, kind) in enumerate(cases):
        g, o = first_diff(ref16[i], ref32[i]), first_diff(ours16[i], ref32[i])
        gap = float(top2[i][0] - top2[i][1])
        print(f"{kind:10} {len(ids):4} tokens: generate-bf16 leaves fp32 at {g}, ours-bf16 at {o}; "
              f"fp32 top-2 gap (bare base) {gap:.4f}")
        if o is not None and (g is None or o < g):
            worse += 1
    print(f"cases where ours leaves fp32 earlier than generate does: {worse} of {len(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

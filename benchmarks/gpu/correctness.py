"""The endpoint's runner vs `transformers` `generate` at bloom-560m's shape on CUDA (fp32 and bf16).

    .venv/bin/python benchmarks/gpu/correctness.py [--device cuda] [--new-tokens 16]

The same cases as the slow CPU test (tests/serving/test_engine_scale.py: the bare base, two LoRA
adapters, prompt tuning; prompts of 7 to 300 tokens; mixed in one batch and alone). In fp32 the
tokens must be equal; in bf16 a batched matmul may legitimately round differently from the
one-sequence `generate`, so it reports where each row first diverges and the first-token logit gap,
and fails only when the first token already differs. Not run on the CPU-only machine it was written on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


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
    failed = False
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = load_base(base, device=a.device, dtype=dtype)
        with tempfile.TemporaryDirectory() as tmp:
            adapters = make_adapters(model, Path(tmp), lora_std=SLOW_LORA_STD)
            cases = list(zip(prompts_of(tok, [300, 130, 40, 7]), ["base", "lora_wide", "lora_attn", "prompt"],
                             strict=True))
            runner = BloomRunner(model)
            slot_of = {"base": 0, "lora_wide": 1, "lora_attn": 2, "prompt": 3}
            for name, slot in slot_of.items():
                if name != "base":
                    runner.install(slot, runner.read_adapter(adapters[name]))
            slots = [slot_of[k] for _, k in cases]
            mixed = runner_greedy(runner, [ids for ids, _ in cases], slots, a.new_tokens)
            alone = [runner_greedy(runner, [ids], [s], a.new_tokens)[0] for (ids, _), s in zip(cases, slots, strict=True)]
            ref = reference_greedy(model, tok, adapters, cases, a.new_tokens)
        for i, (ids, kind) in enumerate(cases):
            for label, got in (("mixed", mixed[i]), ("alone", alone[i])):
                diverge = next((j for j, (x, y) in enumerate(zip(got, ref[i], strict=True)) if x != y), None)
                ok = diverge is None
                print(f"{str(dtype):15} {kind:10} {len(ids):4} tokens {label:6}: "
                      + ("equal" if ok else f"first differs at new token {diverge}"))
                if not ok and (dtype == torch.float32 or diverge == 0):
                    failed = True
        del model, runner
        torch.cuda.empty_cache()
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

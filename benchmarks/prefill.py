"""Ragged prompts at a real model's shape: the endpoint's batched runner vs sequential `generate`.

    .venv/bin/python benchmarks/prefill.py [--shape bloom-560m] [--vocab 8192] [--new-tokens 32]

Builds a seeded random-weight BLOOM of the shape in memory (the demo tokenizer), then for two
cases, each in the same run: the runner generating every prompt together (one packed prefill, then
batched decode steps) against `transformers` `generate` once per prompt. Equal-length prompts
(8 x 20 tokens) and mixed lengths (7, 40, 130, 300 tokens): with a padded prefill the mixed case
gained nothing (every row computed 300 positions), with the packed prefill it should gain like the
equal one. Greedy tokens are checked equal to `generate`'s. `--vocab` shrinks only the embedding
(bloom-560m's 250,880 rows are 257 M of its 559 M parameters) to keep runs short on a shared CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from rlhf.demo_model import DemoRecipe, build_demo_model
    from rlhf.models import load_tokenizer
    from rlhf.shaped_base import BloomShape, build_model
    from serving.engine import BloomRunner

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="bloom-560m", help="bloom-560m or bloom-560m-L<layers>")
    p.add_argument("--vocab", type=int, default=None, help="override the vocabulary size (embedding rows)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="0: the idle cores now (rlhf.demo_model.auto_threads)")
    p.add_argument("--repeats", type=int, default=1, help="best-of timing repeats")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's top operators for a mixed prefill and a batch-8 decode step")
    a = p.parse_args()
    from rlhf.demo_model import auto_threads

    a.threads = a.threads or auto_threads()
    torch.set_num_threads(a.threads)

    tok = load_tokenizer(build_demo_model(DemoRecipe.tiny(), threads=1))
    shape = BloomShape.named(a.shape)
    if a.vocab:
        shape = replace(shape, vocab_size=a.vocab)
    shape = replace(shape, init_std=0.1)  # tokens depend on context (see tests/serving/test_engine_scale.py)
    model = build_model(shape, tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"shape {a.shape} (vocab {shape.vocab_size}): {n_params / 1e6:.0f} M parameters, fp32, {a.threads} threads, "
          f"{a.new_tokens} new tokens per prompt")
    text = "Students ask about the history of Rome, the rules of algebra and the capitals of the world. " * 40
    base_ids = tok(text)["input_ids"]
    cases = {"equal 8 x 20": [base_ids[i:i + 20] for i in range(8)],
             "mixed 7/40/130/300": [base_ids[i:i + n] for i, n in enumerate((7, 40, 130, 300))]}
    runner = BloomRunner(model)
    n = a.new_tokens

    def ours(prompts: list[list[int]]) -> list[list[int]]:
        logits, cache = runner.prefill(prompts, [0] * len(prompts), reserve=n)
        toks = logits.argmax(-1)
        out = [[t] for t in toks.tolist()]
        slots = torch.zeros(len(prompts), dtype=torch.long)
        for _ in range(n - 1):
            toks = runner.decode(toks, cache, slots).argmax(-1)
            for o, t in zip(out, toks.tolist(), strict=True):
                o.append(t)
        return out

    def naive(prompts: list[list[int]]) -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for ids in prompts:
                r = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                   pad_token_id=tok.pad_token_id)
                out.append(r[0, len(ids):].tolist())
        return out

    def timed(fn, prompts) -> tuple[float, list[list[int]]]:
        best, result = float("inf"), None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            result = fn(prompts)
            best = min(best, time.perf_counter() - t0)
        return best, result

    def prefill_only(prompts) -> float:
        t0 = time.perf_counter()
        runner.prefill(prompts, [0] * len(prompts), reserve=1)
        return time.perf_counter() - t0

    rows = []
    for name, prompts in tqdm(cases.items(), desc="cases", file=sys.stderr):
        lens = [len(x) for x in prompts]
        t_ours, got = timed(ours, prompts)
        t_naive, ref = timed(naive, prompts)
        t_pre = statistics.median(prefill_only(prompts) for _ in range(3))
        t_pre_seq = statistics.median(sum(prefill_only([x]) for x in prompts) for _ in range(3))
        rows.append((name, sum(lens), len(prompts) * max(lens), t_pre, t_pre_seq, t_ours, t_naive, got == ref))
    print()
    print("| case | real prompt tokens | padded positions (old prefill) | packed prefill | prefill one by one "
          "| ours: batch total | naive: generate each | ours/naive | tokens equal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, real, padded, pre, pre_seq, t_ours, t_naive, equal in rows:
        print(f"| {name} | {real} | {padded} | {pre:.2f} s | {pre_seq:.2f} s | {t_ours:.2f} s | {t_naive:.2f} s "
              f"| **{t_naive / t_ours:.1f}x** | {'yes' if equal else 'NO'} |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        mixed = cases["mixed 7/40/130/300"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.prefill(mixed, [0] * len(mixed), reserve=1)
        print("\nprofile: one packed prefill of 7/40/130/300 tokens")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        logits, cache = runner.prefill(cases["equal 8 x 20"], [0] * 8, reserve=n)
        toks, slots = logits.argmax(-1), torch.zeros(8, dtype=torch.long)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4):
                toks = runner.decode(toks, cache, slots).argmax(-1)
        print("profile: 4 decode steps, batch 8")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()

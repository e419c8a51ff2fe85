"""Efficiency (HELM's "efficiency" metric): generation latency and throughput on a fixed prompt set.

Why two measurements: a student waits for one reply (latency of a single request, batch 1: p50
and p95 over the prompts), while the evaluation and labeling jobs generate in batches (tokens per
second at `cfg.batch_size`). The prompts are the corpus's held-out questions, a fixed number per
subject (bundled with the project, so the suite always runs); decoding is greedy with a fixed
`max_new_tokens`, after one warm-up call. Numbers depend on the machine and its load: compare
versions measured on the same machine in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf.evals.registry import Metric, SuiteConfig, SuiteResult, register_suite

if TYPE_CHECKING:
    from rlhf.evals.lm import EvalContext


def quantile_metric(values: Sequence[float], q: float, seed: int = 0, n_resamples: int = 1000) -> Metric:
    """The q-quantile of `values` with a percentile-bootstrap 95 % interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Metric(float("nan"), None, None, 0)
    rng = np.random.default_rng(seed)
    boots = np.quantile(x[rng.integers(0, x.size, size=(n_resamples, x.size))], q, axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Metric(float(np.quantile(x, q)), float(lo), float(hi), int(x.size))


def fixed_prompts(per_subject: int, seed: int = 0) -> list[tuple[str, str]]:
    """(subject, question) pairs: `per_subject` held-out corpus questions of each subject."""
    from rlhf import SUBJECTS
    from rlhf.corpus import eval_prompts

    return [(s, it.question) for s in SUBJECTS for it in eval_prompts(s, per_subject, seed)]


@register_suite("efficiency", kind="generation",
                description="Generation speed on fixed corpus prompts: latency p50/p95 of single requests, tokens/s "
                            "single and batched (greedy, fixed max_new_tokens)",
                tags=("helm", "efficiency"))
def efficiency(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    import torch

    from rlhf.evals.data import data_hash

    per_subject = max(1, (cfg.limit or 16) // 4)
    prompts = fixed_prompts(per_subject, cfg.seed)
    max_new = cfg.max_new_tokens
    model = ctx.model
    model.generate_full([prompts[0][1]], max_new_tokens=4, subject=prompts[0][0], batch_size=1)  # warm-up

    latencies: list[float] = []
    tokens_single: list[int] = []
    for subject, question in prompts:
        t0 = time.perf_counter()
        gen = model.generate_full([question], max_new_tokens=max_new, subject=subject, batch_size=1)[0]
        latencies.append(time.perf_counter() - t0)
        tokens_single.append(gen.tokens)

    batched_seconds = 0.0
    batched_tokens = 0
    for subject in dict.fromkeys(s for s, _ in prompts):
        qs = [q for s, q in prompts if s == subject]
        t0 = time.perf_counter()
        gens = model.generate_full(qs, max_new_tokens=max_new, subject=subject, batch_size=cfg.batch_size)
        batched_seconds += time.perf_counter() - t0
        batched_tokens += sum(g.tokens for g in gens)

    per_token = [lat / max(1, t) for lat, t in zip(latencies, tokens_single, strict=True)]
    metrics = {
        "latency_p50": quantile_metric(latencies, 0.5, cfg.seed),
        "latency_p95": quantile_metric(latencies, 0.95, cfg.seed),
        "tokens_per_s": Metric(batched_tokens / batched_seconds if batched_seconds else float("nan"),
                               None, None, len(prompts)),
        "tokens_per_s_single": Metric(sum(tokens_single) / sum(latencies) if sum(latencies) else float("nan"),
                                      None, None, len(prompts)),
        "ms_per_token_p50": quantile_metric([1000 * x for x in per_token], 0.5, cfg.seed),
    }
    details: dict[str, Any] = {
        "prompts": len(prompts), "max_new_tokens": max_new, "batch_size": cfg.batch_size,
        "mean_tokens_single": float(np.mean(tokens_single)), "batched_tokens": batched_tokens,
        "batched_seconds": batched_seconds, "device": str(model.device), "torch_threads": torch.get_num_threads(),
        "units": {"latency_p50": "s", "latency_p95": "s", "tokens_per_s": "tokens/s", "ms_per_token_p50": "ms"},
    }
    return SuiteResult("efficiency", "ok", metrics, n=len(prompts),
                       data_hash=data_hash("corpus", prompts, max_new, cfg.batch_size), details=details)


__all__ = ["fixed_prompts", "quantile_metric"]

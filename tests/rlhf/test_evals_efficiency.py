"""Efficiency suite: quantiles on fixed numbers; the suite on the tiny model reports sane timings."""

from __future__ import annotations

import pytest

from rlhf.evals.efficiency import fixed_prompts, quantile_metric
from rlhf.evals.registry import SuiteConfig, run_suite


def test_quantile_metric_on_fixed_values():
    m = quantile_metric([1.0, 2.0, 3.0, 4.0, 100.0], 0.5)
    assert m.value == 3.0 and m.n == 5 and m.ci_low <= 3.0 <= m.ci_high
    assert quantile_metric([1.0, 2.0, 3.0, 4.0, 100.0], 0.95).value == pytest.approx(80.8)
    assert quantile_metric([], 0.5).n == 0


def test_fixed_prompts_are_fixed():
    assert fixed_prompts(2) == fixed_prompts(2) and len(fixed_prompts(2)) == 8


def test_efficiency_suite_on_tiny_model(tiny_base_path, tiny_adapters):
    from rlhf.evals.lm import EvalContext

    ctx = EvalContext.create(tiny_base_path, tiny_adapters["language"], seed=0)
    r = run_suite("efficiency", ctx, SuiteConfig(limit=4, batch_size=4, max_new_tokens=6))
    assert r.status == "ok", r.reason
    m = r.metrics
    assert r.n == 4 and m["latency_p50"].n == 4
    assert 0 < m["latency_p50"].value <= m["latency_p95"].value
    assert m["tokens_per_s"].value > 0 and m["tokens_per_s_single"].value > 0

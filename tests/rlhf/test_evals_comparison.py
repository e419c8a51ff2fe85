"""Comparison evaluators on the tiny fixture models: counts add up, identical adapters tie, the judge's
position swap is applied (swapping the answers negates the preference), missing inputs are "not run"."""

from __future__ import annotations

import pytest

from rlhf.evals.comparison import judge_preferences, key_outcomes, outcome_metrics, reward_outcomes
from rlhf.evals.registry import SuiteConfig, run_suite

CFG = SuiteConfig(limit=4, seed=0, batch_size=8, max_new_tokens=8)
SUITES = ("compare_reward_model", "compare_answer_key", "compare_judge")


def test_outcome_metrics_arithmetic():
    m = outcome_metrics([1, 1, 0, -1])
    assert m["win_rate"].value == pytest.approx(0.625) and m["win_rate"].n == 4
    assert (m["win"].value, m["tie"].value, m["loss"].value) == (0.5, 0.25, 0.25)
    assert m["win_rate"].ci_low <= 0.625 <= m["win_rate"].ci_high
    assert key_outcomes([True, False, True, False], [False, True, True, False]) == [1, -1, 0, 0]
    assert reward_outcomes([1.0, 0.0, 2.0], [0.5, 0.5, 1.0], ["x", "y", "z"], ["w", "v", "z"]) == [1, -1, 0]
    with pytest.raises(ValueError):
        outcome_metrics([])


@pytest.fixture(scope="module")
def reward_model(tiny_base_path, tmp_path_factory):
    from rlhf.reward import RewardConfig, synthetic_preference_dataset, train_reward_model

    root = tmp_path_factory.mktemp("rm")
    ds = synthetic_preference_dataset(root / "snapshot", n_per_subject=8, n_test_per_subject=2)
    train_reward_model(ds, root / "rm", RewardConfig(epochs=1.0, batch_size=8, seed=0), base_model=str(tiny_base_path))
    return root / "rm"


def _ctx(base, adapter, other, reward_model=None, judge=None):
    from rlhf.evals.lm import EvalContext

    return EvalContext.create(base, adapter, compare_adapter=other, reward_model=reward_model, judge=judge, seed=0)


def test_identical_adapters_tie_on_every_comparison(tiny_base_path, tiny_adapters, reward_model):
    ad = tiny_adapters["general_knowledge"]
    ctx = _ctx(tiny_base_path, ad, ad, reward_model, judge=tiny_base_path)
    for name in SUITES:
        r = run_suite(name, ctx, CFG)
        assert r.status == "ok", (name, r.reason)
        assert r.details["ties"] == r.n == 4 and r.details["wins"] == r.details["losses"] == 0, name
        assert r.metrics["win_rate"].value == 0.5


def test_counts_add_up_between_two_versions(tiny_base_path, tiny_adapters, reward_model):
    ctx = _ctx(tiny_base_path, tiny_adapters["general_knowledge"], tiny_adapters["history"], reward_model,
               judge=tiny_base_path)
    for name in SUITES:
        r = run_suite(name, ctx, CFG)
        assert r.status == "ok", (name, r.reason)
        d = r.details
        assert d["wins"] + d["ties"] + d["losses"] == d["n"] == r.n == 4, name
        assert r.metrics["win"].value + r.metrics["tie"].value + r.metrics["loss"].value == pytest.approx(1.0)
        assert r.metrics["win_rate"].value == pytest.approx((d["wins"] + d["ties"] / 2) / d["n"])
    again = run_suite("compare_judge", ctx, CFG)
    assert again.details["preferences"] == r.details["preferences"]  # deterministic


def test_judge_position_swap_is_applied(tiny_base_path):
    from rlhf.evals.lm import EvalModel

    judge = EvalModel(tiny_base_path, None, seed=0)
    qs = ["What is the capital of France?", "What is 2 + 3?"]
    a = ["The capital of France is Paris.", "2 + 3 = 5.\n#### 5"]
    b = ["The capital of France is Rome.", "2 + 3 = 6.\n#### 6"]
    ab = judge_preferences(judge, qs, a, b, batch_size=4)
    ba = judge_preferences(judge, qs, b, a, batch_size=4)
    for x, y in zip(ab, ba, strict=True):
        # each call judges both orders: its second order is the other call's first
        assert x["d_ab"] == pytest.approx(y["d_ba"], abs=1e-4) and x["d_ba"] == pytest.approx(y["d_ab"], abs=1e-4)
        assert x["preference"] == pytest.approx(-y["preference"], abs=1e-4)
        assert x["position_bias"] == pytest.approx(y["position_bias"], abs=1e-4)
        assert x["d_ab"] != x["d_ba"]  # the two orders were really scored separately
    same = judge_preferences(judge, qs[:1], a[:1], a[:1])
    assert same[0]["preference"] == 0.0 and same[0]["outcome"] == 0


def test_missing_inputs_are_not_run(tiny_base_path, tiny_adapters):
    from rlhf.evals.lm import EvalContext

    ctx = EvalContext.create(tiny_base_path, tiny_adapters["history"], seed=0)
    for name in SUITES:
        r = run_suite(name, ctx, CFG)
        assert r.status == "not_run" and "--compare-adapter" in r.reason, name
    ctx = _ctx(tiny_base_path, tiny_adapters["history"], tiny_adapters["history"])
    assert "--reward-model" in run_suite("compare_reward_model", ctx, CFG).reason
    assert "--judge" in run_suite("compare_judge", ctx, CFG).reason

"""Trajectory evaluators: the first wrong step of hand-written worked solutions, the safe arithmetic
evaluator, GSM8K annotations; the two suites on the tiny fixture model."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rlhf.corpus import eval_prompts
from rlhf.evals.registry import SuiteConfig, run_suite
from rlhf.evals.trajectory import (
    UnsafeExpression,
    check_trajectory,
    parse_steps,
    safe_eval,
    trajectory_metrics,
)


def test_first_wrong_step_in_a_hand_written_corpus_style_solution():
    solution = "Sam starts with 12. 12 + 7 = 19. 19 * 2 = 38. 38 - 5 = 34. 34 / 2 = 17.\n#### 17"
    check = check_trajectory(solution)
    assert [s.expression for s in check.steps] == ["12 + 7", "19 * 2", "38 - 5", "34 / 2"]
    assert [s.correct for s in check.steps] == [True, True, False, True]  # 38 - 5 is 33
    assert check.first_wrong_step == 3
    assert check.steps[2].value == 33.0
    assert not check.fully_correct


def test_first_wrong_step_in_gsm8k_annotations():
    solution = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                "She makes 9 * 2 = $<<9*2=17>>17 every day.\nSo a week is 17 * 7 = <<17*7=119>>119.\n#### 119")
    check = check_trajectory(solution)
    assert [(s.expression, s.claimed) for s in check.steps] == [("16-3-4", "9"), ("9*2", "17"), ("17*7", "119")]
    assert check.first_wrong_step == 2 and check.n_correct == 2


def test_every_corpus_reference_solution_checks():
    answers = [it.answer for it in eval_prompts("mathematics", 60, seed=1)]
    metrics, checks = trajectory_metrics(answers)
    assert metrics["step_accuracy"].value == 1.0 and metrics["chain_correct"].value == 1.0
    assert all(c.steps for c in checks)


def test_metrics_on_fixed_solutions():
    metrics, _ = trajectory_metrics(["1 + 1 = 2. 2 + 2 = 5.", "3 * 3 = 9.", "no steps here", "2 + 2 = 5. 5 + 1 = 6."])
    assert metrics["step_accuracy"].value == pytest.approx(3 / 5) and metrics["step_accuracy"].n == 5
    assert metrics["chain_correct"].value == pytest.approx(1 / 4)
    assert metrics["has_steps"].value == pytest.approx(3 / 4)
    assert metrics["first_wrong_step"].value == pytest.approx(1.5) and metrics["first_wrong_step"].n == 2


@pytest.mark.parametrize(
    ("expr", "want"),
    [("3*(4+2)/5", Fraction(18, 5)), ("2^3", 8), ("12 × 3", 36), ("$1,200 / 4", 300), ("-5 + 2", -3),
     ("0.1 + 0.2", Fraction(3, 10)), ("7 // 2", 3), ("7 % 4", 3), ("1.5*2", 3)],
)
def test_safe_eval_exact(expr: str, want: Fraction):
    assert safe_eval(expr) == want


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "x + 1", "abs(-3)", "2 ** 1000", "[1, 2]",
                                  "1 if 1 else 2", "(lambda: 1)()", "1" * 300])
def test_safe_eval_refuses_what_is_not_arithmetic(expr: str):
    with pytest.raises(UnsafeExpression):
        safe_eval(expr)


def test_rounded_results_and_division_by_zero():
    steps = parse_steps("<<10/3=3.33>> <<10/3=3.3>> <<10/3=3>> <<5/0=1>>")
    assert [s.correct for s in steps] == [True, True, False, False]
    assert parse_steps("The year 1,000 = a lot") == []  # no operator: not a step


@pytest.fixture(scope="module")
def ctx(tiny_base_path, tiny_adapters):
    from rlhf.evals.lm import EvalContext

    return EvalContext.create(tiny_base_path, tiny_adapters["history"], seed=0)


def test_trajectory_math_suite_on_tiny_model(ctx):
    cfg = SuiteConfig(limit=2, seed=0, batch_size=4, max_new_tokens=8, options={"trajectory_max_new_tokens": 12})
    r = run_suite("trajectory_math", ctx, cfg)
    assert r.status == "ok", r.reason
    assert r.n in (2, 4)  # corpus items (+ GSM8K items when the shared data is present)
    for key in ("step_accuracy", "chain_correct", "has_steps", "first_wrong_step", "final_correct",
                "step_accuracy/corpus", "chain_correct/corpus"):
        assert key in r.metrics
    assert r.metrics["chain_correct"].n == r.n
    assert r.details["reference_parser_check"]["corpus"]["step_accuracy"] == 1.0


def test_trajectory_consistency_suite_is_deterministic_and_paraphrases(ctx):
    cfg = SuiteConfig(limit=3, seed=0, batch_size=4, max_new_tokens=8)
    a = run_suite("trajectory_consistency", ctx, cfg)
    b = run_suite("trajectory_consistency", ctx, cfg)
    assert a.status == "ok", a.reason
    assert a.n == 3 and a.details["paraphrased_share"] == 1.0  # history facts are asked several ways
    drop = {"seconds"}
    assert {k: v for k, v in a.to_dict().items() if k not in drop} == {k: v for k, v in b.to_dict().items()
                                                                       if k not in drop}
    m = a.metrics
    assert m["flip_rate"].value <= m["accuracy_turn1"].value
    repeat = run_suite("trajectory_consistency", ctx, SuiteConfig(limit=3, max_new_tokens=8,
                                                                  options={"consistency_mode": "repeat"}))
    assert repeat.details["paraphrased_share"] == 0.0

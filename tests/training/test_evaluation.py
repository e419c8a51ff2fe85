"""rlhf.evaluation: the gate's suites on the tiny model (plain Python, no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf import evaluation

SMALL = {"n_prompts": 8, "kl_samples": 4, "max_new_tokens": 16}


def test_a_version_against_itself_ties_and_passes(tiny_base_path, tiny_adapters):
    ad = Path(tiny_adapters["mathematics"])
    report = evaluation.evaluate(tiny_base_path, ad, ad, "mathematics",
                                 config={**SMALL, "suites": ["answer_key_accuracy", "length_drift", "kl",
                                                             "harmlessness"]})
    s = report["suites"]
    assert report["passed"], report["failures"]
    assert s["answer_key_accuracy"]["candidate"] == s["answer_key_accuracy"]["baseline"]
    assert s["length_drift"]["drift"] == 0.0
    assert s["kl"]["candidate"] == pytest.approx(0.0, abs=1e-5)  # KL to the promoted version: itself
    assert s["kl"]["reference"] == "baseline" and s["kl"]["passed"]
    to_base = s["kl"]["to_base"]  # both against the base: equal, and > 0 for a trained adapter (k3: never negative)
    assert to_base["candidate"] == pytest.approx(to_base["baseline"], abs=1e-5) and to_base["candidate"] > 0
    assert 0.0 <= s["harmlessness"]["candidate"] <= 1.0
    assert len(report["samples"]) == 8 and all(x["candidate"] == x["baseline"] for x in report["samples"])


def test_thresholds_decide_and_suites_plug_in(tiny_base_path, tiny_adapters):
    calls = []

    @evaluation.register_suite("always_fails")
    def always_fails(ctx, th):
        calls.append(ctx.subject)
        return {"candidate": 0.0, "baseline": 1.0, "threshold": 1.0, "passed": False}

    try:
        ad = Path(tiny_adapters["history"])
        report = evaluation.evaluate(tiny_base_path, ad, None, "history",
                                     config={**SMALL, "suites": ["length_drift", "always_fails"]})
        assert calls == ["history"]
        assert not report["passed"] and report["failures"][0].startswith("always_fails")
        assert report["has_baseline"] is False
    finally:
        evaluation.SUITES.pop("always_fails")


def test_bad_input_is_refused_before_loading(tiny_base_path, tiny_adapters, tmp_path):
    ad = Path(tiny_adapters["history"])
    with pytest.raises(ValueError, match="unknown evaluation suites"):
        evaluation.evaluate(tiny_base_path, ad, None, "history", config={"suites": ["nope"]})
    with pytest.raises(ValueError, match="unknown subject"):
        evaluation.evaluate(tiny_base_path, ad, None, "physics")
    with pytest.raises(FileNotFoundError):
        evaluation.evaluate(tiny_base_path, tmp_path / "missing", None, "history")
    with pytest.raises(ValueError, match="unknown gate thresholds"):
        evaluation.evaluate(tiny_base_path, ad, None, "history", thresholds={"max_kll": 1})


def test_sampled_answers_like_the_chat_use_one_seed_for_both_versions(tiny_base_path, tiny_adapters):
    """temperature > 0: k sampled answers per question; the same seed for both versions, so a version
    against itself still ties exactly, and the side-by-side shows one answer per question."""
    ad = Path(tiny_adapters["mathematics"])
    cfg = {**SMALL, "n_prompts": 4, "temperature": 0.7, "samples_per_prompt": 3,
           "suites": ["reward_win_rate", "answer_key_accuracy", "length_drift"]}
    report = evaluation.evaluate(tiny_base_path, ad, ad, "mathematics", config=cfg)
    assert report["passed"], report["failures"]
    assert (report["n_prompts"], report["answers"]) == (4, 12)
    assert [x["question"] for x in report["samples"]] == [it.question for it in
                                                          evaluation_prompts("mathematics", 4)]
    assert all(x["candidate"] == x["baseline"] for x in report["samples"])
    assert report["suites"]["length_drift"]["drift"] == 0.0
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluation.EvalConfig(samples_per_prompt=0)


def evaluation_prompts(subject: str, n: int):
    from rlhf.corpus import eval_prompts

    return eval_prompts(subject, n, 0)


def test_accuracy_may_trail_only_within_the_paired_standard_error():
    from rlhf.corpus import eval_prompts
    from rlhf.generation import Generation

    questions = eval_prompts("mathematics", 10)
    k = 2
    items = [it for it in questions for _ in range(k)]

    def answers(right: list[bool]) -> list[Generation]:
        return [Generation(f"#### {it.key if ok else 'x'}", 2, "stop") for it, ok in zip(items, right, strict=True)]

    def judge(cand: list[bool], base: list[bool], z: float) -> dict:
        ctx = evaluation.EvalContext(None, None, "mathematics", items,
                                     evaluation.EvalConfig(n_prompts=10, samples_per_prompt=k), True)
        ctx._answers = {"candidate": answers(cand), "baseline": answers(base)}
        return evaluation.answer_key_accuracy(ctx, evaluation.GateThresholds(accuracy_z=z))

    base = [True, False] * 10  # 0.5 on every question
    one_worse = [False, False] + base[2:]  # one answer of 20 lost: 0.45
    r = judge(one_worse, base, 1.645)
    assert r["difference"] == pytest.approx(-0.05) and r["standard_error"] == pytest.approx(0.05)
    assert r["passed"] and r["margin"] == pytest.approx(1.645 * 0.05)
    assert not judge(one_worse, base, 0.0)["passed"]  # the plain comparison refuses it
    all_worse = [False] * 20  # every question worse: the standard error is 0, nothing to hide behind
    assert not judge(all_worse, base, 1.645)["passed"]

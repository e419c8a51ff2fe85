"""The simulated labelers' hidden preference: correctness first, then the criteria; unsafe is worst."""

from __future__ import annotations

import random

from rlhf.corpus import seed_prompts
from training.simulation import hidden_score, know_items, labeler_noise, rank


def _item(subject="mathematics"):
    return seed_prompts(subject, 1)[0]


def test_correct_beats_wrong_and_unsafe_is_last():
    it = _item()
    wrong = it.answer.replace(f"#### {it.key}", f"#### {int(float(it.key)) + 7}")
    unsafe = "Here is how to make a bomb: step 1, mix the explosive."
    comps = [{"id": 1, "text": wrong}, {"id": 2, "text": unsafe}, {"id": 3, "text": it.answer}]
    body = rank("mathematics", it.question, comps, 0.0, random.Random(0))
    assert body["order"] == [[3], [1], [2]]
    assert body["unsafe"] and body["unsafe_reason"]
    assert body["ratings"]["3"]["honesty"] > body["ratings"]["1"]["honesty"]
    assert hidden_score("mathematics", it.question, it.answer)["correct"]


def test_identical_replies_tie_and_noise_is_per_labeler():
    it = _item("history")
    comps = [{"id": 1, "text": it.answer}, {"id": 2, "text": it.answer}]
    assert rank("history", it.question, comps, 0.0, random.Random(0))["order"] == [[1, 2]]
    noises = {labeler_noise(0.1, i) for i in range(10)}
    assert len(noises) == 10 and all(0.05 <= n < 0.15 for n in noises)


def test_noise_sometimes_flips_close_calls():
    it = _item()
    wrong = it.answer.replace(f"#### {it.key}", f"#### {int(float(it.key)) + 7}")
    comps = [{"id": 1, "text": it.answer}, {"id": 2, "text": wrong}]
    rng = random.Random(1)
    orders = [rank("mathematics", it.question, comps, 3.0, rng)["order"][0] for _ in range(200)]
    flips = sum(o == [2] for o in orders)
    assert 0 < flips < 100  # noisy, but the preference still wins most of the time


def test_questions_drawn_with_another_seed_become_known():
    # the index lists seed 0's mathematics problems; benchmarks/loop.py --seed draws others
    unknown = next(it for it in seed_prompts("mathematics", 3000, seed=7)
                   if not hidden_score("mathematics", it.question, it.answer)["known"])
    assert not hidden_score("mathematics", unknown.question, unknown.answer)["correct"]
    assert know_items([unknown]) == 1
    after = hidden_score("mathematics", unknown.question, unknown.answer)
    assert after["known"] and after["correct"]
    assert know_items([unknown]) == 0  # idempotent

"""rlhf.corpus: deterministic, keys check against their own answers, train/eval never overlap."""

from __future__ import annotations

import pytest

from rlhf import SUBJECTS
from rlhf.corpus import (
    check_answer,
    eval_prompts,
    extract_answer,
    generate_corpus,
    history_facts,
    is_eval_question,
    is_unsafe,
    red_team_prompts,
    seed_prompts,
    sloppy_answer,
    well_formed,
)


def test_same_seed_same_corpus_other_seed_differs():
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_every_key_checks_against_its_own_answer_and_not_a_wrong_one():
    items = generate_corpus(400, seed=1)
    assert {i.subject for i in items} == set(SUBJECTS)
    for item in items:
        assert item.question and item.answer and item.key
        assert check_answer(item.subject, item.key, item.answer), item
    # a reference answer of a different question (with a different key) does not pass
    by_subject = {s: [i for i in items if i.subject == s] for s in SUBJECTS}
    for subject, group in by_subject.items():
        a = group[0]
        other = next(i for i in group if i.key.lower() != a.key.lower() and a.key.lower() not in i.answer.lower())
        assert not check_answer(subject, a.key, other.answer), (a, other)


def test_maths_needs_the_final_marker():
    assert check_answer("mathematics", "14", "12 + 2 = 14.\n#### 14")
    assert not check_answer("mathematics", "14", "12 + 2 = 14.")  # no final answer line
    assert not check_answer("mathematics", "14", "#### 14\nActually #### 15")  # the last one counts
    assert extract_answer("mathematics", "so #### 1,200") == "1200"


def test_only_the_first_sentence_counts_so_a_second_guess_does_not():
    assert check_answer("history", "1929", "Martin Luther King Jr. was born in 1929. He was a pastor.")
    assert not check_answer("history", "1969", "The first Moon landing happened in 1970. Or was it 1969?")
    assert check_answer("general_knowledge", "2000", "1 kilogram is 1000 grams, so 2 kilograms is 2000 grams.")


def test_containment_is_whole_word_and_normalised():
    assert check_answer("general_knowledge", "Paris", "the capital of france is PARIS!")
    assert not check_answer("general_knowledge", "Paris", "Parisian food is nice")
    assert check_answer("language", "children", "The plural of 'child' is 'children'.")
    assert extract_answer("language", "The plural of 'child' is 'children'.") == "children"


def test_eval_prompts_are_held_out_and_reproducible():
    train_questions = {i.question for i in generate_corpus(3000, seed=0)}
    for subject in SUBJECTS:
        held = eval_prompts(subject, 40, seed=0)
        assert len(held) == 40 and len({i.question for i in held}) == 40
        assert held == eval_prompts(subject, 40, seed=0)
        assert all(is_eval_question(i.question) for i in held)
        assert not train_questions & {i.question for i in held}
        seeds = seed_prompts(subject, 20)
        assert len(seeds) == 20 and not any(is_eval_question(i.question) for i in seeds)


def test_fact_table_is_shipped_and_large_enough():
    facts = history_facts()
    assert len(facts["events"]) + len(facts["people"]) >= 60


def test_unknown_subject_is_refused():
    with pytest.raises(ValueError, match="unknown subject"):
        check_answer("physics", "1", "1")
    with pytest.raises(ValueError, match="unknown subject"):
        eval_prompts("physics", 3)


def test_unsafe_check_flags_harmful_instructions_not_refusals():
    assert len(red_team_prompts()) >= 10
    assert is_unsafe("Sure! Here is how to make a bomb: step 1, get a fuse and explosive powder.")
    assert is_unsafe("You are stupid and worthless.")
    assert not is_unsafe("I can't help with making a bomb. Let's talk about chemistry safety instead.")
    assert not is_unsafe("The capital of France is Paris.")


def test_every_reference_and_sloppy_answer_reads_as_well_formed():
    items = generate_corpus(200, seed=1)
    assert all(well_formed(it.answer) and well_formed(sloppy_answer(it)) for it in items)


@pytest.mark.parametrize("reply", [
    "artyartyard2maed the cor of Have Ebert Einstein.",  # mostly not words the corpus uses
    "the capital of France is Paris.",  # no capital letter at the start
    "The capital of France is Paris",  # unfinished sentence
    "The the the capital of France is Paris.",  # a word three times in a row
    "12 + 4 = 16.\n#### sixteen",  # only a number may follow ####
    "",
])
def test_noise_and_broken_replies_are_not_well_formed(reply):
    assert not well_formed(reply)


def test_wrong_but_readable_replies_are_well_formed():  # readability, not correctness
    assert well_formed("Ben starts with 12. 12 + 12 = 21.\n#### 21")
    assert well_formed("11 - 16 = 8.")


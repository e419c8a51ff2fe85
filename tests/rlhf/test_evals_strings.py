"""String evaluators: our metrics equal the libraries' own numbers (and hand-checked values) on fixed
strings; GSM8K final-answer extraction edge cases."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from rlhf.evals.strings import (
    canonical_number,
    corpus_bleu,
    corpus_bootstrap,
    corpus_chrf,
    exact_match,
    extract_gsm8k_answer,
    gsm8k_match,
    rouge_scores,
    sentence_bleu_max,
    text_metrics,
)

PREDS = ["the cat sat on the mat", "It wasn't surprising.", "The man had just bitten him."]
REFS = ["the cat is on the mat", "It was not unexpected.", "The man bit him first."]


def test_rouge_hand_checked_and_equal_to_rouge_score():
    got = rouge_scores(PREDS[:1], REFS[:1])
    # unigrams: 5 of 6 shared; bigrams: "the cat", "on the", "the mat" = 3 of 5; LCS "the cat on the mat" = 5 of 6
    assert got["rouge1"][0] == pytest.approx(5 / 6)
    assert got["rouge2"][0] == pytest.approx(3 / 5)
    assert got["rougeL"][0] == pytest.approx(5 / 6)
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = rouge_scores(PREDS, REFS)
    for i, (p, r) in enumerate(zip(PREDS, REFS, strict=True)):
        s = lib.score(r, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert ours[k][i] == s[k].fmeasure


def test_rouge_multi_reference_takes_the_best():
    got = rouge_scores(["the dog bit the man"], [["a cat", "the dog bit the man"]])
    assert got["rougeL"] == [1.0]


def test_bleu_and_chrf_equal_sacrebleu():
    assert corpus_bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100)
    assert corpus_chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score / 100)
    assert corpus_bleu(REFS, REFS) == pytest.approx(1.0)
    assert corpus_chrf(REFS, REFS) == pytest.approx(1.0)
    # sacrebleu's README example (two reference streams): BLEU 48.53; per-item max over references
    sys_ = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs2 = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
             ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    assert sacrebleu.corpus_bleu(sys_, refs2).score == pytest.approx(48.53, abs=0.01)
    per_item = sentence_bleu_max(sys_, [list(r) for r in zip(*refs2, strict=True)])
    for i, s in enumerate(sys_):
        want = max(sacrebleu.sentence_bleu(s, [refs2[0][i]]).score, sacrebleu.sentence_bleu(s, [refs2[1][i]]).score)
        assert per_item[i] == pytest.approx(want / 100)
    assert per_item[0] == pytest.approx(1.0)


def test_text_metrics_and_corpus_bootstrap_are_deterministic():
    preds = PREDS * 4
    refs = REFS * 4
    a = text_metrics(preds, refs, seed=3)
    b = text_metrics(preds, refs, seed=3)
    assert {k: (m.value, m.ci_low, m.ci_high, m.n) for k, m in a.items()} == \
           {k: (m.value, m.ci_low, m.ci_high, m.n) for k, m in b.items()}
    assert a["bleu"].ci_low <= a["bleu"].value <= a["bleu"].ci_high
    assert a["exact_match"].value == 0.0 and a["exact_match"].n == 12
    lo, hi = corpus_bootstrap(corpus_chrf, preds, refs, seed=1, n_resamples=50)
    assert 0.0 <= lo <= hi <= 1.0


def test_exact_match_normalises_case_punctuation_articles():
    assert exact_match("The Paris.", "paris")
    assert not exact_match("Paris, France", "Paris")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("The total is 1,000,000 dollars", "1000000"),
        ("#### $5", "5"),
        ("It costs $5.", "5"),
        ("He lost money.\n#### -12", "-12"),
        ("The temperature fell to -3 degrees.", "-3"),
        ("She owes -$40 after all.", "-40"),
        ("#### 2.50", "2.5"),
        ("Each costs 0.75 and 3.0 in total", "3"),
        ("So 18 - 4 = 14 apples.", "14"),
        ("16-3-4 gives 9 eggs", "9"),
        ("First 3 then 5, but #### 7 is final. 8 more words", "7"),
        ("#### 4\nlater #### 6", "6"),
        ("No number here.", None),
        ("", None),
    ],
)
def test_gsm8k_extraction_edge_cases(text: str, want: str | None):
    assert extract_gsm8k_answer(text) == want


def test_gsm8k_match_compares_numbers():
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert gsm8k_match("She makes $18.00 a day.", ref)
    assert gsm8k_match("9 * 2 = 18\n#### 18", ref)
    assert not gsm8k_match("#### 19", ref)
    assert not gsm8k_match("I don't know", ref)
    assert gsm8k_match("#### 1,000", "#### 1000")
    assert canonical_number("-0.0") == "0"

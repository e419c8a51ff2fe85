"""The offline toxicity classifier: scores, the AUC helper, and its agreement with Perspective."""

from __future__ import annotations

import pytest

from rlhf.evals.toxicity import roc_auc, toxicity_scores, validate_classifier
from rlhf.paths import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "data"


def test_scores_separate_insults_from_tutoring():
    s = toxicity_scores(["You are a stupid idiot and I hate you", "The capital of France is Paris.", ""])
    assert s[0] > 0.9 and s[1] < 0.2 and s[2] == 0.0
    assert toxicity_scores([]) == []


def test_roc_auc_on_fixed_scores():
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert roc_auc([True, False, True, False], [0.9, 0.8, 0.1, 0.2]) == 0.5
    assert roc_auc([True, True], [0.1, 0.2]) is None  # one class: undefined


def test_validation_on_fixed_rows():
    rows = [{"text": "you stupid idiot, shut up", "toxicity": 0.95, "severe_toxicity": 0.6},
            {"text": "what a f***ing moron", "toxicity": 0.9, "severe_toxicity": 0.4},
            {"text": "I like gardening on Sundays", "toxicity": 0.05, "severe_toxicity": 0.0}]
    v = validate_classifier(rows, benign=["The river is long.", "Bees make honey."])
    assert v["n_scored"] == 3 and v["n_perspective_toxic"] == 2 and v["n_benign"] == 2
    assert v["auc_toxic_vs_not"] == 1.0
    assert v["auc_toxic_vs_benign"] == 1.0


@pytest.mark.skipif(not (SHARED / "toxicity" / "scored-shared.jsonl").is_file(),
                    reason="../shared/data/toxicity/scored-shared.jsonl absent (the workplace's shared reference data)")
def test_classifier_agrees_with_perspective_on_shared_texts():
    v = validate_classifier()
    assert v["n_scored"] == 496
    assert v["auc_toxic_vs_not"] is None  # every shared text is Perspective-toxic
    assert v["auc_toxic_vs_benign"] > 0.9
    assert v["spearman_vs_perspective"] > 0.4
    assert v["recall_at_0_5"] > 0.6

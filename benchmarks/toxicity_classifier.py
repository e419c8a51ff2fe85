"""The offline toxicity classifier against Perspective, next to a trivial baseline, in one run.

Baseline: a "masked swear word" rule (a word with an asterisk inside, as in "s**t", scores 1, else 0), the
cheapest signal in this data. Ours: alt-profanity-check's probability (rlhf.evals.toxicity). Both are scored
on the shared Perspective-scored texts (all toxic >= 0.5) against benign real text (XSum reference summaries +
corpus reference answers): ROC AUC, recall and false-positive rate at 0.5, texts per second, with ratios.

    .venv/bin/python benchmarks/toxicity_classifier.py
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.evals.data import load_jsonl  # noqa: E402
from rlhf.evals.registry import DataMissing  # noqa: E402
from rlhf.evals.toxicity import SCORED_PATH, benign_texts, roc_auc, toxicity_scores  # noqa: E402

MASKED = re.compile(r"\w\*+\w|\w\*+(?=\W|$)")


def baseline_scores(texts: list[str]) -> list[float]:
    return [1.0 if MASKED.search(t) else 0.0 for t in texts]


def main() -> int:
    try:
        rows = load_jsonl(SCORED_PATH)
    except DataMissing as exc:
        print(f"not run: {exc}")
        return 0
    toxic = [r["text"] for r in rows if float(r["toxicity"]) >= 0.5]
    benign = benign_texts()
    texts = toxic + benign
    labels = [True] * len(toxic) + [False] * len(benign)
    results = {}
    for name, fn in (("baseline (masked word)", baseline_scores), ("alt-profanity-check", toxicity_scores)):
        fn(texts[:10])  # warm-up (model load)
        t0 = time.perf_counter()
        scores = fn(texts)
        dt = time.perf_counter() - t0
        results[name] = {
            "auc": roc_auc(labels, scores),
            "recall": sum(s >= 0.5 for s in scores[: len(toxic)]) / len(toxic),
            "fpr": sum(s >= 0.5 for s in scores[len(toxic):]) / len(benign),
            "texts_per_s": len(texts) / dt,
        }
    print(f"{len(toxic)} Perspective-toxic texts vs {len(benign)} benign texts")
    print(f"{'classifier':26s} {'AUC':>6s} {'recall':>7s} {'FPR':>6s} {'texts/s':>10s}")
    for name, r in results.items():
        print(f"{name:26s} {r['auc']:6.3f} {r['recall']:7.3f} {r['fpr']:6.3f} {r['texts_per_s']:10.0f}")
    base, ours = results.values()
    print(f"ratio ours/baseline: AUC {ours['auc'] / base['auc']:.2f}x, recall {ours['recall'] / max(base['recall'], 1e-9):.2f}x,"
          f" speed {ours['texts_per_s'] / base['texts_per_s']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

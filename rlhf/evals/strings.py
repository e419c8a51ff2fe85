"""String evaluators: exact match, GSM8K final-answer match, ROUGE-1/2/L, BLEU and chrF.

Why the libraries: ROUGE comes from Google's `rouge-score` (the implementation HF `evaluate` wraps)
and BLEU/chrF from `sacrebleu` (the reference implementation; `evaluate`'s "sacrebleu" metric calls
it). `evaluate.load(...)` itself is not used because its metric scripts live on the Hugging Face Hub
and cannot be loaded offline (`evaluate.load("sacrebleu")` raises FileNotFoundError here).

Conventions: scores are on 0-1 (ROUGE F-measure; BLEU and chrF are divided by 100). Corpus BLEU/chrF
get their interval by resampling items and recomputing the corpus score; per-item means (ROUGE, the
TruthfulQA max-over-references scores) by the percentile bootstrap of `rlhf.evals.stats`.

Suites: `corpus_answers`, `gsm8k`, `xsum`, `truthfulqa` (see docs/evaluation.md).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf.evals.registry import DataMissing, Metric, SuiteConfig, SuiteResult, register_suite
from rlhf.evals.stats import bootstrap_ci, wilson

if TYPE_CHECKING:
    from rlhf.evals.lm import EvalContext

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# ---------------------------------------------------------------------------------------------
# Exact match


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (lower case, no punctuation, no articles, single spaces): what
    `evaluate`'s exact_match does with ignore_case/ignore_punctuation, plus the articles rule."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


# ---------------------------------------------------------------------------------------------
# GSM8K final answers

# A number as written in answers: a sign glued to it ("-5", "-$5", "$-5"), currency, thousands
# separators, decimals.
_NUMBER = r"(?:-\$?|\$-?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_FINAL_RE = re.compile(r"####\s*(" + _NUMBER + ")")


def _numbers(text: str) -> list[str]:
    """Numbers in order; a '-' right after a digit ("3-2") is a minus sign of the operation, not the number's."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        raw = m.group(0)
        if raw.startswith("-") and m.start() > 0 and text[m.start() - 1].isdigit():
            raw = raw[1:]
        out.append(raw)
    return out


def canonical_number(text: str) -> str | None:
    """'$1,000.50' → '1000.5', '-5.00' → '-5', '−3' → '-3'; None when `text` holds no number."""
    text = text.replace("−", "-").replace("–", "-")
    found = _numbers(text)
    if not found:
        return None
    raw = found[0]
    negative = "-" in raw
    digits = re.sub(r"[^\d.]", "", raw)
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    value = -value if negative else value
    out = format(value.normalize(), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return "0" if out in ("-0", "") else out


def extract_gsm8k_answer(text: str) -> str | None:
    """The final numeric answer of a worked solution, canonical (see `canonical_number`).

    The number after the last `####` when there is one (GSM8K's and the corpus's format), else the
    last number in the text (lm-eval's "flexible-extract" fallback). A trailing full stop, a
    currency sign, thousands commas and units ("5 apples", "$5") are dropped.
    """
    text = text.replace("−", "-")
    finals = _FINAL_RE.findall(text)
    if finals:
        return canonical_number(finals[-1])
    numbers = _numbers(text)
    return canonical_number(numbers[-1]) if numbers else None


def gsm8k_match(prediction: str, reference: str) -> bool:
    """Whether the prediction's final answer equals the reference's (both extracted, numerically)."""
    got, want = extract_gsm8k_answer(prediction), extract_gsm8k_answer(reference)
    if got is None or want is None:
        return False
    return Decimal(got) == Decimal(want)


# ---------------------------------------------------------------------------------------------
# ROUGE, BLEU, chrF


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def _refs_list(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    out = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not r for r in out):
        raise ValueError("every item needs at least one reference")
    return out


def rouge_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, list[float]]:
    """Per-item ROUGE-1/2/L F-measure (rouge-score, Porter stemmer); with several references
    per item, the best one (rouge-score's `score_multi`: max F-measure)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must have the same length")
    scorer = _rouge_scorer()
    out: dict[str, list[float]] = {k: [] for k in ROUGE_TYPES}
    for pred, refs in zip(predictions, _refs_list(references), strict=True):
        scores = scorer.score_multi(refs, pred)
        for k in ROUGE_TYPES:
            out[k].append(float(scores[k].fmeasure))
    return out


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (13a tokenisation, exp smoothing) on 0-1; one reference per item."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character 6-grams, beta 2) on 0-1; one reference per item."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score) / 100.0


def sentence_bleu_max(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float]:
    """Per-item sentence BLEU (sacrebleu, exp smoothing) on 0-1, the max over the item's references
    (TruthfulQA's "bleu max" against the true answers)."""
    import sacrebleu

    out = []
    for pred, refs in zip(predictions, _refs_list(references), strict=True):
        out.append(max(sacrebleu.sentence_bleu(pred, [r]).score for r in refs) / 100.0)
    return out


def corpus_bootstrap(fn: Callable[[Sequence[str], Sequence[str]], float], predictions: Sequence[str],
                     references: Sequence[str], seed: int = 0, n_resamples: int = 200,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a corpus-level score by resampling items with replacement."""
    n = len(predictions)
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    preds, refs = list(predictions), list(references)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        values.append(fn([preds[i] for i in idx], [refs[i] for i in idx]))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_metric(values: Sequence[float], seed: int = 0) -> Metric:
    """Mean of per-item scores with its bootstrap interval."""
    if not values:
        return Metric(float("nan"), None, None, 0)
    lo, hi = bootstrap_ci(list(values), seed=seed)
    return Metric(float(np.mean(values)), lo, hi, len(values))


def rate_metric(flags: Sequence[bool]) -> Metric:
    """Share of true flags with its Wilson interval."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    if n == 0:
        return Metric(float("nan"), None, None, 0)
    lo, hi = wilson(k, n)
    return Metric(k / n, lo, hi, n)


def text_metrics(predictions: Sequence[str], references: Sequence[str], seed: int = 0,
                 n_resamples: int = 200) -> dict[str, Metric]:
    """exact_match, rouge1/2/L, corpus bleu and chrf of predictions against one reference each."""
    n = len(predictions)
    out: dict[str, Metric] = {"exact_match": rate_metric([exact_match(p, r) for p, r in
                                                          zip(predictions, references, strict=True)])}
    for k, vals in rouge_scores(predictions, references).items():
        out[k] = mean_metric(vals, seed)
    for key, fn in (("bleu", corpus_bleu), ("chrf", corpus_chrf)):
        lo, hi = corpus_bootstrap(fn, predictions, references, seed, n_resamples)
        out[key] = Metric(fn(predictions, references), lo, hi, n)
    return out


# ---------------------------------------------------------------------------------------------
# Suites


def generate(ctx: EvalContext, subject: str, questions: Sequence[str], *, max_new_tokens: int,
             batch_size: int = 16) -> list[str]:
    """Greedy tutor replies of the model under test to student questions of `subject`."""
    return ctx.model.generate(list(questions), max_new_tokens=max_new_tokens, subject=subject,
                              batch_size=batch_size)


def _samples(questions: Sequence[str], predictions: Sequence[str], references: Sequence[Any], k: int = 5
             ) -> list[dict[str, Any]]:
    return [{"question": q[:300], "prediction": p[:300], "reference": r if isinstance(r, str) else list(r)[:3]}
            for q, p, r in list(zip(questions, predictions, references, strict=True))[:k]]


def _subjects(ctx: EvalContext) -> tuple[str, ...]:
    """The adapter's subject when the context knows it, else all four."""
    from rlhf import SUBJECTS

    subject = ctx.model.subject
    return (subject,) if subject in SUBJECTS else tuple(SUBJECTS)


@register_suite("corpus_answers", kind="generation",
                description="Greedy answers to the corpus's held-out questions vs the reference answers: answer-key "
                            "match (rlhf.corpus.check_answer), exact match, ROUGE-1/2/L, BLEU, chrF",
                tags=("strings", "corpus"))
def corpus_answers(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.corpus import check_answer, eval_prompts
    from rlhf.evals.data import data_hash

    limit = cfg.limit or 40
    preds: list[str] = []
    items: list[Any] = []
    per_subject: dict[str, dict[str, Any]] = {}
    for subject in _subjects(ctx):
        its = eval_prompts(subject, limit, cfg.seed)
        answers = generate(ctx, subject, [it.question for it in its], max_new_tokens=cfg.max_new_tokens,
                           batch_size=cfg.batch_size)
        items.extend(its)
        preds.extend(answers)
        keys = [check_answer(subject, it.key, a) for it, a in zip(its, answers, strict=True)]
        per_subject[subject] = {"key_match": keys, "preds": answers, "refs": [it.answer for it in its]}
    refs = [it.answer for it in items]
    metrics = {"key_match": rate_metric([k for s in per_subject.values() for k in s["key_match"]])}
    metrics.update(text_metrics(preds, refs, cfg.seed))
    if len(per_subject) > 1:
        for subject, d in per_subject.items():
            metrics[f"key_match/{subject}"] = rate_metric(d["key_match"])
            metrics[f"rougeL/{subject}"] = mean_metric(rouge_scores(d["preds"], d["refs"])["rougeL"], cfg.seed)
    return SuiteResult("corpus_answers", "ok", metrics, n=len(items),
                       data_hash=data_hash("corpus", [(it.subject, it.question) for it in items]),
                       details={"subjects": list(per_subject),
                                "samples": _samples([it.question for it in items], preds, refs)})


def _gsm8k_prompt_question(question: str) -> str:
    return question.strip()


@register_suite("gsm8k", kind="generation",
                description="GSM8K test (shared 660): greedy worked solution in the tutor's mathematics chat, final "
                            "answer (after '####', else the last number) vs the reference's",
                tags=("strings", "math"))
def gsm8k(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.evals.data import data_hash, load_jsonl, subsample

    rel = "gsm8k/test-660.jsonl"
    rows = subsample(load_jsonl(rel, '{"question", "answer": "... #### 42"}'), cfg.limit or 100, cfg.seed)
    max_new = int(cfg.options.get("gsm8k_max_new_tokens", max(cfg.max_new_tokens, 128)))
    preds = generate(ctx, "mathematics", [_gsm8k_prompt_question(r["question"]) for r in rows],
                     max_new_tokens=max_new, batch_size=cfg.batch_size)
    ok = [gsm8k_match(p, r["answer"]) for p, r in zip(preds, rows, strict=True)]
    extracted = [extract_gsm8k_answer(p) for p in preds]
    return SuiteResult("gsm8k", "ok",
                       {"exact_match": rate_metric(ok),
                        "has_answer": rate_metric([e is not None for e in extracted])},
                       n=len(rows), data_hash=data_hash(cfg.limit, cfg.seed, max_new, files=[rel]),
                       details={"samples": [{**s, "extracted": e, "gold": extract_gsm8k_answer(r["answer"])}
                                            for s, e, r in zip(_samples([r["question"] for r in rows], preds,
                                                                        [r["answer"] for r in rows]),
                                                               extracted, rows, strict=False)]})


@register_suite("xsum", kind="generation",
                description="XSum (shared 500): one-sentence summary of the article's first ~120 words vs the "
                            "reference summary: ROUGE-1/2/L, BLEU, chrF",
                tags=("strings", "summarisation"))
def xsum(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.evals.data import data_hash, load_jsonl, subsample

    rel = "xsum/test-shared.jsonl"
    rows = subsample(load_jsonl(rel, '{"id", "document", "summary"}'), cfg.limit or 50, cfg.seed)
    words = int(cfg.options.get("xsum_words", 120))  # the demo model's context is short
    questions = ["Summarise this article in one sentence.\n\n" + " ".join(r["document"].split()[:words])
                 for r in rows]
    preds = generate(ctx, "language", questions, max_new_tokens=max(cfg.max_new_tokens, 48),
                     batch_size=cfg.batch_size)
    refs = [r["summary"] for r in rows]
    metrics = text_metrics(preds, refs, cfg.seed)
    metrics.pop("exact_match")
    return SuiteResult("xsum", "ok", metrics, n=len(rows), data_hash=data_hash(cfg.limit, cfg.seed, words, files=[rel]),
                       details={"samples": _samples([r["id"] for r in rows], preds, refs)})


@register_suite("truthfulqa", kind="generation",
                description="TruthfulQA (shared 82): greedy answer vs the true reference answers, max ROUGE-L / "
                            "sentence BLEU over the references (TruthfulQA's generation metrics, true refs only)",
                tags=("strings", "honesty"))
def truthfulqa(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.evals.data import data_hash, load_jsonl, subsample

    rel = "truthfulqa/test-shared.jsonl"
    rows = subsample(load_jsonl(rel, '{"question", "answer": [true reference answers]}'), cfg.limit, cfg.seed)
    refs = [[a for a in (r["answer"] if isinstance(r["answer"], list) else [r["answer"]]) if a.strip()]
            or ["I have no comment."] for r in rows]
    preds = generate(ctx, "general_knowledge", [r["question"] for r in rows],
                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    rouge = rouge_scores(preds, refs)
    metrics = {"rougeL": mean_metric(rouge["rougeL"], cfg.seed), "rouge1": mean_metric(rouge["rouge1"], cfg.seed),
               "bleu": mean_metric(sentence_bleu_max(preds, refs), cfg.seed)}
    return SuiteResult("truthfulqa", "ok", metrics, n=len(rows), data_hash=data_hash(cfg.limit, cfg.seed, files=[rel]),
                       details={"samples": _samples([r["question"] for r in rows], preds, refs)})


__all__ = [
    "DataMissing", "canonical_number", "corpus_bleu", "corpus_bootstrap", "corpus_chrf", "exact_match",
    "extract_gsm8k_answer", "gsm8k_match", "mean_metric", "normalize_answer", "rate_metric", "rouge_scores",
    "sentence_bleu_max", "text_metrics",
]

"""Multiple-choice suites scored by log-likelihood: MMLU (0-/5-shot), BoolQ, corpus_mc.

Scoring is lm-evaluation-harness's `multiple_choice` output type: each choice is a
continuation of the prompt; the prediction is the argmax of the summed log-probabilities
(`acc`) and of the log-probabilities divided by the choice's length in characters (`acc_norm`,
lengths of the choice strings without the leading space, as lm-eval computes them). Prompts
are lm-eval's `mmlu` and `boolq` templates character for character (tests check the text).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf.evals.data import data_hash, load_jsonl, subsample
from rlhf.evals.registry import DataMissing, Metric, SuiteConfig, SuiteResult, register_suite
from rlhf.evals.stats import ece, wilson

LETTERS = ("A", "B", "C", "D")
MMLU_FMT = '{"subject", "tutor_subject", "question", "choices": [4 strings], "answer": 0-3}'
BOOLQ_FMT = '{"question", "passage", "label": true/false}'


@dataclass
class MCItem:
    """One question: the prompt, the choice strings (lm-eval's doc_to_choice), the gold index."""

    context: str
    choices: list[str]
    gold: int
    group: str = ""  # the tutor subject (or another grouping)
    subject: str = ""  # the benchmark's own subject
    delimiter: str = " "  # lm-eval's target_delimiter: continuation = delimiter + choice
    meta: dict[str, Any] = field(default_factory=dict)

    def continuations(self) -> list[str]:
        return [self.delimiter + c for c in self.choices]


@dataclass
class Scored:
    item: MCItem
    lls: list[float]
    greedy: list[bool]

    @property
    def pred(self) -> int:
        return int(np.argmax(self.lls))

    @property
    def pred_norm(self) -> int:
        lengths = np.array([float(len(c)) for c in self.item.choices])
        return int(np.argmax(np.array(self.lls) / lengths))

    @property
    def correct(self) -> bool:
        return self.pred == self.item.gold

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.item.gold

    @property
    def probs(self) -> list[float]:
        """The choices' probabilities renormalised over the choices (softmax of the log-likelihoods)."""
        x = np.array(self.lls)
        e = np.exp(x - x.max())
        return (e / e.sum()).tolist()


# ---------------------------------------------------------------------------------------------
# Prompts (lm-eval templates)


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_question(row: dict[str, Any]) -> str:
    """lm-eval's `doc_to_text` for mmlu."""
    c = row["choices"]
    return f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def mmlu_prompt(row: dict[str, Any], shots: Sequence[dict[str, Any]] = ()) -> str:
    """Description, then each shot as question + " <letter>" + blank line, then the question."""
    body = "".join(f"{mmlu_question(s)} {LETTERS[s['answer']]}\n\n" for s in shots)
    return mmlu_description(row["subject"]) + body + mmlu_question(row)


def boolq_prompt(row: dict[str, Any]) -> str:
    return f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"


# ---------------------------------------------------------------------------------------------
# Scoring and metrics


def score_items(ctx: Any, items: Sequence[MCItem], cfg: SuiteConfig, desc: str = "scoring") -> list[Scored]:
    """Log-likelihood of every choice of every item, batched (shared-prefix KV reuse per question)."""
    pairs = [(it.context, cont) for it in items for cont in it.continuations()]
    bar = None
    if cfg.options.get("progress_bar"):
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), desc=desc, unit="choice", leave=False, dynamic_ncols=True)
    try:
        res = ctx.model.loglikelihood(pairs, batch_size=cfg.batch_size,
                                      share_prefix=cfg.options.get("share_prefix"),
                                      progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    out: list[Scored] = []
    i = 0
    for it in items:
        k = len(it.choices)
        out.append(Scored(it, [r[0] for r in res[i:i + k]], [r[1] for r in res[i:i + k]]))
        i += k
    return out


def proportion(k: int, n: int) -> Metric:
    lo, hi = wilson(k, n)
    return Metric(k / n if n else float("nan"), lo, hi, n)


def mc_metrics(scored: Sequence[Scored], *, by_subject: bool = True) -> tuple[dict[str, Metric], dict[str, Any]]:
    """acc / acc_norm (Wilson 95 %) overall and per group, the macro average over benchmark
    subjects, the ECE of the chosen answers' normalised probabilities; details per subject."""
    metrics: dict[str, Metric] = {}
    n = len(scored)
    metrics["acc"] = proportion(sum(s.correct for s in scored), n)
    metrics["acc_norm"] = proportion(sum(s.correct_norm for s in scored), n)
    groups: dict[str, list[Scored]] = defaultdict(list)
    subjects: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        if s.item.group:
            groups[s.item.group].append(s)
        if s.item.subject:
            subjects[s.item.subject].append(s)
    for g, ss in sorted(groups.items()):
        metrics[f"acc/{g}"] = proportion(sum(s.correct for s in ss), len(ss))
        metrics[f"acc_norm/{g}"] = proportion(sum(s.correct_norm for s in ss), len(ss))
    if by_subject and len(subjects) > 1:
        per = [sum(s.correct for s in ss) / len(ss) for ss in subjects.values()]
        per_norm = [sum(s.correct_norm for s in ss) / len(ss) for ss in subjects.values()]
        metrics["acc_macro"] = Metric(float(np.mean(per)), None, None, n)
        metrics["acc_norm_macro"] = Metric(float(np.mean(per_norm)), None, None, n)
    conf = [max(s.probs) for s in scored]
    metrics["ece"] = Metric(ece(conf, [s.correct for s in scored]), None, None, n)
    details: dict[str, Any] = {
        "per_subject": {
            subj: {"group": ss[0].item.group, "n": len(ss),
                   "acc": sum(s.correct for s in ss) / len(ss),
                   "acc_norm": sum(s.correct_norm for s in ss) / len(ss)}
            for subj, ss in sorted(subjects.items())
        },
        "chance": float(np.mean([1 / len(s.item.choices) for s in scored])) if scored else None,
        "samples": [{"prompt_tail": s.item.context[-200:], "choices": s.item.choices, "gold": s.item.gold,
                     "pred": s.pred, "lls": [round(x, 4) for x in s.lls]} for s in scored[:3]],
    }
    return metrics, details


def mc_result(suite: str, scored: Sequence[Scored], dhash: str, **extra: Any) -> SuiteResult:
    metrics, details = mc_metrics(scored)
    details.update(extra)
    return SuiteResult(suite, "ok", metrics, n=len(scored), data_hash=dhash, details=details)


# ---------------------------------------------------------------------------------------------
# MMLU


def mmlu_rows(limit: int | None, seed: int) -> tuple[list[dict[str, Any]], str]:
    """Test rows (at most `limit` per MMLU subject, seeded) and the data hash."""
    rows = load_jsonl("mmlu/test-shared.jsonl", MMLU_FMT)
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r)
    picked = [r for subj in sorted(by_subject) for r in subsample(by_subject[subj], limit, seed)]
    return picked, data_hash({"limit": limit, "seed": seed}, files=["mmlu/test-shared.jsonl"])


def mmlu_shots(k: int) -> dict[str, list[dict[str, Any]]]:
    """The first k dev examples of each subject (lm-eval's `first_n` sampler on the dev split)."""
    rows = load_jsonl("mmlu/dev.jsonl", MMLU_FMT)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if len(out[r["subject"]]) < k:
            out[r["subject"]].append(r)
    return out


def mmlu_items(rows: Sequence[dict[str, Any]], shots: dict[str, list[dict[str, Any]]] | None = None) -> list[MCItem]:
    items = []
    for r in rows:
        s = (shots or {}).get(r["subject"], [])
        items.append(MCItem(mmlu_prompt(r, s), list(LETTERS), int(r["answer"]), r.get("tutor_subject", ""),
                            r["subject"]))
    return items


def score_mmlu(ctx: Any, cfg: SuiteConfig, k_shot: int) -> tuple[list[Scored], str]:
    """Scored MMLU items, memoised on the context (calibration reuses the 0-shot scores)."""
    key = ("mmlu", k_shot, cfg.limit, cfg.seed)
    cache = getattr(ctx, "cache", None)
    if cache is not None and key in cache:
        return cache[key]
    rows, dhash = mmlu_rows(cfg.limit, cfg.seed)
    shots = None
    if k_shot:
        shots = mmlu_shots(k_shot)
        dhash = data_hash(dhash, k_shot, files=["mmlu/dev.jsonl"])
    scored = score_items(ctx, mmlu_items(rows, shots), cfg, f"mmlu {k_shot}-shot")
    if cache is not None:
        cache[key] = (scored, dhash)
    return scored, dhash


@register_suite("mmlu", kind="mc", description="MMLU subset, 0-shot, log-likelihood of A-D (lm-eval's mmlu prompt)",
                tags=("knowledge", "helm"))
def suite_mmlu(ctx: Any, cfg: SuiteConfig) -> SuiteResult:
    k = cfg.few_shot or 0
    scored, dhash = score_mmlu(ctx, cfg, k)
    return mc_result("mmlu", scored, dhash, k_shot=k)


@register_suite("mmlu_5shot", kind="mc", description="MMLU subset, 5-shot from the dev split (first 5 per subject)",
                tags=("knowledge",))
def suite_mmlu_5shot(ctx: Any, cfg: SuiteConfig) -> SuiteResult:
    scored, dhash = score_mmlu(ctx, cfg, 5)
    return mc_result("mmlu_5shot", scored, dhash, k_shot=5)


# ---------------------------------------------------------------------------------------------
# BoolQ


def boolq_items(rows: Sequence[dict[str, Any]]) -> list[MCItem]:
    out = []
    for r in rows:
        label = r["label"]
        gold = int(label in (True, 1, "true", "True", "yes"))
        out.append(MCItem(boolq_prompt(r), ["no", "yes"], gold, "", ""))
    return out


@register_suite("boolq", kind="mc", description="SuperGLUE BoolQ, yes/no by log-likelihood (lm-eval's boolq prompt)",
                tags=("superglue", "reading"))
def suite_boolq(ctx: Any, cfg: SuiteConfig) -> SuiteResult:
    rows = load_jsonl("superglue-boolq/dev-shared.jsonl", BOOLQ_FMT)
    rows = subsample(rows, cfg.limit, cfg.seed)
    dhash = data_hash({"limit": cfg.limit, "seed": cfg.seed}, files=["superglue-boolq/dev-shared.jsonl"])
    scored = score_items(ctx, boolq_items(rows), cfg, "boolq")
    res = mc_result("boolq", scored, dhash)
    res.metrics.pop("acc_norm_macro", None)
    return res


# ---------------------------------------------------------------------------------------------
# corpus_mc: subject-matched items generated from the project's own corpus (fresh machines)


def corpus_mc_items(n_per_subject: int, seed: int = 0) -> list[MCItem]:
    """Held-out corpus questions with 4 choices: the key and 3 other keys of the same subject."""
    import random

    from rlhf import SUBJECTS
    from rlhf.chat import SUBJECT_TITLES
    from rlhf.corpus import eval_prompts, normalise

    items: list[MCItem] = []
    for subject in SUBJECTS:
        pool = eval_prompts(subject, max(4 * n_per_subject, 40), seed)
        rng = random.Random(f"corpus_mc:{subject}:{seed}")
        keys = list(dict.fromkeys(it.key for it in pool))
        for it in pool[:n_per_subject]:
            others = [k for k in keys if normalise(k) != normalise(it.key)]
            if len(others) < 3:
                continue
            choices = rng.sample(others, 3) + [it.key]
            rng.shuffle(choices)
            row = {"subject": subject, "question": it.question, "choices": choices}
            context = (f"The following are multiple choice questions (with answers) about "
                       f"{SUBJECT_TITLES[subject]}.\n\n" + mmlu_question(row))
            items.append(MCItem(context, list(LETTERS), choices.index(it.key), subject, subject))
    return items


@register_suite("corpus_mc", kind="mc",
                description="4-choice items generated from the corpus's held-out questions (needs no data files)",
                tags=("tutor",))
def suite_corpus_mc(ctx: Any, cfg: SuiteConfig) -> SuiteResult:
    n = cfg.limit or 25
    items = corpus_mc_items(n, cfg.seed)
    if not items:
        raise DataMissing("the corpus produced no held-out items")
    from rlhf.corpus import corpus_fingerprint

    dhash = data_hash({"corpus": corpus_fingerprint(), "n": n, "seed": cfg.seed})
    return mc_result("corpus_mc", score_items(ctx, items, cfg, "corpus_mc"), dhash)


def mean_or_nan(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


__all__ = [
    "LETTERS", "MCItem", "Scored", "boolq_items", "boolq_prompt", "corpus_mc_items", "mc_metrics", "mc_result",
    "mmlu_description", "mmlu_items", "mmlu_prompt", "mmlu_question", "mmlu_rows", "mmlu_shots", "proportion",
    "score_items", "score_mmlu",
]

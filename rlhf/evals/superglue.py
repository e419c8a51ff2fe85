"""SuperGLUE CB, COPA, RTE, WiC, WSC, MultiRC: loaders for the public JSONL layout + lm-eval prompts.

The files are not shipped (no licence to redistribute them here): put the SuperGLUE zip's
`<TASK>/val.jsonl` under `<data_dir>/superglue/<TASK>/val.jsonl` (TUTOR_EVAL_DATA_DIR, see
rlhf.evals.data). The Hugging Face `super_glue` layout (flat `span1_text`, integer labels) is
accepted too. Each loader turns rows into `MCItem`s with lm-eval's `super_glue` prompts;
BoolQ lives in rlhf.evals.mc (its data is in the shared set).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rlhf.evals.data import data_hash, load_jsonl, subsample
from rlhf.evals.mc import MCItem, mc_result, score_items
from rlhf.evals.registry import DataMissing, Metric, SuiteConfig, SuiteResult, register_suite

TASK_DIRS = {"cb": "CB", "copa": "COPA", "rte": "RTE", "wic": "WiC", "wsc": "WSC", "multirc": "MultiRC"}

FORMATS = {
    "cb": '{"premise", "hypothesis", "label": "entailment"|"contradiction"|"neutral"}',
    "copa": '{"premise", "choice1", "choice2", "question": "cause"|"effect", "label": 0|1}',
    "rte": '{"premise", "hypothesis", "label": "entailment"|"not_entailment"}',
    "wic": '{"word", "sentence1", "sentence2", "start1", "end1", "label": true|false}',
    "wsc": '{"text", "target": {"span1_text", "span1_index", "span2_text", "span2_index"}, "label": true|false}',
    "multirc": '{"passage": {"text", "questions": [{"question", "answers": [{"text", "label": 0|1}]}]}}',
}


def task_path(task: str, split: str = "val") -> str:
    return f"superglue/{TASK_DIRS[task]}/{split}.jsonl"


def _label_index(label: Any, names: tuple[str, ...]) -> int:
    """A label as an index into `names` (string labels, ints, or bools where names[1] is true)."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, int):
        return label
    if isinstance(label, str) and label in names:
        return names.index(label)
    raise ValueError(f"unexpected label {label!r}; expected one of {names}")


def cb_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    return [MCItem(f"{r['premise']}\nQuestion: {r['hypothesis']}. True, False, or Neither?\nAnswer:",
                   ["True", "False", "Neither"],
                   _label_index(r["label"], ("entailment", "contradiction", "neutral"))) for r in rows]


def rte_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    return [MCItem(f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:", ["True", "False"],
                   _label_index(r["label"], ("entailment", "not_entailment"))) for r in rows]


def _copa_choice(choice: str) -> str:
    return " " + choice[0].lower() + choice[1:]


def copa_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    """lm-eval's copa: "<premise without its period> because|therefore", choices lower-cased;
    its choices carry a leading space on top of the target delimiter, and so do ours."""
    out = []
    for r in rows:
        connector = {"cause": "because", "effect": "therefore"}[r["question"]]
        out.append(MCItem(r["premise"].strip()[:-1] + f" {connector}",
                          [_copa_choice(r["choice1"]), _copa_choice(r["choice2"])], int(r["label"])))
    return out


def wic_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    out = []
    for r in rows:
        word = r["sentence1"][int(r["start1"]):int(r["end1"])]
        out.append(MCItem(f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\nQuestion: Is the word "
                          f"'{word}' used in the same way in the two sentences above?\nAnswer:",
                          ["no", "yes"], _label_index(r["label"], ("false", "true"))))
    return out


def _detokenize(text: str) -> str:
    """lm-eval's general_detokenize."""
    text = text.replace(" n't", "n't").replace(" )", ")").replace("( ", "(").replace('" ', '"').replace(' "', '"')
    return re.sub(r" (['.,])", r"\1", text)


def wsc_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    out = []
    for r in rows:
        t = r.get("target") or r  # public layout nests the spans under "target"; HF's is flat
        raw = r["text"]
        pre = " ".join(raw.split()[: int(t["span2_index"])])
        post = raw[len(pre) + len(t["span2_text"]) + 1:]
        passage = _detokenize(pre + f" *{t['span2_text']}*" + post)
        text = (f"Passage: {passage}\nQuestion: In the passage above, does the pronoun \"*{t['span2_text']}*\" "
                f"refer to \"*{t['span1_text']}*\"?\nAnswer:")
        out.append(MCItem(text, ["no", "yes"], _label_index(r["label"], ("false", "true"))))
    return out


def multirc_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    """One item per (question, candidate answer): is it correct? Choices as lm-eval's multirc
    ("<answer>\\nIs the answer correct? yes|no"); gold is "yes" for a correct answer.
    (lm-eval's YAML maps label 1 to its second choice, "no"; we keep the meaning of the label.)"""
    out = []
    for r in rows:
        if "passage" in r and isinstance(r["passage"], dict):
            for qi, q in enumerate(r["passage"]["questions"]):
                for a in q["answers"]:
                    out.append(MCItem(f"{r['passage']['text']}\nQuestion: {q['question']}\nAnswer:",
                                      [f"{a['text']}\nIs the answer correct? yes",
                                       f"{a['text']}\nIs the answer correct? no"],
                                      0 if int(a["label"]) == 1 else 1,
                                      meta={"question": f"{r.get('idx', '')}:{q.get('idx', qi)}"}))
        else:  # HF flat layout: paragraph, question, answer, label
            out.append(MCItem(f"{r['paragraph']}\nQuestion: {r['question']}\nAnswer:",
                              [f"{r['answer']}\nIs the answer correct? yes", f"{r['answer']}\nIs the answer correct? no"],
                              0 if int(r["label"]) == 1 else 1, meta={"question": str(r.get("idx", ""))}))
    return out


LOADERS: dict[str, Callable[[list[dict[str, Any]]], list[MCItem]]] = {
    "cb": cb_items, "copa": copa_items, "rte": rte_items, "wic": wic_items, "wsc": wsc_items,
    "multirc": multirc_items,
}


def load_task(task: str, split: str = "val", limit: int | None = None, seed: int = 0) -> tuple[list[MCItem], str]:
    """Items of a SuperGLUE task from `<data_dir>/superglue/<TASK>/<split>.jsonl` (DataMissing if absent)."""
    rel = task_path(task, split)
    try:
        rows = load_jsonl(rel, FORMATS[task])
    except DataMissing as exc:
        raise DataMissing(f"SuperGLUE {TASK_DIRS[task]} is not shipped: {exc}. Get it from "
                          f"https://super.gluebenchmark.com/tasks (the combined zip's {TASK_DIRS[task]}/"
                          f"{split}.jsonl)") from exc
    rows = subsample(rows, limit, seed)
    try:
        items = LOADERS[task](rows)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataMissing(f"{rel} is not in the SuperGLUE {TASK_DIRS[task]} layout {FORMATS[task]}: "
                          f"{type(exc).__name__}: {exc}") from exc
    return items, data_hash({"limit": limit, "seed": seed, "split": split}, files=[rel])


def _make_suite(task: str) -> None:
    @register_suite(f"superglue_{task}", kind="mc", description=f"SuperGLUE {TASK_DIRS[task]} (lm-eval prompt; "
                    "data not shipped)", tags=("superglue",))
    def suite(ctx: Any, cfg: SuiteConfig) -> SuiteResult:
        items, dhash = load_task(task, cfg.options.get("split", "val"), cfg.limit, cfg.seed)
        scored = score_items(ctx, items, cfg, f"superglue {task}")
        res = mc_result(f"superglue_{task}", scored, dhash)
        if task in ("cb", "multirc"):
            from sklearn.metrics import f1_score

            gold = [s.item.gold for s in scored]
            pred = [s.pred for s in scored]
            if task == "cb":  # lm-eval's cb f1: macro F1 over the three classes
                res.metrics["f1"] = Metric(float(f1_score(gold, pred, average="macro", labels=[0, 1, 2])), n=len(gold))
            else:  # f1a: F1 of "this answer is correct" over all answers
                res.metrics["f1a"] = Metric(float(f1_score([g == 0 for g in gold], [p == 0 for p in pred])),
                                            n=len(gold))
                by_q: dict[str, bool] = {}
                for s in scored:
                    q = s.item.meta["question"]
                    by_q[q] = by_q.get(q, True) and s.correct
                res.metrics["em"] = Metric(sum(by_q.values()) / len(by_q), n=len(by_q))
        return res


for _task in TASK_DIRS:
    _make_suite(_task)

__all__ = ["FORMATS", "LOADERS", "TASK_DIRS", "load_task", "task_path"]

"""Trajectory evaluators: judge the path, not only the final answer.

`trajectory_math` parses a worked solution into its checkable steps and recomputes each one:
GSM8K's calculator annotations (`<<48/2=24>>`) when a text has them, else every written equation
of the form `<arithmetic> = <number>` (the corpus's worked steps: "Sam starts with 5. 5 + 3 = 8.
8 - 2 = 6.\\n#### 6"). Arithmetic is evaluated by walking the `ast` of the expression (numbers,
+ - * / // % and small powers, in exact fractions): never `eval`. It reports step-level accuracy,
the share of fully-correct chains and where the first wrong step falls.

`trajectory_consistency` checks a tutor across turns: it asks a held-out question, then in the
same conversation asks it again (a paraphrase from the corpus when one exists: the finite subjects
phrase every fact several ways) and compares the two answers by answer key.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from rlhf.evals.registry import Metric, SuiteConfig, SuiteResult, register_suite

if TYPE_CHECKING:
    from rlhf.evals.lm import EvalContext

# ---------------------------------------------------------------------------------------------
# Safe arithmetic


class UnsafeExpression(ValueError):
    """The text is not plain arithmetic (names, calls, huge powers, ...)."""


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 64
MAX_LENGTH = 200


def safe_eval(expr: str) -> Fraction:
    """The exact value of an arithmetic expression ('3*(4+2)/5', '2^3', '12 × 3', '$1,200 / 4').

    Only numbers, parentheses, + - * / // % and powers with |exponent| <= 64 are allowed; anything
    else raises UnsafeExpression. Division by zero raises ZeroDivisionError.
    """
    text = expr.strip()
    if len(text) > MAX_LENGTH:
        raise UnsafeExpression(f"expression longer than {MAX_LENGTH} characters")
    text = (text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
            .replace("$", "").replace("€", "").replace("£", ""))
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"not arithmetic: {expr!r}") from exc
    return _eval_node(tree.body)


def _eval_node(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise UnsafeExpression("only integer powers up to 64 are evaluated")
            return left ** int(right)
        return Fraction(_BINOPS[type(node.op)](left, right))
    raise UnsafeExpression(f"not allowed in arithmetic: {type(node).__name__}")


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass
class Step:
    """One checkable step: `expression = claimed`, and whether the arithmetic holds."""

    index: int  # 1-based position in the solution
    expression: str
    claimed: str
    value: float | None  # the recomputed value (None when it could not be evaluated)
    correct: bool

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "expression": self.expression, "claimed": self.claimed,
                "value": self.value, "correct": self.correct}


_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_NUM = r"\$?\d[\d,]*(?:\.\d+)?"
_OPERAND = r"(?:\(\s*)*" + _NUM + r"(?:\s*\))*"
_OP = r"\s*(?:[-+*/×÷^]|\*\*)\s*"
# "<operand> (op <operand>)+ = <number>", with an optional sign on the result
_EQUATION = re.compile(r"(?<![\w.])(" + _OPERAND + r"(?:" + _OP + _OPERAND + r")+)\s*=\s*(-?\s?" + _NUM + r")")


def _claimed_value(text: str) -> Fraction | None:
    cleaned = re.sub(r"[$,\s]", "", text).rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _balance(expression: str) -> str:
    """Drop the unmatched parentheses a regex cut leaves at the ends ("27(1/3)=9" → "1/3)" → "1/3")."""
    expr = expression.strip()
    while expr.endswith(")") and expr.count(")") > expr.count("("):
        expr = expr[:-1].rstrip()
    while expr.startswith("(") and expr.count("(") > expr.count(")"):
        expr = expr[1:].lstrip()
    return expr


def _check(expression: str, claimed: str) -> tuple[float | None, bool] | None:
    """(recomputed value, whether the claim holds); None when the expression is not arithmetic."""
    want = _claimed_value(claimed)
    try:
        got = safe_eval(expression)
    except UnsafeExpression:
        return None
    except (ZeroDivisionError, OverflowError):
        return None, False
    if want is None:
        return float(got), False
    if got == want:
        return float(got), True
    # a rounded result is right when it is the exact value rounded to the claimed decimals ("10/3=3.33")
    decimals = len(claimed.strip().rstrip(".").split(".")[1]) if "." in claimed.strip().rstrip(".") else 0
    # an integer claim must be exact ("10/3=3" is wrong): only a written decimal is read as rounded
    return float(got), decimals > 0 and round(float(got), decimals) == float(want)


def parse_steps(solution: str) -> list[Step]:
    """The checkable steps of a worked solution, in order.

    With GSM8K calculator annotations `<<expr=result>>`, those are the steps (the prose around
    them repeats them); otherwise every written equation `arithmetic = number`. A left side that
    is not plain arithmetic is no step; a division by zero is a wrong one.
    """
    annotations = _ANNOTATION.findall(solution)
    pairs = annotations or [(m.group(1), m.group(2)) for m in _EQUATION.finditer(solution)]
    steps: list[Step] = []
    for expr, claimed in pairs:
        expr = _balance(expr)
        checked = _check(expr, claimed)
        if checked is None:  # not arithmetic after all: not a checkable step
            continue
        steps.append(Step(len(steps) + 1, expr, claimed.strip(), checked[0], checked[1]))
    return steps


@dataclass
class TrajectoryCheck:
    steps: list[Step]

    @property
    def n_correct(self) -> int:
        return sum(s.correct for s in self.steps)

    @property
    def first_wrong_step(self) -> int | None:
        """1-based index of the first step whose arithmetic is wrong (None when all hold)."""
        return next((s.index for s in self.steps if not s.correct), None)

    @property
    def fully_correct(self) -> bool:
        """At least one checkable step, and all of them right."""
        return bool(self.steps) and self.first_wrong_step is None


def check_trajectory(solution: str) -> TrajectoryCheck:
    return TrajectoryCheck(parse_steps(solution))


def trajectory_metrics(solutions: Sequence[str], seed: int = 0) -> tuple[dict[str, Metric], list[TrajectoryCheck]]:
    """step_accuracy (over all steps), chain_correct and has_steps (over solutions), first_wrong_step
    (mean 1-based position over chains with an error)."""
    from rlhf.evals.strings import mean_metric, rate_metric

    checks = [check_trajectory(s) for s in solutions]
    all_steps = [st.correct for c in checks for st in c.steps]
    firsts = [float(c.first_wrong_step) for c in checks if c.first_wrong_step is not None]
    metrics = {"step_accuracy": rate_metric(all_steps),
               "chain_correct": rate_metric([c.fully_correct for c in checks]),
               "has_steps": rate_metric([bool(c.steps) for c in checks]),
               "first_wrong_step": mean_metric(firsts, seed)}
    return metrics, checks


# ---------------------------------------------------------------------------------------------
# Suites


@register_suite("trajectory_math", kind="generation",
                description="Worked solutions (corpus held-out mathematics + GSM8K test when present): every "
                            "intermediate equation recomputed exactly; step accuracy, fully-correct chains, "
                            "first wrong step, final answer",
                tags=("trajectory", "math"))
def trajectory_math(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.corpus import check_answer, eval_prompts
    from rlhf.evals.data import data_hash, load_jsonl, subsample
    from rlhf.evals.registry import DataMissing
    from rlhf.evals.strings import gsm8k_match, rate_metric

    limit = cfg.limit or 40
    sources: dict[str, dict[str, Any]] = {}
    items = eval_prompts("mathematics", limit, cfg.seed)
    sources["corpus"] = {"questions": [it.question for it in items], "references": [it.answer for it in items],
                         "is_correct": lambda i, text, items=items: check_answer("mathematics", items[i].key, text)}
    hash_parts: list[Any] = [limit, cfg.seed, [it.question for it in items]]
    files: list[str] = []
    try:
        rows = subsample(load_jsonl("gsm8k/test-660.jsonl"), limit, cfg.seed)
        sources["gsm8k"] = {"questions": [r["question"] for r in rows], "references": [r["answer"] for r in rows],
                            "is_correct": lambda i, text, rows=rows: gsm8k_match(text, rows[i]["answer"])}
        files.append("gsm8k/test-660.jsonl")
    except DataMissing as exc:
        gsm8k_missing = str(exc)
    else:
        gsm8k_missing = ""
    max_new = int(cfg.options.get("trajectory_max_new_tokens", max(cfg.max_new_tokens, 96)))
    metrics: dict[str, Metric] = {}
    all_solutions: list[str] = []
    all_final: list[bool] = []
    details: dict[str, Any] = {"reference_parser_check": {}, "samples": [], "first_wrong_histogram": {}}
    for name, src in sources.items():
        solutions = ctx.model.generate(src["questions"], max_new_tokens=max_new, subject="mathematics",
                                       batch_size=cfg.batch_size)
        final = [bool(src["is_correct"](i, s)) for i, s in enumerate(solutions)]
        m, checks = trajectory_metrics(solutions, cfg.seed)
        for key in ("step_accuracy", "chain_correct", "first_wrong_step"):
            metrics[f"{key}/{name}"] = m[key]
        metrics[f"final_correct/{name}"] = rate_metric(final)
        all_solutions += solutions
        all_final += final
        # the parser on the reference solutions: every reference step should check (validates the parser)
        ref_m, _ = trajectory_metrics(src["references"], cfg.seed)
        details["reference_parser_check"][name] = {"step_accuracy": ref_m["step_accuracy"].value,
                                                   "steps": ref_m["step_accuracy"].n,
                                                   "has_steps": ref_m["has_steps"].value}
        for c in checks:
            if c.first_wrong_step is not None:
                k = str(c.first_wrong_step)
                details["first_wrong_histogram"][k] = details["first_wrong_histogram"].get(k, 0) + 1
        details["samples"] += [{"source": name, "question": q[:200], "solution": s[:300],
                                "steps": [st.to_dict() for st in c.steps][:6], "first_wrong_step": c.first_wrong_step}
                               for q, s, c in list(zip(src["questions"], solutions, checks, strict=True))[:3]]
    overall, _ = trajectory_metrics(all_solutions, cfg.seed)
    metrics = {**overall, "final_correct": rate_metric(all_final), **metrics}
    if gsm8k_missing:
        details["gsm8k"] = f"not used: {gsm8k_missing}"
    return SuiteResult("trajectory_math", "ok", metrics, n=len(all_solutions),
                       data_hash=data_hash(*hash_parts, max_new, files=files), details=details)


def _paraphrases(subject: str, item: Any, pool: Sequence[Any]) -> list[str]:
    """Other questions of the corpus with the same reference answer (the same fact asked another way)."""
    return [o.question for o in pool if o.answer == item.answer and o.key == item.key and o.question != item.question]


@register_suite("trajectory_consistency", kind="generation",
                description="Multi-turn consistency: a held-out question, the tutor's answer, then the same question "
                            "again in the same conversation (a corpus paraphrase when one exists); answers agree by "
                            "answer key",
                tags=("trajectory", "consistency"))
def trajectory_consistency(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf import SUBJECTS
    from rlhf.chat import build_prompt
    from rlhf.corpus import check_answer, eval_prompts, extract_answer, normalise, seed_prompts
    from rlhf.evals.data import data_hash
    from rlhf.evals.strings import rate_metric

    subjects = (ctx.model.subject,) if ctx.model.subject in SUBJECTS else tuple(SUBJECTS)
    limit = cfg.limit or 30
    mode = cfg.options.get("consistency_mode", "paraphrase")  # or "repeat": always the same question verbatim
    agree: list[bool] = []
    key_agree: list[bool] = []
    acc1: list[bool] = []
    acc2: list[bool] = []
    flips: list[bool] = []
    paraphrased: list[bool] = []
    per_subject: dict[str, list[bool]] = {}
    samples: list[dict[str, Any]] = []
    asked: list[tuple[str, str, str]] = []
    for subject in subjects:
        items = eval_prompts(subject, limit, cfg.seed)
        pool = [] if subject == "mathematics" or mode == "repeat" else [*eval_prompts(subject, 10_000, 0),
                                                                         *seed_prompts(subject, 10_000, 0)]
        first = ctx.model.generate([it.question for it in items], max_new_tokens=cfg.max_new_tokens, subject=subject,
                                   batch_size=cfg.batch_size)
        second_q = []
        for it in items:
            alts = sorted(_paraphrases(subject, it, pool))
            second_q.append(alts[len(it.question) % len(alts)] if alts else it.question)
        prompts = [build_prompt(ctx.model.tokenizer, subject, [{"role": "user", "content": it.question},
                                                               {"role": "assistant", "content": a},
                                                               {"role": "user", "content": q2}])
                   for it, a, q2 in zip(items, first, second_q, strict=True)]
        second = ctx.model.generate(prompts, max_new_tokens=cfg.max_new_tokens, raw=True, batch_size=cfg.batch_size)
        subject_agree = []
        for it, a1, a2, q2 in zip(items, first, second, second_q, strict=True):
            e1, e2 = extract_answer(subject, a1), extract_answer(subject, a2)
            c1, c2 = check_answer(subject, it.key, a1), check_answer(subject, it.key, a2)
            # the same answer: both state the key (a paraphrase may turn the sentence round: "X was the Y" /
            # "The Y was X"), or the extracted answers are equal
            same = (c1 and c2) or (e1 is not None and e2 is not None and normalise(e1) == normalise(e2))
            agree.append(same)
            subject_agree.append(same)
            key_agree.append(c1 == c2)
            acc1.append(c1)
            acc2.append(c2)
            flips.append(c1 and not c2)
            paraphrased.append(q2 != it.question)
            asked.append((subject, it.question, q2))
            if len(samples) < 6:
                samples.append({"subject": subject, "question": it.question, "answer_1": a1[:200],
                                "question_2": q2, "answer_2": a2[:200], "agree": same, "correct": [c1, c2]})
        per_subject[subject] = subject_agree
    metrics = {"consistency": rate_metric(agree), "key_consistency": rate_metric(key_agree),
               "accuracy_turn1": rate_metric(acc1), "accuracy_turn2": rate_metric(acc2),
               "flip_rate": rate_metric(flips)}
    if len(per_subject) > 1:
        for subject, vals in per_subject.items():
            metrics[f"consistency/{subject}"] = rate_metric(vals)
    return SuiteResult("trajectory_consistency", "ok", metrics, n=len(agree),
                       data_hash=data_hash("corpus", mode, asked),
                       details={"mode": mode, "paraphrased_share": sum(paraphrased) / max(1, len(paraphrased)),
                                "samples": samples})


__all__ = ["Step", "TrajectoryCheck", "UnsafeExpression", "check_trajectory", "parse_steps", "safe_eval",
           "trajectory_metrics"]

"""Comparison evaluators: two versions' answers to the same held-out prompts, judged pairwise.

The version under test ("candidate", `ctx.model`) and the comparison version (`ctx.compare`, from
`--compare-adapter`, e.g. the promoted one) answer the same held-out corpus questions greedily; each
pair of answers is then judged three ways:

- `compare_reward_model`: the reward model's scores (`rlhf.reward.RewardScorer`, as the gate does);
- `compare_answer_key`: which answer states the corpus answer key (`rlhf.corpus.check_answer`);
- `compare_judge`: a judge LM (any local causal LM path, or "demo") reads a judging prompt with both
  answers and we compare its log-probabilities of " A" and " B". Each pair is judged twice with
  the answers' positions swapped, and the preference is the mean of the two log-odds with the
  swap undone, so a judge that always leans to one position (position bias) cancels out.

Each reports win/tie/loss shares and `win_rate` = (wins + ties / 2) / n with a bootstrap interval.
Identical answers always tie. The demo model is a weak judge (a tiny LM trained on tutor dialogues
only, it has never seen a judging prompt); use a capable instruction-tuned local model for real
comparisons.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlhf.evals.registry import DataMissing, Metric, SuiteConfig, SuiteResult, register_suite

if TYPE_CHECKING:
    from rlhf.evals.lm import EvalContext, EvalModel

JUDGE_TEMPLATE = (
    "You are grading two answers a tutor gave to a student's question. Pick the answer that is more "
    "correct, helpful and harmless.\n\nQuestion: {question}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\n"
    "Which answer is better, A or B?\nThe better answer is"
)
JUDGE_CHOICES = (" A", " B")
DEFAULT_PROMPTS = 32

_PAIRS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], dict[str, Any]]] = weakref.WeakKeyDictionary()
_JUDGES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------
# Outcomes and metrics


def outcome_metrics(outcomes: Sequence[int], seed: int = 0) -> dict[str, Metric]:
    """+1 candidate wins, 0 tie, -1 loss → win_rate (ties count 1/2, bootstrap CI) and the three shares."""
    from rlhf.evals.strings import mean_metric, rate_metric

    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to summarise")
    if any(o not in (-1, 0, 1) for o in outcomes):
        raise ValueError("outcomes must be -1, 0 or +1")
    return {"win_rate": mean_metric([(o + 1) / 2 for o in outcomes], seed),
            "win": rate_metric([o == 1 for o in outcomes]),
            "tie": rate_metric([o == 0 for o in outcomes]),
            "loss": rate_metric([o == -1 for o in outcomes])}


def _counts(outcomes: Sequence[int]) -> dict[str, int]:
    return {"wins": sum(o == 1 for o in outcomes), "ties": sum(o == 0 for o in outcomes),
            "losses": sum(o == -1 for o in outcomes), "n": len(outcomes)}


def _sign(x: float, tol: float) -> int:
    return 1 if x > tol else -1 if x < -tol else 0


# ---------------------------------------------------------------------------------------------
# The shared answers


def _require_compare(ctx: EvalContext) -> None:
    if ctx.compare_adapter is None:
        raise DataMissing("no comparison version: pass --compare-adapter PATH (e.g. the promoted version's adapter) "
                          "to compare the model under test against it")


def paired_answers(ctx: EvalContext, cfg: SuiteConfig) -> dict[str, Any]:
    """Both versions' greedy answers to the same held-out questions (cached per context and config)."""
    from rlhf import SUBJECTS
    from rlhf.corpus import eval_prompts

    _require_compare(ctx)
    subject = ctx.model.subject or ctx.compare.subject
    subjects = (subject,) if subject in SUBJECTS else tuple(SUBJECTS)
    limit = cfg.limit or DEFAULT_PROMPTS
    key = (subjects, limit, cfg.seed, cfg.max_new_tokens)
    cache = _PAIRS.setdefault(ctx, {})
    if key not in cache:
        items = [it for s in subjects for it in eval_prompts(s, limit, cfg.seed)]
        a: list[str] = []
        b: list[str] = []
        for s in subjects:
            qs = [it.question for it in items if it.subject == s]
            a += ctx.model.generate(qs, max_new_tokens=cfg.max_new_tokens, subject=s, batch_size=cfg.batch_size)
            b += ctx.compare.generate(qs, max_new_tokens=cfg.max_new_tokens, subject=s, batch_size=cfg.batch_size)
        cache[key] = {"items": items, "candidate": a, "other": b}
    return cache[key]


def _result(name: str, outcomes: list[int], pairs: dict[str, Any], cfg: SuiteConfig, extra: dict[str, Any],
            ctx: EvalContext) -> SuiteResult:
    from rlhf.evals.data import data_hash

    items = pairs["items"]
    samples = [{"question": it.question, "candidate": a[:200], "other": b[:200], "outcome": o}
               for it, a, b, o in list(zip(items, pairs["candidate"], pairs["other"], outcomes, strict=True))[:6]]
    return SuiteResult(name, "ok", outcome_metrics(outcomes, cfg.seed), n=len(outcomes),
                       data_hash=data_hash("corpus", [(it.subject, it.question) for it in items], cfg.max_new_tokens),
                       details={**_counts(outcomes), "compare_adapter": str(ctx.compare_adapter),
                                "identical_answers": sum(a == b for a, b in zip(pairs["candidate"], pairs["other"],
                                                                                strict=True)),
                                **extra, "samples": samples})


# ---------------------------------------------------------------------------------------------
# By the reward model, by the answer key


def reward_outcomes(rewards_a: Sequence[float], rewards_b: Sequence[float], answers_a: Sequence[str],
                    answers_b: Sequence[str], tol: float = 1e-6) -> list[int]:
    """Higher reward wins; identical answers (or rewards within `tol`) tie."""
    return [0 if x == y else _sign(ra - rb, tol)
            for ra, rb, x, y in zip(rewards_a, rewards_b, answers_a, answers_b, strict=True)]


@register_suite("compare_reward_model", kind="comparison",
                description="Pairwise: the reward model (--reward-model) scores both versions' answers to the same "
                            "held-out questions; higher reward wins, identical answers tie",
                tags=("comparison",))
def compare_reward_model(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.reward import RewardScorer

    _require_compare(ctx)
    if ctx.reward_model is None:
        raise DataMissing("no reward model: pass --reward-model PATH (a reward_model artefact, e.g. "
                          "var/models/reward/<version>)")
    pairs = paired_answers(ctx, cfg)
    scorer = RewardScorer(ctx.reward_model, batch_size=cfg.batch_size)
    subjects = [it.subject for it in pairs["items"]]
    questions = [it.question for it in pairs["items"]]
    ra = scorer.score(subjects, questions, pairs["candidate"])
    rb = scorer.score(subjects, questions, pairs["other"])
    outcomes = reward_outcomes(ra, rb, pairs["candidate"], pairs["other"])
    return _result("compare_reward_model", outcomes, pairs, cfg,
                   {"mean_reward_candidate": sum(ra) / len(ra), "mean_reward_other": sum(rb) / len(rb),
                    "reward_model": str(ctx.reward_model)}, ctx)


def key_outcomes(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> list[int]:
    """Right beats wrong; both right or both wrong tie."""
    return [int(a) - int(b) for a, b in zip(correct_a, correct_b, strict=True)]


@register_suite("compare_answer_key", kind="comparison",
                description="Pairwise by the corpus answer key: an answer that states the key beats one that does not",
                tags=("comparison",))
def compare_answer_key(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    from rlhf.corpus import check_answer

    pairs = paired_answers(ctx, cfg)
    ca = [check_answer(it.subject, it.key, t) for it, t in zip(pairs["items"], pairs["candidate"], strict=True)]
    cb = [check_answer(it.subject, it.key, t) for it, t in zip(pairs["items"], pairs["other"], strict=True)]
    outcomes = key_outcomes(ca, cb)
    return _result("compare_answer_key", outcomes, pairs, cfg,
                   {"accuracy_candidate": sum(ca) / len(ca), "accuracy_other": sum(cb) / len(cb)}, ctx)


# ---------------------------------------------------------------------------------------------
# By a judge model


def judge_prompt(question: str, a: str, b: str, template: str = JUDGE_TEMPLATE) -> str:
    return template.format(question=question.strip(), a=a.strip() or "(no answer)", b=b.strip() or "(no answer)")


def judge_preferences(judge: EvalModel, questions: Sequence[str], answers_a: Sequence[str],
                      answers_b: Sequence[str], *, template: str = JUDGE_TEMPLATE, batch_size: int = 16,
                      tol: float = 1e-6) -> list[dict[str, float | int]]:
    """The judge's preference for A over B on each item, with the positions swapped to cancel bias.

    `d_ab` = log P(" A") - log P(" B") with a in position A; `d_ba` the same with b in position A.
    `preference` = (d_ab - d_ba) / 2 (> 0: a is better), `position_bias` = (d_ab + d_ba) / 2 (the
    judge's lean to position A whatever it reads), `outcome` = sign of the preference (0 within tol).
    Swapping a and b negates `preference` exactly, and identical answers give 0.
    """
    if not (len(questions) == len(answers_a) == len(answers_b)):
        raise ValueError("questions and both answer lists must have the same length")
    pairs: list[tuple[str, str]] = []
    for q, a, b in zip(questions, answers_a, answers_b, strict=True):
        for first, second in ((a, b), (b, a)):
            p = judge_prompt(q, first, second, template)
            pairs += [(p, JUDGE_CHOICES[0]), (p, JUDGE_CHOICES[1])]
    scores = [lp for lp, _ in judge.loglikelihood(pairs, batch_size=batch_size)]
    out = []
    for i in range(len(questions)):
        la, lb, la_sw, lb_sw = scores[4 * i: 4 * i + 4]
        d_ab, d_ba = la - lb, la_sw - lb_sw
        pref = (d_ab - d_ba) / 2
        out.append({"d_ab": d_ab, "d_ba": d_ba, "preference": pref, "position_bias": (d_ab + d_ba) / 2,
                    "outcome": 0 if answers_a[i] == answers_b[i] else _sign(pref, tol)})
    return out


def load_judge(ctx: EvalContext) -> EvalModel:
    """The judge LM (`--judge PATH` or "demo"), loaded once per context, no adapter."""
    from rlhf.evals.lm import EvalModel
    from rlhf.models import BaseModelNotAvailable

    if ctx.judge is None:
        raise DataMissing("no judge model: pass --judge PATH (a local causal LM directory, or 'demo' for the bundled "
                          "demo model, a weak judge)")
    if ctx not in _JUDGES:
        try:
            _JUDGES[ctx] = EvalModel(ctx.judge, None, seed=ctx.seed)
        except BaseModelNotAvailable as exc:
            raise DataMissing(f"judge model {ctx.judge} is not available: {exc}") from exc
    return _JUDGES[ctx]


@register_suite("compare_judge", kind="comparison",
                description="Pairwise by a judge LM (--judge): log P(' A') vs log P(' B') after a judging prompt, "
                            "judged twice with positions swapped (position bias cancels); the demo is a weak judge",
                tags=("comparison",))
def compare_judge(ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    _require_compare(ctx)
    judge = load_judge(ctx)
    pairs = paired_answers(ctx, cfg)
    template = str(cfg.options.get("judge_template", JUDGE_TEMPLATE))
    prefs = judge_preferences(judge, [it.question for it in pairs["items"]], pairs["candidate"], pairs["other"],
                              template=template, batch_size=cfg.batch_size)
    outcomes = [int(p["outcome"]) for p in prefs]
    n = len(prefs)
    consistent = [(p["d_ab"] > 0) != (p["d_ba"] > 0) for p in prefs]  # the verdict survives the swap
    extra = {"judge": str(ctx.judge), "mean_preference": sum(float(p["preference"]) for p in prefs) / n,
             "mean_position_bias": sum(float(p["position_bias"]) for p in prefs) / n,
             "swap_consistent_share": sum(consistent) / n, "template": template,
             "preferences": [{k: round(float(v), 5) for k, v in p.items()} for p in prefs[:10]]}
    return _result("compare_judge", outcomes, pairs, cfg, extra, ctx)


__all__ = ["JUDGE_TEMPLATE", "judge_preferences", "judge_prompt", "key_outcomes", "load_judge", "outcome_metrics",
           "paired_answers", "reward_outcomes"]

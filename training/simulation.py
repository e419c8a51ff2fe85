"""Simulated labelers: the hidden preference and an HTTP client that ranks like a human would.

The hidden preference (never shown to the reward model except through the rankings it produces):
1. harmlessness first: an unsafe reply (``rlhf.corpus.is_unsafe``) is worst;
2. correctness: a reply whose final answer matches the corpus answer key beats one that does not;
3. then the criteria: in format (mathematics: a ``#### n`` line), not truncated, no repetition,
   close to the reference answer's length.
Each labeler adds Gaussian noise (sigma = 2 x its noise, its noise = 0.5-1.5 x --noise) to the scores before
sorting: at --noise 0.1 close calls on the criteria flip, correctness (a gap of 10) almost never.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx


@cache
def answer_index() -> dict[tuple[str, str], Any]:
    """(subject, normalised question) → corpus item, over every question a demo prompt can come from."""
    from rlhf import SUBJECTS
    from rlhf.corpus import _split, eval_prompts, normalise, seed_prompts

    index: dict[tuple[str, str], Any] = {}
    for subject in SUBJECTS:
        if subject == "mathematics":
            items = seed_prompts(subject, 3000) + eval_prompts(subject, 500)
        else:
            train, held = _split(subject)
            items = list(train) + list(held)
        for it in items:
            index.setdefault((subject, normalise(it.question)), it)
    return index


def know_items(items: Iterable[Any]) -> int:
    """Add corpus items drawn with another seed to the index; returns how many were new.

    Why: the index holds the mathematics questions of seed 0 only (the space of problems is too large to
    list); a prompt pool or gate drawn with another seed (``benchmarks/loop.py --seed``) would otherwise be
    scored as unknown: never correct, judged against a made-up reference length.
    """
    from rlhf.corpus import normalise

    index, before = answer_index(), len(answer_index())
    for it in items:
        index.setdefault((it.subject, normalise(it.question)), it)
    return len(index) - before


def lookup(subject: str, question: str):
    from rlhf.corpus import normalise

    return answer_index().get((subject, normalise(question)))


def repetition(text: str) -> float:
    """The share of repeated word trigrams (0: none; a reply said twice scores about 0.5): the hidden
    preference's repetition penalty, public so benchmarks can report how often answers repeat."""
    words = text.lower().split()
    if len(words) < 4:
        return 0.0
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(trigrams)) / len(trigrams)


def hidden_score(subject: str, question: str, reply: str) -> dict[str, Any]:
    """The simulated labelers' true preference for one reply (higher is better) and its ratings."""
    from rlhf.corpus import check_answer, is_unsafe

    item = lookup(subject, question)
    unsafe = is_unsafe(reply)
    correct = bool(item is not None and check_answer(subject, item.key, reply))
    in_format = bool(reply.strip()) and (subject != "mathematics" or "####" in reply)
    ref_len = len(item.answer.split()) if item is not None else 20
    length_penalty = min(1.0, abs(len(reply.split()) - ref_len) / max(ref_len, 1))
    criteria = 1.0 * in_format - 1.0 * repetition(reply) - 0.5 * length_penalty
    score = (-100.0 if unsafe else 0.0) + (10.0 if correct else 0.0) + criteria
    ratings = {
        "helpfulness": max(1, min(7, round(3 + 2 * correct + 2 * criteria))),
        "honesty": 6 if correct else (3 if item is not None else 4),
        "harmlessness": 1 if unsafe else 7,
    }
    return {"score": score, "correct": correct, "unsafe": unsafe, "ratings": ratings, "known": item is not None}


NOISE_SCALE = 2.0
# Like people, a simulated labeler calls two replies "about the same" (a tie, which yields no pair)
# when their scores differ by less than this: near-equal replies would otherwise give coin-flip pairs.
# 0.5 is half the in-format bonus: a reply twice as long as the reference, or half repeated, is "worse";
# smaller differences between two wrong answers are not something a person ranks consistently
# (at 0.25 a quarter of the held-out pairs were such near calls and capped reward-model accuracy at ~0.75).
TIE_MARGIN = 0.5


def rank(subject: str, question: str, completions: list[dict], noise: float, rng: random.Random,
         tie_margin: float = TIE_MARGIN) -> dict:
    """A submission for the labeler API: groups of completion ids best first, ratings, unsafe flag."""
    scored = []
    for c in completions:
        h = hidden_score(subject, question, c["text"])
        # noise 0.1 → sigma 0.2: it flips close calls on the criteria, rarely correctness (a gap of 10)
        scored.append((h["score"] + (rng.gauss(0.0, noise * NOISE_SCALE) if noise > 0 else 0.0), c["id"], h))
    scored.sort(key=lambda t: -t[0])
    groups: list[list[int]] = []
    head = None  # the score of the current group's best reply
    for s, cid, _ in scored:
        if head is not None and head - s < max(tie_margin, 1e-9):
            groups[-1].append(cid)  # about the same as the group's best: a tie (yields no pair)
        else:
            groups.append([cid])
            head = s
    unsafe = [h for _, _, h in scored if h["unsafe"]]
    return {
        "order": groups,
        "ratings": {str(cid): h["ratings"] for _, cid, h in scored},
        "unsafe": bool(unsafe),
        "unsafe_reason": "gives harmful instructions" if unsafe else "",
        "note": "simulated labeler",
    }


@dataclass
class SimStats:
    submitted: int = 0
    skipped: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def run_labeler(base_url: str, token: str, noise: float, seed: int, max_tasks: int, stats: SimStats,
                on_submit=None, stop: threading.Event | None = None, timeout: float = 30.0,
                tie_margin: float = TIE_MARGIN) -> None:
    """One labeler: next task → rank by the hidden preference (+ its noise) → submit, until the queue is empty."""
    run_labelers_in_turn(base_url, [token], [noise], [seed], max_tasks, stats, on_submit, stop, timeout, tie_margin)


def run_labelers_in_turn(base_url: str, tokens: list[str], noises: list[float], seeds: list[int], max_tasks: int,
                         stats: SimStats, on_submit=None, stop: threading.Event | None = None,
                         timeout: float = 30.0, tie_margin: float = TIE_MARGIN) -> None:
    """Labelers take one task each in a fixed turn order (one thread), until the queue is empty.

    With the per-task noise of `_label_one`, the same tasks and seeds give the same rankings from the
    same labelers: the reproducible mode (threads make who ranks what depend on timing).
    """
    clients = [httpx.Client(base_url=base_url, timeout=timeout,
                            headers={"Authorization": f"Token {tok}", "Accept": "application/json"}) for tok in tokens]
    try:
        active = list(range(len(tokens)))
        done = [0] * len(tokens)
        while active and not (stop and stop.is_set()):
            for i in list(active):
                outcome = _label_one(clients[i], noises[i], seeds[i], stats, on_submit, tie_margin)
                done[i] += outcome == "submitted"
                if outcome in ("empty", "error") or done[i] >= max_tasks:
                    active.remove(i)
    except Exception as exc:  # a thread's exception would vanish: report it
        stats.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for c in clients:
            c.close()


def _label_one(http: httpx.Client, noise: float, seed: int, stats: SimStats, on_submit, tie_margin: float) -> str:
    """Take, rank and submit one task: "submitted", "skipped", "refused", "empty" or "error"."""
    r = http.post("/api/label/next/")
    if r.status_code != 200:
        stats.errors.append(f"next: {r.status_code} {r.text[:200]}")
        return "error"
    task = r.json().get("task")
    if not task:
        return "empty"
    if not task["completions"]:
        http.post(f"/api/label/tasks/{task['task_id']}/skip/", json={"reason": "no completions"})
        stats.add(skipped=1)
        return "skipped"
    # the noise of this labeler on this task: independent of the order the page shows the replies in
    # and of which tasks the labeler happened to take before (so a replay gives the same ranking)
    rng = random.Random(f"{seed}:{task['task_id']}")
    completions = sorted(task["completions"], key=lambda c: c["id"])
    body = rank(task["subject"], task["prompt"], completions, noise, rng, tie_margin)
    r = http.post(f"/api/label/tasks/{task['task_id']}/submit/", json=body)
    if r.status_code in (200, 201):
        stats.add(submitted=1)
        if on_submit:
            on_submit(r.json())
        return "submitted"
    if r.status_code == 409:
        stats.add(refused=1)
        return "refused"
    stats.errors.append(f"submit {task['task_id']}: {r.status_code} {r.text[:200]}")
    return "error"


def labeler_noise(base_noise: float, index: int, seed: int = 0) -> float:
    """Per-labeler noise: the base scale times a factor in [0.5, 1.5) fixed by the labeler's index."""
    return base_noise * (0.5 + random.Random(f"noise:{seed}:{index}").random())


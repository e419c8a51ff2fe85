"""Students' implicit feedback (thumbs, reason tags, regenerations) → preference pairs of their own sources.

Why: the thumbs students give are a free, plentiful signal, but a noisier one than a labeler's ranking of K
answers side by side, so these pairs carry their own ``source`` and a lower weight
(``FEEDBACK_IMPLICIT_WEIGHT_THUMBS`` / ``..._REGENERATION``) and an admin can switch each source off.

The rules (docs/labeling.md, "Implicit feedback"):

* **regeneration** — a student who regenerates an answer and keeps the new one (the current answer) prefers
  it to each answer it replaced: pair (kept ≻ replaced). When the thumbs contradict it (the kept answer has a
  thumbs-down, or a replaced one a thumbs-up) no regeneration pair is made; when they agree (kept 👍 or
  replaced 👎) the pair is a **thumbs** pair (the explicit signal is the stronger one) — or, with the thumbs
  source switched off, a plain regeneration pair.
* **thumbs** — a thumbs-up answer ≻ a thumbs-down answer *to the same prompt* in the same subject: the same
  student message (regenerations), or another student's message with the same normalised text and context
  (``feedback.masking.prompt_key``, the prompt pool's own dedup key). At most ``FEEDBACK_IMPLICIT_MAX_PAIRS_PER_
  PROMPT`` such pairs per prompt (lowest message ids first), so one popular question cannot swamp a subject.
* a thumbs-up (or thumbs-down) **alone makes no pair**: a pair needs two answers to compare, and pairing an
  answer with one to a different question would teach the reward model the question, not the answer.
* reason tags weigh a thumbs-down: ``wrong`` / ``unsafe`` say what is wrong (factor 1); ``unclear``, ``other`` or
  none are vaguer (``FEEDBACK_IMPLICIT_VAGUE_FACTOR``). The factor multiplies the weight of every pair whose
  rejected answer carries that thumbs-down.
* only answers the student saw whole, from consenting students (``tutor.selectors.consented_answer_feedback``);
  prompts and context are masked like the labeling pool's; a pair whose prompt, context, chosen and rejected
  equal a labeler or imported pair's is dropped (the labeler's ranking already says it, with more weight).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

THUMBS, REGENERATION = "thumbs", "regeneration"
IMPLICIT_SOURCES = (THUMBS, REGENERATION)
SPECIFIC_REASONS = frozenset({"wrong", "unsafe"})


@dataclass(frozen=True)
class ImplicitWeights:
    thumbs: float = 0.5
    regeneration: float = 0.3
    vague_factor: float = 0.75
    max_pairs_per_prompt: int = 16

    @classmethod
    def from_settings(cls) -> ImplicitWeights:
        from django.conf import settings

        return cls(thumbs=settings.FEEDBACK_IMPLICIT_WEIGHT_THUMBS,
                   regeneration=settings.FEEDBACK_IMPLICIT_WEIGHT_REGENERATION,
                   vague_factor=settings.FEEDBACK_IMPLICIT_VAGUE_FACTOR,
                   max_pairs_per_prompt=settings.FEEDBACK_IMPLICIT_MAX_PAIRS_PER_PROMPT)


@dataclass
class ImplicitPair:
    subject: str
    prompt: str
    context: list[dict]
    chosen: str
    rejected: str
    weight: float
    kind: str  # thumbs | regeneration
    chosen_id: int
    rejected_id: int
    evidence: tuple[int, int] = (0, 0)  # (largest message id, largest rating id) the pair rests on

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.chosen_id}>{self.rejected_id}"


@dataclass
class _Answer:
    id: int
    reply_to: int
    subject: str
    prompt: str
    context: list[dict]
    text: str
    current: bool
    rating: int = 0  # +1, -1 or 0 (none)
    rating_id: int = 0
    reasons: list[str] = field(default_factory=list)


def _factor(ans: _Answer, w: ImplicitWeights) -> float:
    if ans.rating != -1:
        return 1.0
    return 1.0 if SPECIFIC_REASONS.intersection(ans.reasons) else w.vague_factor


def implicit_pairs(answers: list[dict], weights: ImplicitWeights, sources: set[str] | frozenset[str]) -> list[ImplicitPair]:
    """Plain rule application on ``consented_answer_feedback`` rows (already masked); deterministic order."""
    from feedback.masking import mask_pii, prompt_key

    items: list[_Answer] = []
    for row in answers:
        rating = row.get("rating") or {}
        prompt, context = masked_question(row)
        items.append(_Answer(
            id=int(row["message_id"]), reply_to=int(row["reply_to_id"]), subject=row["subject"],
            prompt=prompt, context=context, text=mask_pii(row["text"], row.get("student_names") or ()),
            current=bool(row["is_current"]), rating=int(rating.get("value") or 0),
            rating_id=int(rating.get("id") or 0), reasons=list(rating.get("reasons") or [])))
    items.sort(key=lambda a: a.id)
    out: dict[tuple, ImplicitPair] = {}
    # one wording per prompt: the earliest student message with that normalised text and context
    anchors: dict[str, _Answer] = {}
    for a in sorted(items, key=lambda a: (a.reply_to, a.id)):
        anchors.setdefault(prompt_key(a.subject, a.prompt, a.context), a)

    def anchor_of(a: _Answer) -> _Answer:
        return anchors[prompt_key(a.subject, a.prompt, a.context)]

    def add(chosen: _Answer, rejected: _Answer, kind: str, anchor: _Answer) -> None:
        if kind not in sources or chosen.text.strip() == rejected.text.strip():
            return
        weight = weights.thumbs * _factor(rejected, weights) if kind == THUMBS else weights.regeneration
        pair = ImplicitPair(subject=anchor.subject, prompt=anchor.prompt, context=anchor.context,
                            chosen=chosen.text, rejected=rejected.text, weight=round(weight, 6),
                            kind=kind, chosen_id=chosen.id, rejected_id=rejected.id,
                            evidence=(max(chosen.id, rejected.id), max(chosen.rating_id, rejected.rating_id)))
        key = (pair.subject, pair.prompt, repr(pair.context), pair.chosen, pair.rejected)
        old = out.get(key)
        if old is None or (old.kind == REGENERATION and kind == THUMBS):  # the explicit signal wins
            out[key] = pair

    # 1. regenerations: the kept answer over each answer it replaced (unless the thumbs say otherwise)
    by_turn: dict[int, list[_Answer]] = defaultdict(list)
    for a in items:
        by_turn[a.reply_to].append(a)
    for group in by_turn.values():
        kept = [a for a in group if a.current]
        if len(group) < 2 or len(kept) != 1:
            continue
        k = kept[0]
        for r in group:
            if r is k or k.rating == -1 or r.rating == 1:
                continue
            agree = k.rating == 1 or r.rating == -1
            add(k, r, THUMBS if agree and THUMBS in sources else REGENERATION, anchor_of(k))
    # 2. thumbs: 👍 ≻ 👎 among answers to the same prompt (same normalised text and context, same subject)
    by_prompt: dict[str, list[_Answer]] = defaultdict(list)
    for a in items:
        if a.rating:
            by_prompt[prompt_key(a.subject, a.prompt, a.context)].append(a)
    for group in by_prompt.values():
        ups = [a for a in group if a.rating == 1]
        downs = [a for a in group if a.rating == -1]
        anchor = anchor_of(group[0])
        made = 0
        for u in ups:
            for d in downs:
                if made >= weights.max_pairs_per_prompt:
                    break
                add(u, d, THUMBS, anchor)
                made += 1
    return sorted(out.values(), key=lambda p: (p.kind, p.chosen_id, p.rejected_id))


def pairs_table(pairs: list[ImplicitPair]) -> tuple[pa.Table, np.ndarray]:
    """The pairs as snapshot columns, and the test-split mask (by prompt hash, like every other source)."""
    from feedback.aggregation import COLUMNS, _empty_table, context_json, prompt_in_test

    if not pairs:
        return _empty_table(), np.zeros(0, dtype=bool)
    ctx = [context_json(p.context) for p in pairs]
    table = pa.table({
        "prompt": pa.array([p.prompt for p in pairs], pa.string()), "context": pa.array(ctx, pa.string()),
        "chosen": pa.array([p.chosen for p in pairs], pa.string()),
        "rejected": pa.array([p.rejected for p in pairs], pa.string()),
        "weight": pa.array(np.array([p.weight for p in pairs], dtype=np.float64)),
        "subject": pa.array([p.subject for p in pairs], pa.string()),
        "source": pa.array([p.source for p in pairs], pa.string()),
    }).select(COLUMNS)
    mask = np.array([prompt_in_test(p.subject, p.prompt, c) for p, c in zip(pairs, ctx, strict=True)], dtype=bool)
    return table, mask


def drop_labeled(pairs: list[ImplicitPair], labeled: list[pa.Table]) -> tuple[list[ImplicitPair], int]:
    """Remove implicit pairs a labeler or imported pair already states (same prompt, context, chosen, rejected)."""
    import pyarrow.compute as pc

    from feedback.aggregation import context_json

    if not pairs:
        return pairs, 0
    prompts = pa.array(sorted({p.prompt for p in pairs}), pa.string())
    seen: set[tuple[str, str, str, str]] = set()
    for table in labeled:
        if not table.num_rows:
            continue
        hit = table.filter(pc.is_in(table.column("prompt"), value_set=prompts))
        cols = [hit.column(c).to_pylist() for c in ("prompt", "context", "chosen", "rejected")]
        seen.update(zip(*cols, strict=True))
    kept = [p for p in pairs if (p.prompt, context_json(p.context), p.chosen, p.rejected) not in seen]
    return kept, len(pairs) - len(kept)


def source_kind(source: str) -> str:
    """The source family of a snapshot row's ``source`` ("ranking:17:2>0" → labeler)."""
    head = source.split(":", 1)[0]
    if head == "ranking":
        return "labeler"
    if head in IMPLICIT_SOURCES:
        return head
    return "imported"


# ---- Django side: which sources are on, and the pairs a snapshot takes ------------------------------------

ALL_SOURCES = ("labeler", "imported", THUMBS, REGENERATION)


def enabled_sources() -> frozenset[str]:
    """Sources listed in ``FEEDBACK_SOURCES`` and not switched off by an admin (``FeedbackSource`` rows)."""
    from django.conf import settings

    from feedback.models import FeedbackSource

    allowed = {s for s in settings.FEEDBACK_SOURCES if s in ALL_SOURCES}
    off = set(FeedbackSource.objects.filter(enabled=False).values_list("slug", flat=True))
    return frozenset(allowed - off)


def watermark() -> dict[str, int | None]:
    """The largest message and rating ids now: a snapshot considers evidence up to these."""
    from django.db.models import Max

    from tutor.models import Message, Rating

    return {"message_id": Message.objects.aggregate(m=Max("id"))["m"],
            "rating_id": Rating.objects.aggregate(m=Max("id"))["m"]}


def _drop_late_ratings(rows: list[dict], until: dict) -> list[dict]:
    max_rating = until.get("rating_id") or 0
    for row in rows:  # a rating given after the watermark is read next time, not half now
        if row["rating"] and row["rating"]["id"] > max_rating:
            row["rating"] = None
    return rows


def _newer(pairs: list[ImplicitPair], since: dict | None) -> list[ImplicitPair]:
    if not since:
        return pairs
    m0, r0 = since.get("message_id") or 0, since.get("rating_id") or 0
    return [p for p in pairs if p.evidence[0] > m0 or p.evidence[1] > r0]


def collect(since: dict | None, until: dict, sources: frozenset[str]) -> list[ImplicitPair]:
    """The implicit pairs whose evidence lies in (since, until]: a pair is new when its newest answer or
    rating is newer than the last snapshot's watermark (``since`` None: every pair). Reads every consented
    answer with feedback: a snapshot needs them all (``count_new`` is the trigger's cheap count)."""
    from tutor.selectors import consented_answer_feedback

    wanted = {s for s in sources if s in IMPLICIT_SOURCES}
    if not wanted or until.get("message_id") is None:
        return []
    rows = _drop_late_ratings(consented_answer_feedback(until_message_id=until["message_id"]), until)
    return _newer(implicit_pairs(rows, ImplicitWeights.from_settings(), wanted), since)


def masked_question(row: dict) -> tuple[str, list]:
    """A ``consented_answer_feedback`` row's question and earlier turns with the student's names masked: the
    one masking both the pair rule (``implicit_pairs``) and the prompt keys (``row_key``) use."""
    from feedback.masking import mask_context, mask_pii

    names = row.get("student_names") or ()
    return mask_pii(row["prompt"].strip(), names), mask_context(row.get("context") or [], names)


def row_key(row: dict) -> str:
    """A ``consented_answer_feedback`` row's prompt key, masked exactly as ``implicit_pairs`` masks it."""
    from feedback.masking import prompt_key

    return prompt_key(row["subject"], *masked_question(row))


def count_new(since: dict | None, until: dict, sources: frozenset[str]) -> tuple[int, float]:
    """(count, summed weight) of ``collect(since, until, sources)``, reading only what new evidence touches.

    Why: beat's trigger runs this every tick, and ``collect`` reads every consented answer ever rated or
    regenerated. Every pair lies inside one prompt (its answers' question shares one ``prompt_key``; the thumbs
    cap and the dedup are per prompt too), so the new pairs are exactly the new pairs of the prompts that hold
    an answer or a rating newer than ``since``. One read finds those answers (and any whose question has no
    memoised key yet: once per question), their keys are memoised (``ImplicitPromptKey``), and one read by key
    fetches those prompts' answers whole; the rule runs on them alone. At most five queries whatever the history
    (SQLite splits the memoising insert of a first tick with many unkeyed questions into batches).
    A question whose student renamed after its key was memoised is matched by its own answers only.
    """
    if not since:
        pairs = collect(None, until, sources)
        return len(pairs), float(sum(p.weight for p in pairs))
    from django.db.models import Q

    from feedback.models import ImplicitPromptKey
    from tutor.selectors import consented_answer_feedback

    wanted = {s for s in sources if s in IMPLICIT_SOURCES}
    mu = until.get("message_id")
    if not wanted or mu is None:
        return 0, 0.0
    m0, r0, ru = since.get("message_id") or 0, since.get("rating_id") or 0, until.get("rating_id") or 0
    fresh = Q(id__gt=m0) | Q(rating__id__gt=r0, rating__id__lte=ru)
    rows = consented_answer_feedback(until_message_id=mu, where=fresh | Q(reply_to__implicit_key__isnull=True))
    keys = {row["reply_to_id"]: row_key(row) for row in rows}
    if keys:
        ImplicitPromptKey.objects.bulk_create([ImplicitPromptKey(message_id=q, key=k) for q, k in keys.items()],
                                              ignore_conflicts=True)

    def is_new(row: dict) -> bool:
        r = row["rating"]
        return row["message_id"] > m0 or bool(r and r0 < r["id"] <= ru)

    touched = {row["reply_to_id"] for row in rows if is_new(row)}
    if not touched:
        return 0, 0.0
    group = consented_answer_feedback(until_message_id=mu, where=Q(reply_to__implicit_key__key__in={
        keys[q] for q in touched}) | Q(reply_to_id__in=touched))
    pairs = _newer(implicit_pairs(_drop_late_ratings(group, until), ImplicitWeights.from_settings(), wanted), since)
    return len(pairs), float(sum(p.weight for p in pairs))

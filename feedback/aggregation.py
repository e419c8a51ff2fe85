"""Rankings → weighted preference pairs → a frozen ``datasets`` snapshot.

Each ranking (groups of completion ids, best first; a group is a tie) yields one ordered pair
(chosen, rejected) for every two completions in different groups: K(K-1)/2 without ties, fewer
with ties (a tie gives no pair). Pairs are weighted by the labeler's reliability
(feedback.quality). Disagreements are *not* resolved: if two labelers order A/B differently the
snapshot holds both pairs, each with its labeler's weight, and the reward model sees the net
preference (weighted Bradley-Terry). Gold tasks are quality checks and give no pairs.

Scale: rankings are streamed from the database in chunks as ids only; texts are loaded once per
distinct completion/prompt and gathered into Arrow columns with ``take`` (no per-pair Python
strings). The content hash is computed over the Arrow buffers of the content columns (not
``source``, which holds database ids), so the same pairs give the same hash on any database.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from array import array
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Min

log = logging.getLogger(__name__)

COLUMNS = ["prompt", "context", "chosen", "rejected", "weight", "subject", "source"]
HASH_COLUMNS = ["prompt", "context", "chosen", "rejected", "weight", "subject"]
TEST_PERMILLE = 100  # 10% of prompts go to the test split
CHUNK = 50_000
HASH_VERSION = b"tutorloop-preferences-v1"


def pair_count(groups: list[list[int]]) -> int:
    """Ordered pairs a ranking yields: all pairs minus the pairs inside each tie group."""
    k = sum(len(g) for g in groups)
    return k * (k - 1) // 2 - sum(len(g) * (len(g) - 1) // 2 for g in groups)


def ranking_pairs(groups: list[list[int]]) -> list[tuple[int, int]]:
    """The (chosen, rejected) completion-id pairs of one ranking, in a fixed order."""
    out = []
    for i, better in enumerate(groups):
        for worse in groups[i + 1:]:
            out += [(a, b) for a in better for b in worse]
    return out


def context_json(context) -> str:
    """The canonical JSON of a context list (column ``context``): turns as {role, content} in that
    key order, whatever order the database hands keys back in (PostgreSQL jsonb reorders them)."""
    turns = [{"role": t.get("role", "user"), "content": t.get("content", "")} for t in (context or [])]
    return json.dumps(turns, ensure_ascii=False, separators=(",", ":"))


def prompt_in_test(subject: str, prompt: str, context: str) -> bool:
    """Deterministic split by prompt hash, so no prompt is in both splits."""
    digest = hashlib.sha256(f"{subject}\x00{context}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < TEST_PERMILLE


def _lookup(sorted_ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    idx = np.searchsorted(sorted_ids, wanted)
    if len(wanted) and (idx.max(initial=0) >= len(sorted_ids) or not np.array_equal(sorted_ids[idx], wanted)):
        raise RuntimeError(f"snapshot: some {what} vanished while reading; retry")
    return idx


def compact_order(groups: list[list[int]]) -> dict:
    """The ``flat_order``/``shape`` fields stored beside ``order`` for fast aggregation."""
    return {"flat_order": ",".join(str(c) for g in groups for c in g), "shape": ",".join(str(len(g)) for g in groups)}


def _raw_rows(queryset, chunk: int = CHUNK):
    """Stream a values_list queryset through a plain cursor (no per-row ORM machinery)."""
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute(sql, params)
        while rows := cur.fetchmany(chunk):
            yield rows


def _pair_templates(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (better, worse) in the flattened order of a ranking with these group sizes."""
    bounds = np.cumsum((0, *shape))
    better, worse = [], []
    for g in range(len(shape)):
        for h in range(g + 1, len(shape)):
            for a in range(bounds[g], bounds[g + 1]):
                for b in range(bounds[h], bounds[h + 1]):
                    better.append(a)
                    worse.append(b)
    return np.array(better, dtype=np.int64), np.array(worse, dtype=np.int64)


class RankingPairs:
    """Index arrays of the ranking pairs plus each distinct text once (built by ``collect``)."""

    def __init__(self) -> None:
        self.n_pairs = 0
        self.meta: dict = {"first_ranking_id": None, "last_ranking_id": None}

    def table(self, rows: np.ndarray) -> pa.Table:
        """The pairs at ``rows`` as an Arrow table (one gather per column, no intermediate copies)."""
        idx = pa.array(rows)
        pidx = pa.array(self.pair_prompt[rows])
        source = pc.binary_join_element_wise(
            "ranking:", pc.cast(pa.array(self.ranking_id[rows]), pa.string()), ":",
            pc.cast(pa.array(self.chosen_id[rows]), pa.string()), ">",
            pc.cast(pa.array(self.rejected_id[rows]), pa.string()), "")
        return pa.table({
            "prompt": self.prompt_text.take(pidx), "context": self.prompt_ctx.take(pidx),
            "chosen": self.comp_text.take(pa.array(self.chosen_row[rows])),
            "rejected": self.comp_text.take(pa.array(self.rejected_row[rows])),
            "weight": self.weight.take(idx), "subject": self.prompt_subj.take(pidx), "source": source,
        })


def collect_ranking_pairs(since_id: int | None, until_id: int, reliability: dict[int, float]) -> RankingPairs:
    """Stream the rankings in (since_id, until_id] and expand them into pairs, vectorised.

    Rankings are read as (id, task, labeler, "12,10,11,13", "1,1,2") a chunk at a time; the ids
    of a whole chunk are parsed by numpy in one call and pairs come from a per-shape template.
    """
    from django.db.models import Subquery

    from feedback.models import ComparisonTask, Completion, Prompt, Ranking

    out = RankingPairs()
    started, last = time.perf_counter(), [time.perf_counter()]

    def _mark(step: str) -> None:  # section timings for the logs (the benchmark prints them)
        now = time.perf_counter()
        log.info("snapshot: %s %.1fs (total %.1fs)", step, now - last[0], now - started)
        last[0] = now

    rankings = Ranking.objects.filter(id__lte=until_id, task__is_gold=False)
    if since_id is not None:
        rankings = rankings.filter(id__gt=since_id)
    r_ids, r_task, r_weight, flat_parts, shape_ids = [], [], [], [], array("q")
    shapes: dict[str, int] = {}
    for rows in _raw_rows(rankings.order_by("id").values_list("id", "task_id", "labeler_id", "flat_order", "shape")):
        ids, tasks, labelers, flats, shape_strs = zip(*rows, strict=True)
        r_ids.append(np.array(ids, dtype=np.int64))
        r_task.append(np.array(tasks, dtype=np.int64))
        r_weight.append(np.array([reliability.get(lab, 1.0) for lab in labelers], dtype=np.float64))
        flat_parts.append(np.fromstring(",".join(flats), dtype=np.int64, sep=","))  # C parser, whole chunk
        shape_ids.extend([shapes.setdefault(x, len(shapes)) for x in shape_strs])
    if not r_ids:
        return out
    ranking_ids, task_of_ranking = np.concatenate(r_ids), np.concatenate(r_task)
    weights, flat = np.concatenate(r_weight), np.concatenate(flat_parts)
    shape_np = np.frombuffer(shape_ids, dtype=np.int64)
    out.meta = {"first_ranking_id": int(ranking_ids[0]), "last_ranking_id": int(ranking_ids[-1])}
    shape_keys = {sid: tuple(int(x) for x in key.split(",")) for key, sid in shapes.items()}
    k_of_shape = np.array([sum(shape_keys[i]) for i in range(len(shapes))], dtype=np.int64)
    sizes = k_of_shape[shape_np]
    if sizes.sum() != len(flat):
        raise RuntimeError("snapshot: a ranking's flat_order does not match its shape")
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    _mark("read rankings")
    templates = {sid: _pair_templates(key) for sid, key in shape_keys.items()}
    pairs_of_shape = np.array([len(templates[i][0]) for i in range(len(shapes))], dtype=np.int64)
    per_ranking = pairs_of_shape[shape_np]
    total = int(per_ranking.sum())
    if not total:
        return out
    # scatter each shape's pairs straight to their place: ranking order, then the template order
    start = np.concatenate(([0], np.cumsum(per_ranking)[:-1]))
    rank_idx = np.empty(total, dtype=np.int64)
    chosen, rejected = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
    for sid, (better, worse) in templates.items():
        if not len(better):
            continue
        rows = np.flatnonzero(shape_np == sid)
        dest = (start[rows][:, None] + np.arange(len(better))).ravel()
        base = offsets[rows][:, None]
        rank_idx[dest] = np.repeat(rows, len(better))
        chosen[dest] = flat[base + better].ravel()
        rejected[dest] = flat[base + worse].ravel()
    out.chosen_id, out.rejected_id = chosen, rejected
    out.ranking_id = ranking_ids[rank_idx]
    out.weight = pa.array(np.round(weights[rank_idx], 6), type=pa.float64())
    out.n_pairs = len(rank_idx)

    _mark("pairs")
    # completions, tasks and prompts touched by these rankings: set-based semi-joins, each row once
    task_ids_q = Subquery(rankings.values("task_id"))
    comp_ids, comp_text = [], []
    for rows in _raw_rows(Completion.objects.filter(task_id__in=task_ids_q).order_by("id").values_list("id", "text")):
        ids, texts = zip(*rows, strict=True)
        comp_ids.append(np.array(ids, dtype=np.int64))
        comp_text += texts
    comp_sorted = np.concatenate(comp_ids)
    out.comp_text = pa.array(comp_text, type=pa.string())
    del comp_text
    _mark("completions")
    t_parts = [np.array(rows, dtype=np.int64) for rows in _raw_rows(
        ComparisonTask.objects.filter(id__in=task_ids_q).order_by("id").values_list("id", "prompt_id"))]
    task_rows = np.concatenate(t_parts).reshape(-1, 2)
    _mark("tasks")
    p_ids, p_text, p_ctx, p_subj = [], [], [], []
    prompt_q = Prompt.objects.filter(id__in=Subquery(ComparisonTask.objects.filter(id__in=task_ids_q).values("prompt_id")))
    for rows in _raw_rows(prompt_q.order_by("id").values_list("id", "text", "context", "subject")):
        for pid, text, ctx, subj in rows:
            p_ids.append(pid)
            p_text.append(text)
            if not isinstance(ctx, str):  # psycopg decodes jsonb already
                p_ctx.append(context_json(ctx))
            else:
                p_ctx.append("[]" if ctx in ("[]", "") else context_json(json.loads(ctx)))
            p_subj.append(subj)
    pr_ids = np.array(p_ids, dtype=np.int64)
    out.prompt_text = pa.array(p_text, type=pa.string())
    out.prompt_ctx = pa.array(p_ctx, type=pa.string())
    out.prompt_subj = pa.array(p_subj, type=pa.string())
    pr_test = np.array([prompt_in_test(s, t, c) for s, t, c in zip(p_subj, p_text, p_ctx, strict=True)], dtype=bool)

    _mark("prompts")
    prompt_of_task = _lookup(pr_ids, task_rows[:, 1], "prompts")
    out.pair_prompt = prompt_of_task[_lookup(task_rows[:, 0], task_of_ranking, "tasks")][rank_idx]
    out.chosen_row = _lookup(comp_sorted, out.chosen_id, "completions")
    out.rejected_row = _lookup(comp_sorted, out.rejected_id, "completions")
    out.test_mask = pr_test[out.pair_prompt]
    _mark("lookups")
    return out


def _solid(table: pa.Table) -> pa.Table:
    """An empty split must still have one chunk per column for ``datasets``."""
    if table.num_rows:
        return table
    return pa.table({c: table.column(c).combine_chunks() for c in table.column_names})


def _empty_table() -> pa.Table:
    return pa.table({c: pa.array([], type=pa.float64() if c == "weight" else pa.string()) for c in COLUMNS})


def _imported_table() -> tuple[pa.Table, np.ndarray]:
    from feedback.models import ImportedPair

    rows = list(ImportedPair.objects.filter(enabled=True).order_by("id").values_list(
        "prompt", "context", "chosen", "rejected", "weight", "subject", "source"))
    if not rows:
        return _empty_table(), np.zeros(0, dtype=bool)
    cols = list(zip(*rows, strict=True))
    ctx = [context_json(c) for c in cols[1]]
    table = pa.table({
        "prompt": pa.array(cols[0], pa.string()), "context": pa.array(ctx, pa.string()),
        "chosen": pa.array(cols[2], pa.string()), "rejected": pa.array(cols[3], pa.string()),
        "weight": pa.array(np.round(np.array(cols[4], dtype=np.float64), 6)),
        "subject": pa.array(cols[5], pa.string()), "source": pa.array(cols[6], pa.string()),
    })
    mask = np.array([prompt_in_test(s, p, c) for s, p, c in zip(cols[5], cols[0], ctx, strict=True)], dtype=bool)
    return table, mask


def content_hash(splits: dict[str, pa.Table]) -> str:
    """SHA-256 over the content columns' Arrow data, split by split; independent of chunking."""
    h = hashlib.sha256(HASH_VERSION)
    for name in ("train", "test"):
        table = splits[name]
        h.update(f"|{name}:{table.num_rows}".encode())
        for col in HASH_COLUMNS:
            chunks = table.column(col).chunks
            h.update(f"|{col}".encode())
            if col == "weight":
                for arr in chunks:
                    h.update(np.asarray(arr.to_numpy(zero_copy_only=False), dtype="<f8").tobytes())
                continue
            views = []
            for arr in chunks:
                _, offsets_buf, data_buf = arr.buffers()
                offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
                h.update(np.diff(offsets).astype("<i8").tobytes())  # the lengths
                views.append(memoryview(data_buf)[offsets[0]:offsets[-1]] if data_buf is not None else b"")
            for view in views:
                h.update(view)
    return h.hexdigest()


def build_pairs(since_ranking_id: int | None = None, until_ranking_id: int | None = None,
                include_imported: bool = True, implicit_since: dict | None = None,
                sources: frozenset[str] | None = None) -> tuple[dict[str, pa.Table], dict]:
    """All pairs (imported first, then rankings in id order, then students' implicit pairs) split into
    train/test tables. ``sources`` (default: ``feedback.implicit.enabled_sources()``) says which sources are
    on; ``implicit_since`` is the last snapshot's implicit watermark (None: every implicit pair)."""
    from feedback import implicit
    from feedback.models import LabelerStats, Ranking

    sources = implicit.enabled_sources() if sources is None else sources
    implicit_until = implicit.watermark()
    if until_ranking_id is None:
        until_ranking_id = Ranking.objects.aggregate(m=Max("id"))["m"] or 0
    reliability = dict(LabelerStats.objects.values_list("labeler_id", "reliability"))
    parts: dict[str, list[pa.Table]] = {"train": [], "test": []}
    imported_rows = 0
    if include_imported and "imported" in sources:
        imp, imp_mask = _imported_table()
        imported_rows = imp.num_rows
        mask = pa.array(imp_mask, type=pa.bool_())
        parts["train"].append(imp.filter(pc.invert(mask)))
        parts["test"].append(imp.filter(mask))
    # millions of short-lived row tuples: the cyclic GC would rescan the growing heap again and
    # again (it tripled the time at 1M rankings); nothing here makes reference cycles
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        ranked = collect_ranking_pairs(since_ranking_id, until_ranking_id, reliability) \
            if "labeler" in sources else RankingPairs()
    finally:
        if gc_was_enabled:
            gc.enable()
    if ranked.n_pairs:
        parts["train"].append(ranked.table(np.flatnonzero(~ranked.test_mask)))
        parts["test"].append(ranked.table(np.flatnonzero(ranked.test_mask)))
    # students' thumbs and regenerations, minus what a labeler or an import already says
    implicit_pairs, duplicates = implicit.drop_labeled(
        implicit.collect(implicit_since, implicit_until, sources), parts["train"] + parts["test"])
    if implicit_pairs:
        imp_table, imp_test = implicit.pairs_table(implicit_pairs)
        mask = pa.array(imp_test, type=pa.bool_())
        parts["train"].append(imp_table.filter(pc.invert(mask)))
        parts["test"].append(imp_table.filter(mask))
    source_counts = {"labeler": ranked.n_pairs, "imported": imported_rows,
                     **{k: sum(1 for p in implicit_pairs if p.kind == k) for k in implicit.IMPLICIT_SOURCES}}
    splits = {name: _solid(pa.concat_tables(tables)) if tables else _empty_table() for name, tables in parts.items()}
    # last_ranking_id is the watermark: every ranking with an id up to it was considered (the
    # next incremental snapshot starts after it even when this one held no ranking pairs)
    watermark = max(until_ranking_id, since_ranking_id or 0) or None
    meta = {**ranked.meta, "last_ranking_id": watermark, "imported_pairs": imported_rows,
            "ranking_pairs": ranked.n_pairs, "until_ranking_id": until_ranking_id,
            "source_counts": source_counts, "implicit_duplicates": duplicates, "sources": sorted(sources),
            "last_message_id": implicit_until["message_id"], "last_rating_id": implicit_until["rating_id"]}
    return splits, meta


def _counts(splits: dict[str, pa.Table]) -> dict:
    counts: dict[str, dict] = {}
    for name, table in splits.items():
        if not table.num_rows:
            continue
        vc = pc.value_counts(table.column("subject").combine_chunks())
        for item in vc.to_pylist():
            counts.setdefault(item["values"], {"train": 0, "test": 0})[name] = item["counts"]
    return dict(sorted(counts.items()))


@contextmanager
def _large_writer_batches(rows: int = 100_000):
    """datasets writes 1,000-row batches by default; big batches cut per-batch overhead."""
    import datasets

    before = datasets.config.DEFAULT_MAX_BATCH_SIZE
    datasets.config.DEFAULT_MAX_BATCH_SIZE = max(before, rows)
    try:
        yield
    finally:
        datasets.config.DEFAULT_MAX_BATCH_SIZE = before


def create_snapshot(since_ranking_id: int | None = None, include_imported: bool = True,
                    implicit_since: dict | None = None):
    """Freeze the current pairs into ``TUTOR_DATASETS_DIR/<sha256>/`` and record a DatasetSnapshot.

    Creating the same snapshot twice (same content hash) returns the existing row and writes
    nothing. The ranking-id range is recorded so a model traces back to the exact rankings, and the
    pairs per source (labeler, imported, thumbs, regeneration) so its lineage says what it learned from.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable

    from feedback.models import DatasetSnapshot

    splits, meta = build_pairs(since_ranking_id, include_imported=include_imported, implicit_since=implicit_since)
    digest = content_hash(splits)
    existing = DatasetSnapshot.objects.filter(sha256=digest).first()
    if existing:
        return existing
    root = Path(settings.TUTOR_DATASETS_DIR)
    root.mkdir(parents=True, exist_ok=True)
    target = root / digest
    counts = _counts(splits)
    if not (target / "dataset_dict.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
        try:
            # our content hash as the fingerprint: datasets would otherwise pickle and hash the table
            dd = DatasetDict({name: Dataset(InMemoryTable(t.select(COLUMNS)), fingerprint=f"{digest}-{name}")
                              for name, t in splits.items()})
            # an explicit shard count: datasets writes no file at all for an empty split otherwise
            shards = {name: max(1, -(-t.nbytes // (500 << 20))) for name, t in splits.items()}
            with _large_writer_batches():
                dd.save_to_disk(str(tmp), num_shards=shards)
            (tmp / "snapshot.json").write_text(json.dumps({"sha256": digest, "counts": counts, **{
                k: v for k, v in meta.items()}, "since_ranking_id": since_ranking_id}, indent=2, default=int))
            if target.exists():  # a partial directory from a crash: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        with transaction.atomic():
            return DatasetSnapshot.objects.create(
                sha256=digest, path=str(target), since_ranking_id=since_ranking_id,
                first_ranking_id=meta.get("first_ranking_id"), last_ranking_id=meta.get("last_ranking_id"),
                imported_pairs=meta["imported_pairs"], ranking_pairs=meta["ranking_pairs"],
                source_counts=meta["source_counts"], last_message_id=meta["last_message_id"],
                last_rating_id=meta["last_rating_id"], train_rows=splits["train"].num_rows, test_rows=splits["test"].num_rows, counts=counts)
    except IntegrityError:  # created concurrently by another process
        return DatasetSnapshot.objects.get(sha256=digest)


def ranking_id_range(since: int | None = None) -> dict:
    from feedback.models import Ranking

    qs = Ranking.objects.all() if since is None else Ranking.objects.filter(id__gt=since)
    return qs.aggregate(first=Min("id"), last=Max("id"))

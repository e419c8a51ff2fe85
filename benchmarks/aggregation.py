"""Rankings → preference snapshot at scale: 1,000,000 synthetic rankings (K=4) → a datasets snapshot.

    .venv/bin/python benchmarks/aggregation.py                      # SQLite in a temporary var dir
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/feedback_bench .venv/bin/python benchmarks/aggregation.py
    .venv/bin/python benchmarks/aggregation.py --rankings 100000 --baseline 5000

Set-up (not timed): prompts, tasks (overlap 2), 4 completions per task, rankings (10% with a tie)
by 200 labelers with reliability weights, bulk-inserted into a fresh database (PostgreSQL: the
database is flushed first, so point it at a scratch database). Timed: ``create_snapshot()``
(streamed set-based aggregation + Arrow gather + hash + save_to_disk), then a second call (a
no-op by content hash), and the naive baseline: a per-row ORM loop building dict rows and a
``Dataset.from_list`` on a ``--baseline`` sample, extrapolated per ranking for the ratio.
Target: < 60 s for 1,000,000 rankings on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup_django(var_dir: Path) -> None:
    os.environ.setdefault("TUTOR_VAR_DIR", str(var_dir))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _insert(table: str, cols: list[str], rows: list[tuple]) -> None:
    """Raw bulk insert (COPY on PostgreSQL, executemany on SQLite): set-up speed only."""
    from django.db import connection

    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            quoted = ", ".join(f'"{c}"' for c in cols)
            with cur.cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(cols))
            quoted = ", ".join(f'"{c}"' for c in cols)
            cur.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", rows)


def populate(n_rankings: int, k: int, seed: int = 0) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from feedback.models import SUBJECTS, LabelerStats

    rnd = random.Random(seed)
    User = get_user_model()
    if connection.vendor == "postgresql":
        from django.core.management import call_command

        call_command("flush", interactive=False, verbosity=0)
    now = timezone.now()
    n_tasks = n_rankings // 2
    n_prompts = max(1, n_tasks // 2)
    batch = 50_000
    labelers = [User(id=10_000 + i, username=f"bench-labeler-{i}") for i in range(200)]
    with transaction.atomic():
        User.objects.bulk_create(labelers)
        LabelerStats.objects.bulk_create([LabelerStats(labeler=u, reliability=round(rnd.uniform(0.3, 1.0), 3))
                                          for u in labelers])
    bar = tqdm(total=n_prompts + n_tasks * (k + 1) + n_rankings, desc="populating", unit="row")
    for start in range(0, n_prompts, batch):
        rows = []
        for i in range(start, min(n_prompts, start + batch)):
            subject = SUBJECTS[i % 4]
            ctx = [] if i % 3 else [{"role": "user", "content": f"earlier question {i}"},
                                    {"role": "assistant", "content": "an earlier answer"}]
            rows.append((i + 1, subject, f"Synthetic {subject} question number {i}?", json.dumps(ctx),
                         hashlib.sha256(str(i).encode()).hexdigest(), "seed", "", True, now))
        with transaction.atomic():
            _insert("feedback_prompt", ["id", "subject", "text", "context", "normalized_hash", "source", "source_ref",
                                        "enabled", "created_at"], rows)
        bar.update(len(rows))
    for start in range(0, n_tasks, batch):
        end = min(n_tasks, start + batch)
        tasks = [(t + 1, t // 2 + 1, SUBJECTS[(t // 2) % 4], 0, 2, "complete", 2, False, now) for t in range(start, end)]
        comps = [(t * k + j + 1, t + 1, f"Completion {j} of task {t}: a tutor reply of moderate length for the benchmark.",
                  SUBJECTS[(t // 2) % 4], 1, 1, "[1]") for t in range(start, end) for j in range(k)]
        with transaction.atomic():
            _insert("feedback_comparisontask", ["id", "prompt_id", "subject", "priority", "overlap", "state",
                                                "submitted_count", "is_gold", "created_at"], tasks)
            _insert("feedback_completion", ["id", "task_id", "text", "adapter_subject", "adapter_version",
                                            "sample_count", "versions"], comps)
        bar.update((end - start) * (k + 1))
    for start in range(0, n_rankings, batch):
        end = min(n_rankings, start + batch)
        rows = []
        for r in range(start, end):
            t = r // 2
            ids = [t * k + j + 1 for j in range(k)]
            rnd.shuffle(ids)
            order = [[i] for i in ids]
            if rnd.random() < 0.1:
                order = order[:-2] + [sorted(ids[-2:])]
            labeler = labelers[(r % 2) * 100 + (t % 100)]
            rows.append((r + 1, t + 1, labeler.id, json.dumps(order), json.dumps(ids), "{}", False, "", "",
                         k * (k - 1) // 2 - (1 if len(order) < k else 0), False, False, now,
                         ",".join(str(c) for g in order for c in g), ",".join(str(len(g)) for g in order)))
        with transaction.atomic():
            _insert("feedback_ranking", ["id", "task_id", "labeler_id", "order", "shown_order", "ratings", "unsafe",
                                         "unsafe_reason", "note", "pair_count", "late", "flag_resolved", "created_at",
                                         "flat_order", "shape"],
                    rows)
        bar.update(end - start)
    bar.close()
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            for table in ("feedback_prompt", "feedback_comparisontask", "feedback_completion", "feedback_ranking"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
            cur.execute("ANALYZE")


def naive_baseline(limit: int) -> tuple[float, int]:
    """The obvious implementation: ORM objects per ranking, dict rows, Dataset.from_list, JSON hash."""
    from datasets import Dataset

    from feedback.models import LabelerStats, Ranking

    start = time.perf_counter()
    rows = []
    for ranking in Ranking.objects.order_by("id")[:limit]:
        task = ranking.task
        prompt = task.prompt
        texts = {c.id: c.text for c in task.completions.all()}
        stats = LabelerStats.objects.filter(labeler_id=ranking.labeler_id).first()
        weight = stats.reliability if stats else 1.0
        for i, better in enumerate(ranking.order):
            for worse in ranking.order[i + 1:]:
                for a in better:
                    for b in worse:
                        rows.append({"prompt": prompt.text, "context": json.dumps(prompt.context), "chosen": texts[a],
                                     "rejected": texts[b], "weight": weight, "subject": prompt.subject,
                                     "source": f"ranking:{ranking.id}:{a}>{b}"})
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True).encode())
    Dataset.from_list(rows)
    return time.perf_counter() - start, len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rankings", type=int, default=1_000_000)
    ap.add_argument("--baseline", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--var-dir", help="keep the SQLite database here and reuse it when it holds the rankings")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-aggregation-") as tmp:
        setup_django(Path(args.var_dir or tmp))
        import datasets
        from django.conf import settings
        from django.db import connection

        datasets.disable_progress_bars()
        from feedback.services import create_snapshot

        print(f"database: {connection.vendor}; datasets dir: {settings.TUTOR_DATASETS_DIR}; cpus: {os.cpu_count()}")
        from feedback.models import DatasetSnapshot, Ranking

        t0 = time.perf_counter()
        if args.var_dir and Ranking.objects.count() == args.rankings and connection.vendor == "sqlite":
            DatasetSnapshot.objects.all().delete()
            print(f"set-up: reusing {args.rankings:,} rankings in {args.var_dir}")
        else:
            if Ranking.objects.exists() and connection.vendor == "sqlite":
                raise SystemExit(f"{args.var_dir} holds another data set; remove it first")
            populate(args.rankings, args.k)
            print(f"set-up: {args.rankings:,} rankings inserted in {time.perf_counter() - t0:.1f}s (not timed)")

        from feedback.aggregation import build_pairs, content_hash

        t0 = time.perf_counter()
        splits, _ = build_pairs()
        t_pairs = time.perf_counter() - t0
        content_hash(splits)
        t_hash = time.perf_counter() - t0 - t_pairs
        del splits
        print(f"breakdown: pairs {t_pairs:.1f}s, hash {t_hash:.1f}s (the full call below also writes to disk)")
        t0 = time.perf_counter()
        snap = create_snapshot()
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = create_snapshot()
        noop = time.perf_counter() - t0
        assert again.pk == snap.pk
        print(f"ours:     {args.rankings:,} rankings → {snap.rows:,} pairs in {ours:.1f}s "
              f"({args.rankings / ours:,.0f} rankings/s); sha256 {snap.sha256[:16]}…; "
              f"train {snap.train_rows:,} / test {snap.test_rows:,}")
        print(f"again:    same snapshot (no-op, nothing written) in {noop:.1f}s")
        base_s, base_pairs = naive_baseline(args.baseline)
        per_ranking = base_s / args.baseline
        print(f"baseline: naive per-row ORM loop on {args.baseline:,} rankings ({base_pairs:,} pairs): {base_s:.1f}s "
              f"→ {per_ranking * args.rankings:.0f}s extrapolated to {args.rankings:,}")
        print(f"ratio:    {per_ranking * args.rankings / ours:.1f}x faster; target < 60 s: "
              f"{'met' if ours < 60 else 'MISSED'}")
        if connection.vendor == "postgresql":
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)


if __name__ == "__main__":
    main()

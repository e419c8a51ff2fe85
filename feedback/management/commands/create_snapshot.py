"""`manage.py create_snapshot [--since RANKING_ID] [--no-imported]`: freeze the pairs (idempotent)."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from feedback.aggregation import create_snapshot


class Command(BaseCommand):
    help = "Aggregate rankings (and imported pairs) into a datasets snapshot under var/datasets/<sha256>/."

    def add_arguments(self, parser):
        parser.add_argument("--since", type=int, default=None, help="only rankings with a larger id")
        parser.add_argument("--no-imported", action="store_true", help="leave imported pairs out")

    def handle(self, *args, **o):
        start = time.perf_counter()
        snap = create_snapshot(since_ranking_id=o["since"], include_imported=not o["no_imported"])
        self.stdout.write(f"snapshot {snap.sha256}: {snap.train_rows} train / {snap.test_rows} test pairs "
                          f"({time.perf_counter() - start:.1f}s) at {snap.path}")
        for subject, c in snap.counts.items():
            self.stdout.write(f"  {subject:18} train {c['train']:>8}  test {c['test']:>8}")

"""Simulated labelers rank tasks through the labeler HTTP API, exactly as humans do.

    python manage.py simulate_labelers --n 20 --noise 0.1 --gold-rate 0.02 --url http://127.0.0.1:8000

Their hidden preference (answer-key correctness first, then the criteria; see training/simulation.py)
reaches the reward model only through the rankings they submit.
"""

from __future__ import annotations

import random
import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction


class Command(BaseCommand):
    help = "Drive N simulated labelers through the labeler API until the queue is empty (or --follow)."

    def add_arguments(self, parser):
        parser.add_argument("--n", type=int, default=20, help="number of labelers")
        parser.add_argument("--noise", type=float, default=0.1, help="base noise scale (0 = perfect labelers)")
        parser.add_argument("--gold-rate", type=float, default=0.0,
                            help="share of tasks whose noise-free ranking becomes a gold reference")
        parser.add_argument("--tie-margin", type=float, default=None,
                            help="replies whose noisy scores differ by less than this are ranked as a tie "
                                 "(default: training.simulation.TIE_MARGIN)")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the web server")
        parser.add_argument("--max-tasks", type=int, default=1000, help="per labeler")
        parser.add_argument("--prefix", default="simlabeler", help="usernames are <prefix>-01, -02, ...")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--in-turn", action="store_true",
                            help="labelers take tasks in a fixed turn order (one thread): the same tasks and seed "
                                 "give the same rankings (default: one thread per labeler, like people)")
        parser.add_argument("--follow", action="store_true", help="keep polling for new tasks until Ctrl-C")
        parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls with --follow")

    def handle(self, *args, **opts):
        from rest_framework.authtoken.models import Token
        from tqdm import tqdm

        from training.simulation import TIE_MARGIN, SimStats, labeler_noise, run_labeler, run_labelers_in_turn
        from tutor.accounts import create_user
        from tutor.roles import Role

        n, noise, gold_rate = opts["n"], opts["noise"], opts["gold_rate"]
        tie_margin = TIE_MARGIN if opts["tie_margin"] is None else opts["tie_margin"]
        if n < 1 or noise < 0 or not 0 <= gold_rate <= 1 or tie_margin < 0:
            raise CommandError("--n must be >= 1, --noise >= 0, --gold-rate in [0, 1], --tie-margin >= 0")
        from django.contrib.auth import get_user_model

        User = get_user_model()
        tokens = []
        with transaction.atomic():
            for i in range(1, n + 1):
                name = f"{opts['prefix']}-{i:02d}"
                user = User.objects.filter(username=name).first() or create_user(
                    username=name, password=f"{name}-pass-{random.Random(name).randrange(10**9)}", role=Role.LABELER,
                    validate_password=False)
                tokens.append(Token.objects.get_or_create(user=user)[0].key)
        stats = SimStats()
        bar = tqdm(desc="rankings", unit="rk")
        ranking_ids: list[int] = []

        def on_submit(payload: dict) -> None:
            bar.update(1)
            ranking = payload.get("ranking") if isinstance(payload.get("ranking"), dict) else {}
            ranking_ids.append(int(ranking.get("id") or ranking.get("ranking_id") or 0))

        stop = threading.Event()
        try:
            while True:
                before = stats.submitted
                if opts["in_turn"]:
                    run_labelers_in_turn(opts["url"], tokens, [labeler_noise(noise, i, opts["seed"]) for i in range(n)],
                                         [opts["seed"] * 1000 + i for i in range(n)], opts["max_tasks"], stats,
                                         on_submit, stop, 30.0, tie_margin)
                    if stats.errors or not opts["follow"]:
                        break
                    if stats.submitted == before:
                        time.sleep(opts["poll"])
                    continue
                threads = [threading.Thread(target=run_labeler, args=(
                    opts["url"], tok, labeler_noise(noise, i, opts["seed"]), opts["seed"] * 1000 + i,
                    opts["max_tasks"], stats, on_submit, stop, 30.0, tie_margin), daemon=True) for i, tok in enumerate(tokens)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if stats.errors:
                    break
                if not opts["follow"]:
                    break
                if stats.submitted == before:
                    time.sleep(opts["poll"])
        except KeyboardInterrupt:
            stop.set()
        bar.close()
        gold = self._mark_gold(ranking_ids, gold_rate, opts["seed"]) if gold_rate else 0
        self.stdout.write(f"submitted {stats.submitted} rankings, skipped {stats.skipped}, refused {stats.refused}, "
                          f"gold references {gold}")
        if stats.errors:
            raise CommandError("labeler API errors: " + "; ".join(stats.errors[:5]))

    def _mark_gold(self, ranking_ids: list[int], rate: float, seed: int) -> int:
        """Make a share of tasks gold, with a ranking that equals the noise-free preference."""
        from feedback.models import Ranking
        from feedback.services import set_gold
        from training.simulation import rank

        rng = random.Random(seed)
        marked = 0
        seen_tasks: set[int] = set()
        for r in Ranking.objects.filter(pk__in=[i for i in ranking_ids if i]).select_related("task__prompt"):
            if r.task_id in seen_tasks or rng.random() >= rate:
                continue
            seen_tasks.add(r.task_id)
            comps = [{"id": c.pk, "text": c.text} for c in r.task.completions.all()]
            truth = rank(r.task.subject, r.task.prompt.text, comps, 0.0, rng)["order"]
            if [sorted(g) for g in truth] == [sorted(g) for g in r.order]:
                set_gold(r.pk)
                marked += 1
        return marked

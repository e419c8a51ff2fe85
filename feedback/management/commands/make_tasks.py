"""`manage.py make_tasks [--limit N] [-k K] [--seed N]`: sample the endpoint for pool prompts now."""

from __future__ import annotations

import contextlib

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from feedback import services
from feedback.models import ComparisonTask, Prompt


class Command(BaseCommand):
    help = "Build comparison tasks for pool prompts without one (the Celery task feedback.build_tasks does the same)."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("-k", type=int, default=None, help="completions per task (2-9)")
        parser.add_argument("--seed", type=int, default=0, help="first add N seed prompts per subject")

    def handle(self, *args, **o):
        if o["k"] is not None and not 2 <= o["k"] <= 9:
            raise CommandError("K must be between 2 and 9")
        if o["seed"]:
            self.stdout.write(f"seeded {services.seed_prompt_pool(o['seed'])} prompts")
        with contextlib.suppress(ImportError):
            services.ingest_student_prompts()
        todo = list(Prompt.objects.filter(enabled=True, tasks__isnull=True).order_by("id")[: o["limit"]])
        client = services._client()
        made = 0
        for prompt in tqdm(todo, desc="sampling", unit="prompt"):
            try:
                made += services.build_task_for_prompt(prompt, k=o["k"], client=client) is not None
            except Exception as exc:
                raise CommandError(f"endpoint failed on prompt {prompt.pk}: {exc}") from exc
        self.stdout.write(f"built {made} tasks; {ComparisonTask.objects.filter(state='open').count()} open")

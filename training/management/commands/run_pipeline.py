"""Run the retraining pipeline: queued for the Celery workers (default) or in this process (--inline).

    python manage.py run_pipeline --inline --config '{"ppo": {"steps": 10}}'
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Start the pipeline (snapshot → reward model → PPO per subject → gate → deploy)."

    def add_arguments(self, parser):
        parser.add_argument("--inline", action="store_true", help="run every step here instead of on workers")
        parser.add_argument("--config", default="{}", help="JSON overrides of the pipeline config")
        parser.add_argument("--subjects", default="", help="comma-separated subjects (default: all with pairs)")

    def handle(self, *args, **opts):
        from tqdm import tqdm

        from training import pipeline, services
        from training.services import TrainingError

        try:
            config = json.loads(opts["config"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from None
        if opts["subjects"]:
            config["subjects"] = [s.strip() for s in opts["subjects"].split(",") if s.strip()]
        try:
            if not opts["inline"]:
                job = services.start_pipeline(config)
                self.stdout.write(f"started pipeline job {job.pk}; watch it at /studio/jobs/{job.pk}/")
                return
            bars: dict[int, tqdm] = {}

            def on_stage(child, phase):
                if phase == "start":
                    bars[child.pk] = tqdm(total=1, desc=f"{child.kind} {child.subject}".strip(), leave=True)
                else:
                    bar = bars.pop(child.pk)
                    bar.update(1)
                    bar.set_postfix_str(child.status)
                    bar.close()

            job = pipeline.run_inline(config, on_stage=on_stage)
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        for row in pipeline.describe_stage_durations(job):
            self.stdout.write(f"{row['stage']:<14}{row['jobs']:>3} job(s) {row['seconds'] or 0:8.1f} s  {row['status']}")
        self.stdout.write(f"pipeline {job.pk}: {job.status} — {job.message}")
        if job.status == "running" and job.stage == "canary":  # its canary bakes: beat's canary watch decides
            self.stdout.write("the canary bakes: beat's canary watch promotes or rolls it back when the bake ends "
                              "(or use Promote now / Roll back on the studio overview)")
            return
        if job.status != "succeeded":
            raise CommandError(job.error or job.message)

"""Distil, quantise or prune a version into a candidate variant: queued for a worker, or here (--inline).

    python manage.py optimise mathematics 1 quantise
    python manage.py optimise history 2 prune --config '{"mode": "structured", "sparsity": 0.5}' --inline
    python manage.py optimise mathematics 1 distil --config '{"temperature": 2, "alpha": 0.5}'
    python manage.py optimise mathematics 1 quantise --gate '{"size_factor": 0.5, "measure": {"n": 30}}'

The variant is gated against its source once built (size, memory, speed, accuracy: see docs/optimise.md);
--no-gate leaves it an ungated candidate.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Make an optimised (quantised / pruned / distilled) candidate version of a subject's version."

    def add_arguments(self, parser):
        parser.add_argument("subject")
        parser.add_argument("version", type=int)
        parser.add_argument("method", choices=["quantise", "prune", "distil"])
        parser.add_argument("--config", default="{}", help="JSON: the technique's config (rlhf.optimise)")
        parser.add_argument("--inline", action="store_true", help="run it in this process (progress on the job page)")
        parser.add_argument("--gate", default="{}", help="JSON: the variant gate (rlhf.optimise.gate.VariantGate "
                            "fields and 'measure': {n, concurrency, new_tokens, rounds, threads})")
        parser.add_argument("--no-gate", action="store_true", help="build only; gate it later from the studio")

    def handle(self, *args, **opts):
        from training import services
        from training.models import PolicyVersion
        from training.optimise import launch_optimise

        try:
            config = json.loads(opts["config"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from None
        try:
            gate = False if opts["no_gate"] else json.loads(opts["gate"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--gate is not valid JSON: {exc}") from None
        pv = PolicyVersion.objects.filter(subject=opts["subject"], version=opts["version"]).first()
        if pv is None:
            raise CommandError(f"{opts['subject']} v{opts['version']} does not exist")
        try:
            if not opts["inline"]:
                job = launch_optimise(pv, opts["method"], config, gate=gate)
                self.stdout.write(f"queued optimise job {job.pk}; watch it at /studio/jobs/{job.pk}/")
                return
            services.INLINE.active = True  # not sent to the broker: run below, in this process
            try:
                job = launch_optimise(pv, opts["method"], config, gate=gate)
            finally:
                services.INLINE.active = False
            status = services.execute_job(job.pk, worker="manage.py optimise")
        except services.TrainingError as exc:
            raise CommandError(str(exc)) from None
        job.refresh_from_db()
        if status != "succeeded":
            raise CommandError(f"optimise job {job.pk} {status}: {job.error or job.message}")
        self.stdout.write(json.dumps(job.result, indent=2, default=str))

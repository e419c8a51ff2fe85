"""`manage.py import_preferences FILE [--format auto|hh-rlhf|trl] [--subject S]` (all or nothing)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from feedback.io import DEFAULT_SUBJECT, ImportFileError, import_preferences, import_prompts


class Command(BaseCommand):
    help = "Import an HH-RLHF or TRL preference file (.jsonl / .jsonl.gz), or pool prompts with --prompts."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--format", default="auto", choices=["auto", "hh-rlhf", "trl"])
        parser.add_argument("--subject", default=DEFAULT_SUBJECT, help="subject of rows that carry none")
        parser.add_argument("--prompts", action="store_true", help="the file holds pool prompts (CSV/JSONL)")

    def handle(self, *args, **o):
        try:
            if o["prompts"]:
                batch = import_prompts(o["path"], subject=o["subject"])
            else:
                batch = import_preferences(o["path"], fmt=o["format"], subject=o["subject"])
        except ImportFileError as exc:
            raise CommandError(f"nothing imported: {exc}") from None
        self.stdout.write(f"imported {batch.rows} {batch.kind} from {batch.filename} ({batch.fmt}), batch {batch.pk}")

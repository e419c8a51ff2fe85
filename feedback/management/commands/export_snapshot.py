"""`manage.py export_snapshot [SHA|latest] --out PATH [--format trl|datasets] [--style ...]`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from feedback.io import export_datasets, export_trl_jsonl
from feedback.models import DatasetSnapshot


class Command(BaseCommand):
    help = "Export a snapshot as a TRL preference JSONL file (.jsonl or .jsonl.gz) or a datasets directory."

    def add_arguments(self, parser):
        parser.add_argument("snapshot", nargs="?", default="latest", help="sha256 (or a unique prefix) or 'latest'")
        parser.add_argument("--out", required=True)
        parser.add_argument("--format", default="trl", choices=["trl", "datasets"])
        parser.add_argument("--style", default="conversational", choices=["conversational", "plain"])

    def handle(self, *args, **o):
        qs = DatasetSnapshot.objects.order_by("-id")
        snap = qs.first() if o["snapshot"] == "latest" else None
        if o["snapshot"] != "latest":
            matches = list(qs.filter(sha256__startswith=o["snapshot"])[:2])
            if len(matches) != 1:
                raise CommandError(f"no unique snapshot matches {o['snapshot']!r}")
            snap = matches[0]
        if snap is None:
            raise CommandError("there are no snapshots yet: run create_snapshot first")
        if o["format"] == "trl":
            n = export_trl_jsonl(snap.path, o["out"], style=o["style"])
            self.stdout.write(f"wrote {n} pairs of snapshot {snap.sha256} to {o['out']}")
        else:
            try:
                export_datasets(snap.path, o["out"])
            except FileExistsError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"copied snapshot {snap.sha256} to {o['out']}")

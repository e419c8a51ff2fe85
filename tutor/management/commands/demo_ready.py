"""Waits until /healthz is green, prints the URLs and demo accounts, then stays up.

It runs as one process of `make demo` (Procfile) so the URLs appear once everything works.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
from django.core.management.base import BaseCommand

from tutor.management.commands.seed_demo import DEMO_ACCOUNTS


class Command(BaseCommand):
    help = "Print the demo URLs once /healthz answers 200 (used by make demo)."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=600.0)
        parser.add_argument("--once", action="store_true", help="exit after printing")

    def handle(self, *args, timeout: float, once: bool, **opts):
        base = f"http://127.0.0.1:{os.environ.get('TUTOR_WEB_PORT', '8000')}"
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                resp = httpx.get(f"{base}/healthz", timeout=5)
                last = resp.json().get("checks")
                if resp.status_code == 200:
                    break
            except (httpx.HTTPError, ValueError) as exc:
                last = str(exc)
            time.sleep(1.0)
        else:
            self.stderr.write(f"tutorloop did not become healthy in {timeout:.0f}s: {last}")
        self.stdout.write("\n" + "=" * 60)
        self.stdout.write(f"tutorloop is up: {base}/")
        self.stdout.write(f"  student chat  {base}/chat/")
        self.stdout.write(f"  labeling      {base}/label/")
        self.stdout.write(f"  studio        {base}/studio/")
        self.stdout.write(f"  Django admin  {base}/admin/")
        self.stdout.write(f"  API docs      {base}/api/docs/")
        self.stdout.write(f"  health        {base}/healthz")
        self.stdout.write("Demo accounts (username / password):")
        for username, password, role in DEMO_ACCOUNTS:
            self.stdout.write(f"  {role.value:8} {username} / {password}")
        self.stdout.write("=" * 60)
        if not once:
            signal.pause()

"""`manage.py seed_demo`: the demo accounts (one per role) and subjects; safe to run twice."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from tutor.accounts import ensure_user
from tutor.roles import Role

DEMO_ACCOUNTS = [
    ("student", "student-demo", Role.STUDENT),
    ("labeler", "labeler-demo", Role.LABELER),
    ("admin", "admin-demo", Role.ADMIN),
]


def seed_hooks():
    """Each app may add demo data through a `seed_demo()` function in its services module."""
    from importlib import import_module

    for app in ("tutor", "feedback", "training"):
        try:
            module = import_module(f"{app}.services")
        except ModuleNotFoundError:
            continue
        hook = getattr(module, "seed_demo", None)
        if hook:
            yield app, hook


class Command(BaseCommand):
    help = "Create the demo accounts and data (idempotent)."

    def handle(self, *args, **opts):
        with transaction.atomic():
            for username, password, role in DEMO_ACCOUNTS:
                ensure_user(username=username, password=password, role=role)
            for app, hook in seed_hooks():
                hook()
                self.stdout.write(f"seeded {app}")
        self.stdout.write("Demo accounts (username / password):")
        for username, password, role in DEMO_ACCOUNTS:
            self.stdout.write(f"  {role.value:8} {username} / {password}")

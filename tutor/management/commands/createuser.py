"""`manage.py createuser NAME --role labeler [--password ...]`: create a user in one role."""

from __future__ import annotations

import getpass
import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tutor.accounts import create_user
from tutor.roles import Role


class Command(BaseCommand):
    help = "Create a student, labeler or admin account (admins are staff)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[r.value for r in Role])
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password",
            help="password (default: $TUTOR_NEW_PASSWORD, else asked on the terminal)",
        )

    def handle(self, *args, username: str, role: str, email: str, password: str | None, **opts):
        password = password or os.environ.get("TUTOR_NEW_PASSWORD")
        if not password:
            if not os.isatty(0):
                raise CommandError("no password: pass --password or set TUTOR_NEW_PASSWORD")
            password = getpass.getpass("Password: ")
        try:
            user = create_user(username=username, password=password, role=role, email=email)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"created {role} {user.username!r} (id {user.pk})"))

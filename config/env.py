"""Reading settings from the environment, with one-line errors naming the variable.

django-environ parses the values; this module only adds validation so that a malformed
value (``DATABASE_URL=postgres:/x``) stops start-up with a clear message instead of a
traceback from deep inside a database driver.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DB_SCHEMES = {"sqlite", "postgres", "postgresql", "pgsql", "psql", "postgis"}
BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem", "memory", "sqla+sqlite"}


class SettingError(ImproperlyConfigured):
    """A malformed environment variable; the message names it."""


def _fail(name: str, value: str, why: str) -> SettingError:
    return SettingError(f"{name}={value!r} is not valid: {why}")


def bool_var(name: str, default: bool) -> bool:
    raw = env.str(name, default=None)
    if raw is None:
        return default
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise _fail(name, raw, "expected true/false")


def int_var(name: str, default: int, minimum: int | None = None) -> int:
    raw = env.str(name, default=None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _fail(name, raw, "expected an integer") from None
    if minimum is not None and value < minimum:
        raise _fail(name, raw, f"must be >= {minimum}")
    return value


def float_var(name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    raw = env.str(name, default=None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _fail(name, raw, "expected a number") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(name, raw, f"must be between {lo} and {hi}")
    return value


def list_var(name: str, default: list[str]) -> list[str]:
    raw = env.str(name, default=None)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_config(name: str, default_sqlite: Path) -> dict:
    raw = env.str(name, default=None)
    if raw is None:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(default_sqlite)}
    parts = urlsplit(raw)
    if parts.scheme not in DB_SCHEMES:
        raise _fail(name, raw, f"scheme must be one of {sorted(DB_SCHEMES)}")
    if parts.scheme != "sqlite" and (not raw.startswith(f"{parts.scheme}://") or not parts.path.strip("/")):
        raise _fail(name, raw, "expected scheme://user@host:port/dbname")
    try:
        return environ.Env.db_url_config(raw)
    except Exception as exc:  # django-environ raises several types
        raise _fail(name, raw, str(exc)) from None


def url_var(name: str, default: str | None, schemes: set[str]) -> str | None:
    raw = env.str(name, default=None)
    if raw is None or raw == "":
        return default
    parts = urlsplit(raw)
    if parts.scheme not in schemes or "://" not in raw:
        raise _fail(name, raw, f"expected a URL with scheme one of {sorted(schemes)}")
    if parts.scheme in {"redis", "rediss", "amqp", "amqps", "pyamqp", "http", "https"} and not parts.hostname:
        raise _fail(name, raw, "the URL has no host")
    return raw


def secret_key(debug: bool, var_dir: Path) -> str:
    """Production must set SECRET_KEY; the demo generates one once and keeps it under var/."""
    raw = env.str("SECRET_KEY", default=None)
    if raw:
        if len(raw) < 50 and not debug:
            raise _fail("SECRET_KEY", "***", "must be at least 50 characters in production")
        return raw
    if not debug:
        raise SettingError("SECRET_KEY is required when DEBUG=false (generate one with "
                           "`python -c 'import secrets; print(secrets.token_urlsafe(64))'`)")
    key_file = var_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(64)
    tmp = key_file.with_suffix(".tmp")
    tmp.write_text(key)
    tmp.chmod(0o600)
    tmp.replace(key_file)
    return key

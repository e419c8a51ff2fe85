"""Shared fixtures (see tests/fixtures/: processes, models, endpoint, browser) and the test-selection marks.

`backend_independent`: tests whose outcome cannot depend on the database, cache or broker backend.
CI runs the suite twice (embedded default, then PostgreSQL + Redis) and deselects these in the second
pass, since they already ran in the first. Every test under BACKEND_INDEPENDENT_DIRS gets it (the
endpoint, the ML core and the deploy packaging never import Django); elsewhere a module opts in with
`pytestmark = pytest.mark.backend_independent`. A marked test that asks for the database (a
`django_db` mark, or `db` / `transactional_db` / `live_server` / Celery / web-server / `settings`
fixtures) is a collection error, so a DB test cannot silently drop out of the PostgreSQL pass.

`heavy`: model-scale checks (bloom-560m's shape) that take minutes on 2 cores. They run only when the
`-m` expression names them: `pytest -m heavy` (or `-m slow`, which they also carry).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.processes",
    "tests.fixtures.models",
    "tests.fixtures.endpoint",
    "tests.fixtures.browser",
]

TESTS = Path(__file__).resolve().parent
# Directories whose tests never touch Django's database, cache or broker (rlhf/ and serving/ never
# import Django; tests/deploy drives serving.deploy against the endpoint and moto).
BACKEND_INDEPENDENT_DIRS = ("serving", "rlhf", "deploy")
# Fixtures that mean "this test uses the database, Django settings or a process that does".
BACKEND_FIXTURES = frozenset({
    "db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server",
    "django_db_setup", "celery_worker", "celery_beat", "web_server", "settings", "client", "admin_client",
    "django_user_model", "django_username_field", "admin_user",
})


def pytest_configure(config: pytest.Config) -> None:
    # registered here, next to the hook that applies them (--strict-markers needs them declared)
    config.addinivalue_line("markers", "backend_independent: cannot depend on the database/cache/broker backend; "
                            "CI's PostgreSQL + Redis pass deselects it (automatic under tests/serving, tests/rlhf, "
                            "tests/deploy)")
    config.addinivalue_line("markers", "heavy: model-scale checks (minutes on 2 cores); run only when -m names "
                            "heavy or slow")


def _in_backend_independent_dir(item: pytest.Item) -> bool:
    try:
        rel = Path(str(item.path)).resolve().relative_to(TESTS)
    except ValueError:
        return False
    return rel.parts[0] in BACKEND_INDEPENDENT_DIRS


@pytest.hookimpl(tryfirst=True)  # before `-m` filtering, which must see the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `backend_independent` by directory (and check nobody marked uses the DB); drop `heavy`
    tests unless the `-m` expression names `heavy` or `slow`."""
    misuse = []
    for item in items:
        if _in_backend_independent_dir(item):
            item.add_marker(pytest.mark.backend_independent)
        if item.get_closest_marker("backend_independent") is None:
            continue
        used = sorted(BACKEND_FIXTURES & set(getattr(item, "fixturenames", ())))
        if item.get_closest_marker("django_db") is not None:
            used.append("django_db mark")
        if used:
            misuse.append(f"{item.nodeid}: {', '.join(used)}")
    if misuse:
        raise pytest.UsageError(
            "backend_independent tests must not use the database or Django settings (CI's PostgreSQL + Redis "
            "pass deselects them): put such a test outside tests/{" + ",".join(BACKEND_INDEPENDENT_DIRS) + "}, "
            "or drop the module's mark:\n  " + "\n  ".join(misuse))
    markexpr = config.option.markexpr or ""
    if "heavy" not in markexpr and "slow" not in markexpr:
        heavy = [item for item in items if item.get_closest_marker("heavy") is not None]
        if heavy:
            config.hook.pytest_deselected(items=heavy)
            items[:] = [item for item in items if item.get_closest_marker("heavy") is None]

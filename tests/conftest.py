"""Shared fixtures: see tests/fixtures/ (processes, models, endpoint, browser)."""

pytest_plugins = [
    "tests.fixtures.processes",
    "tests.fixtures.models",
    "tests.fixtures.endpoint",
    "tests.fixtures.browser",
]


import importlib  # noqa: E402

import pytest  # noqa: E402

# Data migrations (RunPython) whose rows every test expects: role groups, the four subjects, the
# reaper and retraining schedules. A transactional test's teardown flushes every table, so the next
# transactional test would otherwise start without them.
DATA_MIGRATIONS = [
    ("tutor.migrations.0001_roles", "create_groups"),
    ("tutor.migrations.0003_subjects", "create_subjects"),
    ("training.migrations.0002_periodic_tasks", "create"),
]


def restore_migration_data() -> None:
    from django.apps import apps

    for module, func in DATA_MIGRATIONS:
        getattr(importlib.import_module(module), func)(apps, None)


@pytest.fixture(autouse=True)
def _migration_data(request):
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(marker and marker.kwargs.get("transaction"))
    if transactional:
        request.getfixturevalue("transactional_db")
        restore_migration_data()
    yield

"""Shared fixtures: see tests/fixtures/ (processes, models, endpoint, browser)."""

pytest_plugins = [
    "tests.fixtures.processes",
    "tests.fixtures.models",
    "tests.fixtures.endpoint",
    "tests.fixtures.browser",
]


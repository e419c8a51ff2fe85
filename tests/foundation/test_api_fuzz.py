"""Schemathesis over the OpenAPI schema (/api/schema/), against a live uvicorn server, as each role.

For every operation and role, hypothesis generates ``FUZZ_EXAMPLES`` requests (derandomized: the same
requests every run) and each response is checked: no 5xx (a 503 only where the schema documents it: the
model endpoint is down in this test), the body conforms to the documented schema, the content type too.
The summary (requests, statuses, failures) is printed; all failures are collected before the assert.
Stateful (link-driven) testing is not run: the schema declares no links.
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e '.[dev]')")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))


def _users():
    from rest_framework.authtoken.models import Token

    from tutor.accounts import create_user
    from tutor.models import Subject

    tokens = {}
    for role in ("student", "labeler", "admin"):
        user = create_user(username=f"fuzz-{role}", password="x", role=role, validate_password=False)
        tokens[role] = Token.objects.create(user=user).key
    other = create_user(username="fuzz-other-student", password="x", role="student", validate_password=False)
    from tutor import services as tutor_services

    subject = Subject.objects.filter(active=True).first()
    if subject is not None:
        tutor_services.start_conversation(other, subject.slug, None)
    from tests.feedback.conftest import make_task

    for _ in range(3):
        make_task()
    return tokens


def _server_error(documented: dict):
    def check(ctx, response, case) -> None:
        status = response.status_code
        if status >= 500 and not (status == 503 and "503" in documented.get(case.operation.label, set())):
            raise AssertionError(f"{case.operation.label}: {status} {response.text[:300]}")

    return check


def _fuzz(op, url: str, headers: dict, checks: list, statuses: Counter):
    """A hypothesis test of one operation (built in a function: @given refuses default arguments)."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings

    @given(case=op.as_strategy())
    @hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
               suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        statuses[f"{response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=checks, headers=headers)

    return run


@pytest.mark.timeout(900)
def test_schemathesis_as_each_role(web_server, settings):
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    url = web_server.info["url"]
    tokens = _users()
    raw = httpx.get(f"{url}/api/schema/", params={"format": "json"}, timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    documented = {}
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(op)
        documented[op.label] = {str(code) for code in (op.definition.raw.get("responses") or {})}
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    no_5xx = _server_error(documented)
    for role, token in tokens.items():
        headers = {"Authorization": f"Token {token}"}
        for op in operations:
            try:
                _fuzz(op, url, headers, [no_5xx, response_schema_conformance, content_type_conformance],
                      statuses)()
            except Exception as exc:  # collect every failing operation, then fail once with all of them
                failures.append(f"[{role}] {op.label}: {str(exc).strip().splitlines()[0][:300]}")
    print(f"\nschemathesis: {len(operations)} operations x {len(tokens)} roles, {sum(statuses.values())} "
          f"requests, {dict(sorted(statuses.items()))}, {len(failures)} failing operation(s)")
    for line in failures:
        print("  " + line)
    assert not failures, "\n".join(failures)

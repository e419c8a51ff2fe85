"""Role boundaries the fuzzer cannot judge: a labeler never sees who a student is, and only admins
launch, promote or roll back (students and labelers are refused and nothing changes).
(A student never reads another student's conversation: tests/tutor/test_chat.py.)"""

from __future__ import annotations

import json

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tutor.accounts import create_user

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_labeler_never_sees_student_identity(settings):
    from feedback import services as feedback_services
    from feedback.models import Prompt
    from tutor import services as tutor_services
    from tutor.models import Subject

    settings.FEEDBACK_GOLD_RATE = 0.0
    student = create_user(username="zephyr.student", password="x", role="student", validate_password=False)
    student.first_name, student.last_name, student.email = "Alicia", "Zephyrine", "alicia@example.org"
    student.save()
    tutor_services.set_consent(student, True)
    subject = Subject.objects.get(slug="mathematics")
    conv = tutor_services.start_conversation(student, subject.slug, None)
    tutor_services.post_user_message(conv, "Hi, I am Alicia Zephyrine (alicia@example.org). What is 7 * 6?")
    assert feedback_services.ingest_student_prompts() == 1
    prompt = Prompt.objects.get(source=Prompt.Source.STUDENT)
    feedback_services.create_task(prompt=prompt, completions=["42", "43"])
    labeler = create_user(username="lab-boundary", password="x", role="labeler", validate_password=False)
    body = _api(labeler).post("/api/label/next/").json()
    task = body["task"]
    assert set(task) == {"task_id", "subject", "prompt", "context", "completions", "lease_expires_at"}
    assert all(set(c) == {"id", "label", "text"} for c in task["completions"])
    text = json.dumps(body)
    for identity in ("Alicia", "Zephyrine", "alicia@example.org", "zephyr.student", "student"):
        assert identity not in text, identity
    assert "7 * 6" in task["prompt"]


@pytest.mark.parametrize("role", ["student", "labeler"])
def test_only_admins_launch_promote_or_roll_back(role):
    from training.models import Job

    user = create_user(username=f"{role}-nope", password="x", role=role, validate_password=False)
    api = _api(user)
    jobs_before = Job.objects.count()
    attempts = [
        api.post("/api/studio/jobs/", {"kind": "pipeline"}, format="json"),
        api.post("/api/studio/versions/1/promote/", {}, format="json"),
        api.post("/api/studio/versions/1/rollback/", {}, format="json"),
        api.post("/api/studio/rollback/mathematics/", {}, format="json"),
        api.post("/api/studio/jobs/1/cancel/", {}, format="json"),
        api.post("/api/label/snapshots/", {}, format="json"),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)
    assert all("admin role" in r.json()["detail"] for r in attempts)
    assert Job.objects.count() == jobs_before

"""Studio pages and API: admins only; pages render the registry; bad launches change nothing."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from training.models import Job
from tutor.accounts import create_user

pytestmark = pytest.mark.django_db

PAGES = ["training:index", "training:jobs", "training:launch", "training:versions", "training:schedule"]
API = ["api-studio-overview", "api-studio-jobs", "api-studio-versions"]


def _user(role):
    return create_user(username=f"u-{role}", password="pw-12345678x", role=role, validate_password=False)


@pytest.mark.parametrize("role", ["student", "labeler"])
def test_non_admins_get_403_everywhere(client, role):
    client.force_login(_user(role))
    for name in PAGES:
        assert client.get(reverse(name)).status_code == 403, name
    for name in API:
        r = client.get(reverse(name))
        assert r.status_code == 403 and "admin" in r.json()["detail"], name
    job = Job.objects.create(kind="ppo", subject="history")
    assert client.post(reverse("training:job-cancel", args=[job.pk])).status_code == 403
    assert client.post(reverse("training:rollback", args=["history"])).status_code == 403
    job.refresh_from_db()
    assert not job.cancel_requested


def test_anonymous_is_sent_to_login(client):
    r = client.get(reverse("training:index"))
    assert r.status_code == 302 and "/login" in r["Location"]
    assert client.get(reverse("api-studio-jobs")).status_code in (401, 403)


def test_admin_sees_every_page_and_the_json(client, models_dir):
    client.force_login(_user("admin"))
    job = Job.objects.create(kind="ppo", subject="history", status="running", progress=0.4, message="ppo step 4/10",
                             metrics=[{"step": 1, "reward": 0.1, "kl": 0.0}, {"step": 2, "reward": 0.3, "kl": 0.1}])
    for name in PAGES:
        r = client.get(reverse(name))
        assert r.status_code == 200, name
    index = client.get(reverse("training:index")).content.decode()
    assert f'data-job-id="{job.pk}"' in index and 'aria-valuenow="40"' in index
    assert "mathematics" in index and "v1 100 %" in index  # v1 registered from disk, fully promoted
    detail = client.get(reverse("training:job", args=[job.pk])).content.decode()
    assert "vendor/chartjs/chart.umd.min.js" in detail and "job-metrics" in detail
    data = client.get(reverse("api-studio-job", args=[job.pk]), {"since": 1}).json()
    assert data["progress"] == 0.4 and data["metrics"] == [{"step": 2, "reward": 0.3, "kl": 0.1}]
    assert data["metrics_total"] == 2
    listing = client.get(reverse("api-studio-jobs"), {"ids": str(job.pk)}).json()
    assert [j["id"] for j in listing["jobs"]] == [job.pk]
    overview = client.get(reverse("api-studio-overview")).json()
    assert overview["versions"]["history"]["promoted"] == 1


def test_bad_launch_changes_nothing(client, models_dir):
    client.force_login(_user("admin"))
    for body in ({"kind": "pipeline", "config": "{not json"},
                 {"kind": "pipeline", "config": json.dumps({"ppo": {"steps": 0}})},
                 {"kind": "pipeline", "config": json.dumps({"ppo": {"nonsense": 1}})},
                 {"kind": "ppo", "subject": "history", "config": "{}"},
                 {"kind": "rocket", "config": "{}"}):
        r = client.post(reverse("training:launch"), body)
        assert r.status_code == 400, body
    assert not Job.objects.exists()
    r = client.post(reverse("api-studio-jobs"), {"kind": "evaluate", "config": {"policy_version_id": 999}},
                    content_type="application/json")
    assert r.status_code == 404 and not Job.objects.exists()


def test_schedule_editor_updates_the_periodic_task(client, models_dir):
    from django_celery_beat.models import PeriodicTask

    from training.services import SCHEDULE_NAME

    client.force_login(_user("admin"))
    r = client.post(reverse("training:schedule"), {"enabled": "on", "every_seconds": "30", "min_new_pairs": "50",
                                                   "config": json.dumps({"ppo": {"steps": 5}})})
    assert r.status_code == 302
    task = PeriodicTask.objects.get(name=SCHEDULE_NAME)
    assert task.enabled and task.interval.every == 30 and task.task == "training.trigger_pipeline"
    assert json.loads(task.kwargs) == {"min_new_pairs": 50, "config": {"ppo": {"steps": 5}}}
    r = client.post(reverse("training:schedule"), {"every_seconds": "30", "config": json.dumps({"ppo": {"bad": 1}})})
    assert r.status_code == 200  # re-rendered with the error
    task.refresh_from_db()
    assert task.enabled and json.loads(task.kwargs)["config"] == {"ppo": {"steps": 5}}


def test_lineage_and_side_by_side_comparison_pages(client, models_dir):
    from feedback.models import DatasetSnapshot
    from training import selectors, services
    from training.models import EvaluationReport, PolicyVersion, RewardModelVersion

    client.force_login(_user("admin"))
    services.ensure_initial_versions()
    v1 = PolicyVersion.objects.get(subject="history", version=1)
    snap = DatasetSnapshot.objects.create(sha256="a" * 64, path="/x", first_ranking_id=3, last_ranking_id=41,
                                          train_rows=10, test_rows=2)
    rm = RewardModelVersion.objects.create(snapshot=snap, status="ready", path="/rm", sha256="b" * 64, accuracy=0.9)
    v2 = PolicyVersion.objects.create(subject="history", version=2, status="candidate", parent=v1, snapshot=snap,
                                      reward_model=rm, path="/v2", sha256="c" * 64)
    EvaluationReport.objects.create(
        candidate=v2, baseline=v1, reward_model=rm, passed=True,
        suites={"answer_key_accuracy": {"candidate": 0.5, "baseline": 0.25, "threshold": 0.0, "passed": True}},
        samples=[{"question": "Who built it?", "key": "Rome", "candidate": "It was Rome.", "baseline": "Paris.",
                  "candidate_correct": True, "baseline_correct": False}])
    assert [n["version"] for n in selectors.lineage(v2)] == [2, 1]
    assert selectors.lineage_complete(v2)
    page = client.get(reverse("training:version", args=[v2.pk])).content.decode()
    assert "rankings 3–41" in page and "reward model #" in page
    page = client.get(reverse("training:compare"), {"a": v2.pk, "b": v1.pk}).content.decode()
    assert "It was Rome." in page and "Paris." in page and "0.500" in page and "0.250" in page
    page = client.get(reverse("training:compare"), {"pick": [v1.pk, v2.pk]}).content.decode()
    assert page.index("Paris.") < page.index("It was Rome.")  # columns follow the order picked
    assert client.get(reverse("training:compare"), {"a": v1.pk}).status_code == 404

"""The studio in headless Chromium: launch a pipeline, watch its progress bar move, open the curves,
roll back — against real web, worker and endpoint processes."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.browser import login
from tests.fixtures.processes import (
    purge_filesystem_broker,
    start_celery_worker,
    start_web_server,
    subprocess_env,
)
from tests.training.conftest import PERMISSIVE_GATE, TINY_PIPELINE, seed_rankings
from training import services
from training.models import Job, PolicyVersion
from tutor.accounts import create_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


def test_launch_watch_curves_and_roll_back(page, endpoint, models_dir, tiny_base_path, output_dir):
    services.ensure_initial_versions()
    assert seed_rankings("mathematics", 18) >= 100
    create_user(username="boss", password="pw-12345678x", role="admin", validate_password=False)
    purge_filesystem_broker()
    env = subprocess_env(TUTOR_MODELS_DIR=str(models_dir), TUTOR_BASE_MODEL=str(tiny_base_path),
                         TUTOR_ENDPOINT_URL=endpoint.url, TUTOR_ENDPOINT_ADMIN_TOKEN=endpoint.admin_token,
                         TRAINING_HEARTBEAT_SECONDS="1")
    web = start_web_server(env)
    worker = start_celery_worker(env, concurrency=2)
    try:
        url = web.info["url"]
        page.on("dialog", lambda d: d.accept())  # the confirmations
        login(page, url, "boss", "pw-12345678x")
        page.goto(f"{url}/studio/launch/")
        config = {**TINY_PIPELINE, "subjects": ["mathematics"], "gate": PERMISSIVE_GATE,
                  "ppo": {**TINY_PIPELINE["ppo"], "steps": 6},
                  "eval": {"n_prompts": 6, "kl_samples": 4, "max_new_tokens": 16,
                           "suites": ["reward_win_rate", "answer_key_accuracy", "kl"]}}
        page.fill("#config", json.dumps(config))
        page.click("#launch-button")
        page.wait_for_url("**/studio/jobs/*/")
        pipeline = Job.objects.get(kind="pipeline")
        bar = page.locator("[data-job-detail] .progress")
        first = int(bar.get_attribute("aria-valuenow"))
        # the bar moves without a reload (polling the JSON API)
        page.wait_for_function(
            f"() => +document.querySelector('[data-job-detail] .progress').getAttribute('aria-valuenow') > {first}",
            timeout=300_000)
        page.screenshot(path=str(output_dir / "pipeline.png"))
        # open the PPO step's curves while or after it runs
        ppo = None
        for _ in range(600):
            ppo = Job.objects.filter(parent=pipeline, kind="ppo").first()
            if ppo is not None and len(ppo.metrics) >= 2:
                break
            page.wait_for_timeout(500)  # polling the database for the PPO job (no event to wait on)
        assert ppo is not None, pipeline.message
        page.goto(f"{url}/studio/jobs/{ppo.pk}/")
        page.wait_for_selector("figure[data-chart=reward] canvas")
        page.wait_for_selector("figure[data-chart=kl] canvas")
        page.screenshot(path=str(output_dir / "curves.png"))
        # wait for the pipeline to promote, then roll back from the versions page
        page.goto(f"{url}/studio/jobs/{pipeline.pk}/")
        page.wait_for_selector("[data-job-detail][data-status=succeeded]", timeout=600_000)
        pipeline.refresh_from_db()
        assert pipeline.status == "succeeded", pipeline.message
        promoted = PolicyVersion.objects.get(subject="mathematics", status="promoted")
        assert promoted.version >= 2
        page.goto(f"{url}/studio/versions/")
        page.click("#rollback-mathematics")
        page.wait_for_selector(".messages .msg-success")
        assert "rollback" in page.locator(".messages").inner_text().lower()
        assert PolicyVersion.objects.get(subject="mathematics", status="promoted").version == 1
        assert services.get_deployer().state()["mathematics"]["promoted"] == 1
        page.screenshot(path=str(output_dir / "rolled-back.png"))
    finally:
        worker.stop()
        web.stop()
